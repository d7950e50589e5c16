"""The first lines of a test subprocess whose buffers must fail to allocate instead of using the
machine's memory: an address-space limit (RLIMIT_AS) of what the interpreter maps once NumPy and
PyTorch are imported, plus :data:`HEADROOM`.

An absolute limit does not work on every build: PyTorch's CUDA wheels (which the CI's oldest and
newest PyTorch legs install, running CPU-only) map several GiB of libraries at ``import torch``,
so a 3 GiB limit failed the import itself (``std::bad_alloc``, NumPy's ``failed to map segment``).
"""

#: address space a limited subprocess may map beyond its imports: room for every ordinary buffer and
#: for the lazy imports of a command (onnx, Numba/LLVM), too small for the multi-GiB buffers tested
HEADROOM = 3 * 2**30

LIMIT_AFTER_IMPORTS = f"""
import resource
import numpy, torch  # noqa: F401 - mapped before the limit (a CUDA build maps GiBs of libraries)

def _mapped():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")

_limit = _mapped() + {HEADROOM}
resource.setrlimit(resource.RLIMIT_AS, (_limit, _limit))
"""
