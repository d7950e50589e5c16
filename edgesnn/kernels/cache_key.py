"""The key of the kernel cache folder: a hash of the kernel sources and of the Numba settings that
change their machine code (:func:`_sources_key`; :mod:`edgesnn.kernels.config` puts the cached
kernels in ``<base>/<key>``).

Numba checks only the file that defines a ``cache=True`` kernel and its own index (signature, CPU
name and features, Numba version). Code the kernels inline from other modules, and settings such as
``NUMBA_OPT``, reach the cache only through this key. Imports nothing from Numba.
"""

from __future__ import annotations

import os

__all__ = ["CACHED_KERNEL_MODULES"]

#: The modules of this package that define ``cache=True`` CPU kernels (each has its own index files
#: in the cache folder).
CACHED_KERNEL_MODULES = ("numba_cpu", "numba_revlif", "numba_lif_pool", "numba_bits", "numba_bn")
#: Modules whose code those kernels inline or generate (device functions, intrinsics): Numba's cache
#: does not see their edits. ``tests/test_kernel_cache_key.py`` checks that every module a cached
#: kernel module imports from this package is here, or is host code (``config``, ``buffers``).
_INLINED_MODULES = ("neuron_math", "numba_prefetch", "numba_rows")
_KERNEL_SOURCES = tuple(f"{name}.py" for name in _INLINED_MODULES + CACHED_KERNEL_MODULES)


#: Numba's variables that change the machine code of a kernel but are not in the key of Numba's
#: cache index (which holds the signature, the CPU name and features, and Numba's version): without
#: them in the folder key, a run with ``NUMBA_OPT=0`` left unoptimized code (the LIF forward ~100x
#: slower) that later runs loaded, and ``NUMBA_BOUNDSCHECK=1`` loaded unchecked code from a warm cache.
_CODEGEN_VARIABLES = ("NUMBA_OPT", "NUMBA_LOOP_VECTORIZE", "NUMBA_SLP_VECTORIZE", "NUMBA_BOUNDSCHECK",
                      "NUMBA_DEBUGINFO", "NUMBA_ENABLE_PROFILING", "NUMBA_DISABLE_INTEL_SVML",
                      "NUMBA_EXTEND_VARIABLE_LIFETIMES", "NUMBA_LLVM_REFPRUNE_PASS", "NUMBA_LLVM_REFPRUNE_FLAGS",
                      "NUMBA_DEBUG_ARRAY_OPT_RUNTIME")


def _codegen_settings() -> str:
    """The :data:`_CODEGEN_VARIABLES` that are set (to a non-blank value), as ``NAME=value`` lines
    (``""`` when none is: the key of the default settings does not change). Numba's compiler
    re-reads them before each compile; settings made in code (``numba.config.OPT = 0``) are not
    seen here."""
    return "".join(f"{name}={os.environ[name].strip()}\n" for name in _CODEGEN_VARIABLES
                   if os.environ.get(name, "").strip())


def _sources_key() -> str:
    """Hash of the kernel sources and of the Numba settings that change their machine code.

    Numba's cache checks only the stamp of the file that defines a kernel, not the per-neuron math
    it inlines from other files, nor variables such as ``NUMBA_OPT`` (:data:`_CODEGEN_VARIABLES`), so
    each version of the sources and each such setting gets its own sub-folder (no stale machine
    code after an edit or an upgrade, none compiled under other settings)."""
    import hashlib

    h = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in _KERNEL_SOURCES:
        try:
            with open(os.path.join(here, name), "rb") as fh:
                h.update(fh.read())
        except OSError:
            h.update(name.encode())
    h.update(_codegen_settings().encode())
    return h.hexdigest()[:16]
