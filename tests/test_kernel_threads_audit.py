"""Thread counts after the first kernel call: Numba's start does not change PyTorch's count.

Numba's OpenMP threading layer calls ``omp_set_num_threads(<its pool size>)`` when it starts (at
the first kernel call), and PyTorch reads its intra-op thread count from the same GNU OpenMP
runtime: ``OMP_NUM_THREADS=1`` or ``torch.set_num_threads(k)`` made before the first kernel was
silently replaced by Numba's pool size (every core, or ``NUMBA_NUM_THREADS``). Each case runs in
a fresh interpreter (Numba's layer starts once per process) with the default kernel cache.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from edgesnn.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.numba_available(), reason="needs Numba")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    if sys.argv[1] != "-":
        torch.set_num_threads(int(sys.argv[1]))
    before = torch.get_num_threads()
    import numba
    from edgesnn.nn import LIF, RevLIF
    x = torch.randn(4, 3, 2, 8, requires_grad=True)
    (LIF()(x).sum() + RevLIF()(x).sum()).backward()  # forward and backward kernels: Numba's layer starts
    print(json.dumps({"before": before, "torch": torch.get_num_threads(), "numba": numba.get_num_threads(),
                      "pool": int(numba.config.NUMBA_NUM_THREADS), "layer": numba.threading_layer()}))
    """
)


def _run(env_extra: dict, torch_threads: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "PYTHONPATH")}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", SCRIPT, torch_threads], capture_output=True, text=True, timeout=120,
                       env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env_extra, torch_threads, want_torch", [
    ({"OMP_NUM_THREADS": "1"}, "-", 1),  # one PyTorch thread by the environment (README's one-thread runs)
    ({"NUMBA_NUM_THREADS": "1"}, "2", 2),  # a smaller Numba pool does not shrink PyTorch's count
])
def test_first_kernel_keeps_torch_thread_count(env_extra, torch_threads, want_torch):
    got = _run(env_extra, torch_threads)
    assert got["before"] == want_torch, got
    assert got["torch"] == want_torch, f"PyTorch's thread count changed at the first kernel call: {got}"
    assert got["numba"] == got["pool"], got  # Numba's own count is its pool size, as before
