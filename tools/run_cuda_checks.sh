#!/usr/bin/env bash
# CUDA checks on a machine with an NVIDIA GPU (run from the repo root):
#   real-GPU kernel tests (CUDA tensors via cuda.as_cuda_array on torch's current stream) + simulator
#   test, PTX check for the GPU's own cc, and the CUDA part of the kernel benchmark.
# Needs numba-cuda; SpikingJelly is used when importable (pip install --no-deps spikingjelly==2.0.0 loguru).
set -u
OUTDIR="${OUT:-./cuda_checks_out}"
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUTDIR/gpu.txt"
$PY -m pip list 2>/dev/null | grep -i -E "^(numba|numba-cuda|cuda-bindings|torch|spikingjelly) " | tee -a "$OUTDIR/gpu.txt"
$PY -c "from edgesnn.kernels.cli import warmup; warmup(cuda=True)" 2>&1 | tail -3
$PY -m pytest -q -rs tests/test_kernels_cuda.py 2>&1 | tee "$OUTDIR/pytest_cuda.txt" | tail -15
$PY tools/bench_kernels.py --only-cuda --json "$OUTDIR/bench_cuda.json" 2>&1 | tee "$OUTDIR/bench_cuda.txt" | grep -v Warning
