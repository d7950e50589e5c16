#!/usr/bin/env bash
# CUDA checks on a machine with an NVIDIA GPU (run from the repo root):
#   real-GPU kernel tests (CUDA tensors via cuda.as_cuda_array on torch's current stream) + simulator
#   test, PTX check for the GPU's own cc, and the CUDA part of the kernel benchmark.
# Needs numba-cuda; SpikingJelly is used when importable (pip install --no-deps spikingjelly==2.0.0 loguru).
#
# Usage: tools/run_cuda_checks.sh [--force]
#   Results go to $OUT (default ./cuda_checks_out): gpu.txt, pytest_cuda.txt, bench_cuda.txt and
#   bench_cuda.json. Results already there are replaced only with --force. The exit status is
#   non-zero when there is no GPU, or when the tests or the benchmark failed (each still runs).
set -uo pipefail
FORCE=""
for arg in "$@"; do
    case "$arg" in
        --force) FORCE="--force" ;;
        *) echo "run_cuda_checks.sh: unknown argument '$arg' (expected --force or nothing)" >&2; exit 2 ;;
    esac
done
OUTDIR="${OUT:-./cuda_checks_out}"
FILES="gpu.txt pytest_cuda.txt bench_cuda.txt bench_cuda.json"
if [ -z "$FORCE" ]; then
    for f in $FILES; do
        if [ -e "$OUTDIR/$f" ]; then
            echo "run_cuda_checks.sh: $OUTDIR/$f exists (an earlier run's results); pass --force to replace them" >&2
            exit 2
        fi
    done
fi
if ! gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1); then
    echo "$gpu" >&2
    echo "run_cuda_checks.sh: nvidia-smi found no GPU; these checks need one (CUDA simulator tests run in the suite)" >&2
    exit 1
fi
mkdir -p "$OUTDIR" || exit 2
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
echo "$gpu" | tee "$OUTDIR/gpu.txt"
$PY -m pip list 2>/dev/null | grep -i -E "^(numba|numba-cuda|cuda-bindings|torch|spikingjelly) " | tee -a "$OUTDIR/gpu.txt"
failed=""
$PY -c "from edgesnn.kernels.cli import warmup; warmup(cuda=True)" 2>&1 | tail -3 || failed="$failed warmup"
$PY -m pytest -q -rs tests/test_kernels_cuda.py 2>&1 | tee "$OUTDIR/pytest_cuda.txt" | tail -15
[ "${PIPESTATUS[0]}" -eq 0 ] || failed="$failed tests"
$PY tools/bench_kernels.py --only-cuda --json "$OUTDIR/bench_cuda.json" $FORCE 2>&1 | tee "$OUTDIR/bench_cuda.txt" | grep -v Warning
[ "${PIPESTATUS[0]}" -eq 0 ] || failed="$failed benchmark"
if [ -n "$failed" ]; then
    echo "run_cuda_checks.sh: failed:$failed (see $OUTDIR)" >&2
    exit 1
fi
echo "run_cuda_checks.sh: all passed; results in $OUTDIR"
