"""The Numba cache folder's key covers every source the cached CPU kernels are compiled from.

Numba checks only the time stamp of the file that defines a ``cache=True`` kernel. Device functions
and intrinsics it inlines from other modules (the neuron math, prefetch and borrowed-row helpers)
reach the cache through ``edgesnn.kernels.cache_key``'s hash of the kernel sources: a module missing
from that hash would, after an upgrade that changed only it, leave stale machine code in use.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgesnn.kernels import cache_key

KERNELS = Path(cache_key.__file__).parent
HOST_MODULES = {"config", "buffers", "launch"}  # configure(), output buffers, the launcher: never compiled


def _sibling_imports(module: str) -> set:
    """Modules of ``edgesnn.kernels`` that ``module`` imports at module level (``from .x import``,
    ``from . import x``; imports inside functions are host code run on demand, e.g. the warm-up)."""
    tree = ast.parse((KERNELS / f"{module}.py").read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _closure(start) -> set:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or name in HOST_MODULES:
            continue
        seen.add(name)
        todo.extend(_sibling_imports(name))
    return seen


def test_every_module_the_cached_kernels_compile_from_is_hashed():
    hashed = {name[:-3] for name in cache_key._KERNEL_SOURCES}
    needed = _closure(cache_key.CACHED_KERNEL_MODULES)
    assert needed <= hashed, f"kernel sources missing from the cache key: {sorted(needed - hashed)}"
    assert hashed <= needed | set(cache_key._INLINED_MODULES)


def test_cached_kernel_modules_are_the_modules_with_cache_true_kernels():
    decorated = re.compile(r"^@njit\([^)]*\bcache=True", re.M)
    with_cache = {p.stem for p in KERNELS.glob("*.py") if decorated.search(p.read_text())}
    assert with_cache == set(cache_key.CACHED_KERNEL_MODULES)


@pytest.mark.parametrize("name", sorted({n[:-3] for n in cache_key._KERNEL_SOURCES}))
def test_editing_any_kernel_source_changes_the_cache_key(monkeypatch, name):
    before = cache_key._sources_key()
    real_open = open

    def edited_open(path, *args, **kwargs):
        fh = real_open(path, *args, **kwargs)
        if Path(path).name == f"{name}.py":
            data = fh.read() + b"\n# edited\n"
            fh.close()
            import io

            return io.BytesIO(data)
        return fh

    monkeypatch.setattr("builtins.open", edited_open)
    assert cache_key._sources_key() != before
