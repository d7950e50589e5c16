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


def test_numba_subfolder_is_the_one_numba_writes_into(tmp_path):
    from edgesnn.kernels.cli import _own_cache

    assert config.numba_subfolder(str(tmp_path)) == str(_own_cache(tmp_path))


_BLOCKED = """
import json, os, warnings
from edgesnn.errors import UsageError
from edgesnn.kernels import cache_key, config
base = os.environ["EDGESNN_CACHE_DIR"]
folder = config._key_folder(base, cache_key._sources_key())
os.makedirs(folder)
open(config.numba_subfolder(folder), "w").close()  # a file where Numba's sub-folder goes
try:
    config.configure_cache(base)
    error = None
except UsageError as e:
    error = str(e)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    chosen = config.configure_cache()
print(json.dumps({"error": error, "chosen": chosen, "warnings": [str(x.message) for x in w]}))
"""


def test_a_cache_folder_whose_numba_subfolder_cannot_be_made_is_not_used(tmp_path):
    """Numba then wrote the kernels into the package's own __pycache__ without a word, while edgesnn
    reported (and its compile notice looked in) the chosen folder: every run said it compiled."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), EDGESNN_CACHE_DIR=str(tmp_path / "c"),
               HOME=str(tmp_path / "home"))
    res = subprocess.run([sys.executable, "-c", _BLOCKED], capture_output=True, text=True, env=env, timeout=120,
                         cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["error"].startswith("path: ") and "is not a writable folder" in out["error"] and "\n" not in out["error"]
    assert out["chosen"].startswith(str(tmp_path / "home")), out  # the next candidate, ~/.cache/edgesnn/numba
    assert any(w.startswith(f"EDGESNN_CACHE_DIR={tmp_path / 'c'}: not a writable folder") for w in out["warnings"]), out


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_cache_path_is_refused_not_the_current_folder(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.UsageError, match=r"^path: expected a folder path, got '\s*'$"):
        config.configure_cache(path)
    assert list(tmp_path.iterdir()) == []
