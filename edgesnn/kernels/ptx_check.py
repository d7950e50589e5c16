"""Compile every CUDA kernel to PTX for given compute capabilities and run ``ptxas -v`` on it.

Needs no GPU: ``numba-cuda`` + ``cuda-bindings<13`` + ``nvidia-cuda-nvcc-cu12==12.6.*`` +
``nvidia-cuda-nvrtc-cu12==12.6.*`` (PTX ISA 8.5, accepted by JetPack 6; the CUDA 13 toolchain
rejects cc < 7.5). Must run in a process WITHOUT ``NUMBA_ENABLE_CUDASIM`` (the simulator accepts
code the device compiler rejects). Usage::

    python -m edgesnn.kernels.ptx_check 5.3 7.2 8.7      # prints a JSON report, exit 1 on failure
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["DEFAULT_CCS", "find_ptxas", "check_ptx"]

#: Jetson Nano (5.3), Xavier (7.2), Orin (8.7).
DEFAULT_CCS: Tuple[Tuple[int, int], ...] = ((5, 3), (7, 2), (8, 7))


def find_ptxas() -> Optional[str]:
    """``ptxas`` from the ``nvidia-cuda-nvcc-cu12`` wheel, else from ``PATH``/``CUDA_HOME``."""
    try:
        import nvidia.cuda_nvcc as _n

        for root in list(getattr(_n, "__path__", [])):
            hits = glob.glob(os.path.join(root, "bin", "ptxas"))
            if hits:
                return hits[0]
    except ImportError:
        pass
    import shutil

    found = shutil.which("ptxas")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "ptxas")):
        return os.path.join(home, "bin", "ptxas")
    return None


class _FakeDevice:
    def __init__(self, cc):
        self.compute_capability = cc


@contextmanager
def _device_functions_for(cc):
    """numba-cuda compiles device functions for the *current* device; without a GPU, pretend one."""
    import numba.cuda.dispatcher as disp

    try:
        from numba import cuda

        has_gpu = cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        yield
        return
    orig = disp.get_current_device
    disp.get_current_device = lambda: _FakeDevice(cc)
    try:
        yield
    finally:
        disp.get_current_device = orig


_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")
_REGS = re.compile(r"Used (\d+) registers")


def check_ptx(ccs: Sequence[Tuple[int, int]] = DEFAULT_CCS) -> List[Dict]:
    """Compile each kernel in :data:`edgesnn.kernels.cuda_kernels.KERNEL_SIGNATURES` for each cc.

    Returns one record per (kernel, cc): PTX version/target, whether float64 instructions appear,
    and ``ptxas -v`` figures (registers, stack, spill bytes) when ``ptxas`` is available.
    """
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise RuntimeError("check_ptx must run without NUMBA_ENABLE_CUDASIM")
    from numba import cuda

    from .cuda_kernels import KERNEL_SIGNATURES

    ptxas = find_ptxas()
    out = []
    for cc in ccs:
        with _device_functions_for(cc):
            for name, (fn, sig) in KERNEL_SIGNATURES.items():
                ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
                version = re.search(r"^\.version\s+(\S+)", ptx, re.M)
                target = re.search(r"^\.target\s+(\S+)", ptx, re.M)
                rec = {
                    "kernel": name,
                    "cc": f"{cc[0]}.{cc[1]}",
                    "ptx_version": version.group(1) if version else None,
                    "target": target.group(1) if target else None,
                    "uses_f64": bool(re.search(r"\.f64\b", ptx)),
                }
                if ptxas:
                    with tempfile.TemporaryDirectory() as tmp:
                        path = os.path.join(tmp, f"{name}.ptx")
                        with open(path, "w") as fh:
                            fh.write(ptx)
                        res = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", path, "-o", os.path.join(tmp, "k.cubin")],
                                             capture_output=True, text=True)
                    log = res.stdout + res.stderr
                    spills = [tuple(map(int, m)) for m in _SPILL.findall(log)]
                    stacks = [int(m) for m in _STACK.findall(log)]
                    regs = [int(m) for m in _REGS.findall(log)]
                    rec.update(ptxas_rc=res.returncode, spill_bytes=sum(a + b for a, b in spills), stack_bytes=max(stacks, default=0),
                               registers=max(regs, default=0), ptxas_log=log.strip()[-2000:])
                out.append(rec)
    return out


def compute_capability(text: str) -> Tuple[int, int]:
    """``"8.7"`` as ``(8, 7)``; an ``argparse.ArgumentTypeError`` for anything else (``8``, ``abc``)."""
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"expected a compute capability MAJOR.MINOR such as 8.7, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def main(argv: Optional[List[str]] = None) -> int:
    """Check the CUDA kernels' PTX for the compute capabilities in ``argv`` (e.g. ``8.0``; default
    :data:`DEFAULT_CCS`), print the report as JSON; returns 1 on a ptxas error, spills or float64 use,
    else 0; bad arguments, or ``NUMBA_ENABLE_CUDASIM`` set, are one line on stderr (exit 2)."""
    from ..cli import OneLineParser

    parser = OneLineParser(prog="python -m edgesnn.kernels.ptx_check",
                           description="Compile the CUDA kernels to PTX and run ptxas -v on it (no GPU needed).")
    parser.add_argument("cc", nargs="*", type=compute_capability,
                        help="compute capabilities MAJOR.MINOR (default: " + " ".join(f"{a}.{b}" for a, b in DEFAULT_CCS) + ")")
    ccs = parser.parse_args(argv).cc or list(DEFAULT_CCS)
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        parser.error("NUMBA_ENABLE_CUDASIM is set: the PTX check compiles for the device (the simulator accepts "
                     "code the device compiler rejects); run it in a process without it")
    report = check_ptx(ccs)
    print(json.dumps([{k: v for k, v in r.items() if k != "ptxas_log"} for r in report], indent=1))
    bad = [r for r in report if r.get("ptxas_rc", 0) != 0 or r.get("spill_bytes", 0) or r["uses_f64"]]
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
