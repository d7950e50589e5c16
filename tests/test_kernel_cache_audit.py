"""The kernel cache folder under sharing and under Numba's code-generation settings.

* Processes that start together on one cache folder (ranks, ``edgesnn warmup`` compile workers)
  probed it with one fixed file name and removed each other's probe: a process then took the folder
  for unwritable, warned, and compiled every kernel into another folder (``configure_cache(path)``,
  which the warm-up's compile workers call, raised a one-line error instead).
* Numba's cache index holds the signature, the CPU name and features and Numba's version, not
  settings such as ``NUMBA_OPT`` or ``NUMBA_BOUNDSCHECK``: a warm cache served code compiled under
  other values (``NUMBA_BOUNDSCHECK=1`` ran unchecked kernels; one ``NUMBA_OPT=0`` run left
  unoptimized kernels for every later run). These variables are now part of the folder key.

Only the last test compiles, one small kernel (``numba_bits._pack``), twice, in fresh processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgesnn.kernels import cache_key, config

ROOT = Path(__file__).resolve().parents[1]
#: Numba variables that change the machine code, and the ones that choose the cache folder or the
#: CPU features: cleared for the runs here.
_CLEARED = cache_key._CODEGEN_VARIABLES + ("NUMBA_CACHE_DIR", "NUMBA_CPU_FEATURES", "NUMBA_CPU_NAME",
                                           "EDGESNN_WIDE_VECTORS")


def test_threads_probing_one_cache_folder_at_once_all_find_it_writable(tmp_path):
    failures = []

    def probe() -> None:
        failures.append(sum(not config._writable(str(tmp_path)) for _ in range(1000)))

    threads = [threading.Thread(target=probe) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [0, 0, 0, 0]
    assert list(tmp_path.iterdir()) == []  # every probe removed its own file


@pytest.fixture
def default_codegen(monkeypatch):
    """This process's environment with none of Numba's code-generation variables set."""
    for name in cache_key._CODEGEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("name, value", [("NUMBA_OPT", "0"), ("NUMBA_BOUNDSCHECK", "1"),
                                         ("NUMBA_LOOP_VECTORIZE", "0"), ("NUMBA_DEBUGINFO", "1")])
def test_numba_codegen_variables_change_the_cache_folder(default_codegen, name, value):
    default = cache_key._sources_key()
    default_codegen.setenv(name, value)
    assert cache_key._sources_key() != default
    default_codegen.setenv(name, " ")  # blank: Numba uses its default
    assert cache_key._sources_key() == default


_PACK = """
import json
import numpy as np
from edgesnn.kernels import numba_bits

buf = np.ones(64, np.float32)
x = buf[:32].reshape(2, 16)  # rows of 16; M = 32 reads past each row, still inside buf
try:
    numba_bits._pack(x, np.zeros((2, 4), np.uint8), 32)
    error = None
except Exception as exc:
    error = type(exc.__cause__ or exc).__name__
st = numba_bits._pack.stats
print(json.dumps({"hits": sum(st.cache_hits.values()), "error": error}))
"""


def _pack_run(tmp_path: Path, **env_vars: str) -> dict:
    """Run ``_PACK`` in a fresh interpreter on the cache folder ``tmp_path / "cache"``."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), EDGESNN_CACHE_DIR=str(tmp_path / "cache"),
               **env_vars)
    res = subprocess.run([sys.executable, "-c", _PACK], capture_output=True, text=True, env=env, timeout=300,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_bounds_checked_run_does_not_load_kernels_compiled_without_checks(tmp_path):
    assert _pack_run(tmp_path) == {"hits": 0, "error": None}  # compiled, unchecked
    assert _pack_run(tmp_path, NUMBA_BOUNDSCHECK="1") == {"hits": 0, "error": "IndexError"}  # compiled, checked
    assert _pack_run(tmp_path) == {"hits": 1, "error": None}  # the unchecked code, from the cache
