"""Kernel configuration (:mod:`edgesnn.kernels.config`): the cache folder is chosen once and
reaches Numba without reloading its configuration (settings made in code survive), every kernel
module applies ``EDGESNN_WIDE_VECTORS``, thread counts are capped for Numba and PyTorch alike, and
bad settings (``EDGESNN_CACHE_DIR``, ``NUMBA_CACHE_DIR``, ``EDGESNN_WIDE_VECTORS``,
``NUMBA_NUM_THREADS``, an explicit folder) give one line, once.

None of these tests compiles a kernel: the subprocess ones import kernel modules (which defines,
not compiles, their functions) or stop before the first compilation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesnn.kernels import config, cpu_features, numba_env

ROOT = Path(__file__).resolve().parents[1]
_CLEARED = ("NUMBA_CACHE_DIR", "NUMBA_CPU_FEATURES", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "NUMBA_BOUNDSCHECK",
            "EDGESNN_WIDE_VECTORS", "EDGESNN_CACHE_DIR")


def _run(code: str, tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """Run ``code`` (a script file in ``tmp_path``) in a fresh interpreter with a private cache folder."""
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["EDGESNN_CACHE_DIR"] = str(tmp_path / "cache")
    env.update(env_vars)
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(tmp_path))


def _last_json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _host_has_avx512() -> bool:
    try:
        import llvmlite.binding as ll

        return "+avx512f" in ll.get_host_cpu_features().flatten().split(",")
    except Exception:
        return False


@pytest.fixture
def fresh_config(monkeypatch):
    """This process's configuration as if nothing were chosen yet; Numba's settings restored after."""
    import numba.core.config as nc

    saved = {name: getattr(nc, name) for name in ("CACHE_DIR", "CPU_FEATURES")}
    reloader = getattr(nc, "_env_reloader", None)
    seen = dict(reloader.old_environ) if reloader is not None else None
    monkeypatch.setattr(config, "_CACHE_DIR", None)
    monkeypatch.setattr(cpu_features, "_CPU_FEATURES", None)
    monkeypatch.setattr(numba_env, "_WARNED", set())
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    monkeypatch.undo()
    for name, value in saved.items():
        setattr(nc, name, value)
    if seen is not None:
        reloader.old_environ = seen


# -- 1. settings made in code survive; the cache still goes to the chosen folder ----------------

def test_numba_settings_made_in_code_survive_the_kernel_configuration(tmp_path):
    code = """
import json
import numba
numba.config.THREADING_LAYER = "workqueue"
numba.config.BOUNDSCHECK = 1
from edgesnn.kernels import numba_bits
from numba import njit, prange

@njit(parallel=True)
def f(a):
    for i in prange(a.shape[0]):
        a[i] += 1

import numpy as np
f(np.zeros(64))  # a compilation: Numba's compiler re-reads its environment first
print(json.dumps({"layer": str(numba.config.THREADING_LAYER), "boundscheck": numba.config.BOUNDSCHECK,
                  "running": numba.threading_layer(), "cache_dir": numba.config.CACHE_DIR,
                  "kernel_cache": numba_bits._pack._cache._cache_path}))
"""
    got = _last_json(_run(code, tmp_path))
    assert (got["layer"], got["boundscheck"], got["running"]) == ("workqueue", 1, "workqueue")
    chosen = str(tmp_path / "cache" / config._sources_key())
    assert got["cache_dir"] == chosen and got["kernel_cache"].startswith(chosen + os.sep)


# -- 2. every kernel module applies EDGESNN_WIDE_VECTORS ------------------------------------------

@pytest.mark.skipif(not _host_has_avx512(), reason="EDGESNN_WIDE_VECTORS acts on AVX-512 hosts only")
def test_wide_vectors_apply_when_a_batchnorm_kernel_module_loads_first(tmp_path):
    code = """
import json
from edgesnn.kernels import numba_bn
import numba
from numba.core.registry import cpu_target
print(json.dumps({"config": numba.config.CPU_FEATURES, "codegen": cpu_target.target_context.codegen()._tm_features}))
"""
    got = _last_json(_run(code, tmp_path, EDGESNN_WIDE_VECTORS="1"))
    assert got["config"].endswith(",-prefer-256-bit")
    assert got["codegen"].endswith(",-prefer-256-bit")  # what the kernels are compiled with


# -- 3. the folder is chosen once; an explicit other folder later is an error ---------------------

def test_warmup_cache_dir_wins_over_edgesnn_cache_dir(tmp_path):
    """``EDGESNN_CACHE_DIR=A edgesnn warmup --cache-dir B``: the kernels (here numba_bits, loaded by
    a stand-in for numba_cpu's warmup, which would compile for a minute) cache into B; a later
    ``warmup(cache_dir=C)`` in the same process is a one-line error."""
    code = """
import importlib, json, sys, types
import edgesnn.kernels as pkg
from edgesnn.errors import UsageError
from edgesnn.kernels import cli
stub = types.ModuleType("edgesnn.kernels.numba_cpu")
stub.warmup = lambda: importlib.import_module("edgesnn.kernels.numba_bits")
sys.modules[stub.__name__] = pkg.numba_cpu = stub
info = cli.warmup(cache_dir=sys.argv[0].replace("script.py", "B"), verbose=False)
import numba
from edgesnn.kernels import numba_bits
try:
    cli.warmup(cache_dir=sys.argv[0].replace("script.py", "C"), verbose=False)
    error = None
except UsageError as exc:
    error = str(exc)
print(json.dumps({"info": info["cache_dir"], "numba": numba.config.CACHE_DIR,
                  "kernel_cache": numba_bits._pack._cache._cache_path, "error": error}))
"""
    got = _last_json(_run(code, tmp_path, EDGESNN_CACHE_DIR=str(tmp_path / "A")))
    chosen = str(tmp_path / "B" / config._sources_key())
    assert got["info"] == got["numba"] == chosen and got["kernel_cache"].startswith(chosen + os.sep)
    assert got["error"].startswith(f"--cache-dir: the kernels are already loaded with the cache folder {chosen}")
    assert "\n" not in got["error"] and not (tmp_path / "A").exists()


def test_cache_folder_is_chosen_once(fresh_config, tmp_path):
    fresh_config.setenv("EDGESNN_CACHE_DIR", str(tmp_path / "A"))
    first = config.configure_cache()
    fresh_config.setenv("EDGESNN_CACHE_DIR", str(tmp_path / "B"))
    assert config.configure_cache() == first == str(tmp_path / "A" / config._sources_key())
    assert config.cache_dir() == first and os.environ["NUMBA_CACHE_DIR"] == first


def test_explicit_other_folder_after_the_kernels_loaded_is_an_error(fresh_config, tmp_path):
    from edgesnn.errors import UsageError
    from edgesnn.kernels.cli import warmup

    first = config.configure_cache(tmp_path / "A")
    fresh_config.setattr(config, "_kernels_loaded", lambda: True, raising=False)
    assert config.configure_cache(str(tmp_path / "A")) == first  # the same folder is fine
    with pytest.raises(ValueError, match=r"^path: the kernels are already loaded with the cache folder .*/A/"):
        config.configure_cache(tmp_path / "B")
    with pytest.raises(UsageError, match=r"^--cache-dir: the kernels are already loaded"):
        warmup(cache_dir=str(tmp_path / "B"), verbose=False)
    assert config.cache_dir() == first and not (tmp_path / "B").exists()


# -- 4. threads: one capped count for Numba and PyTorch; NumPy integers -----------------------------

def test_set_num_threads_caps_both_pools_and_warns_once(fresh_config):
    import numba

    from edgesnn.kernels import get_num_threads, set_num_threads

    pool = numba.config.NUMBA_NUM_THREADS
    before = get_num_threads()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            set_num_threads(pool + 7)
            set_num_threads(pool + 7)
        assert get_num_threads() == {"numba": pool, "torch": pool}
        assert len(rec) == 1 and rec[0].filename == __file__, [(str(w.message), w.filename) for w in rec]
        msg = str(rec[0].message)
        assert msg.startswith(f"set_num_threads({pool + 7}): Numba's pool has {pool} threads (the {pool} cores")
        assert "NUMBA_NUM_THREADS" in msg and "\n" not in msg
        set_num_threads(np.int64(1))
        assert get_num_threads() == {"numba": 1, "torch": 1}
        for bad in (0, np.int64(0), 1.0, True, "2"):
            with pytest.raises(ValueError, match=r"^set_num_threads\(n\): expected an integer >= 1"):
                set_num_threads(bad)
    finally:
        numba.set_num_threads(before["numba"])
        torch.set_num_threads(before["torch"])


def test_numba_num_threads_caps_pytorch_too(tmp_path):
    code = """
import json, warnings
from edgesnn.kernels.config import get_num_threads, set_num_threads
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    used = set_num_threads(2)
print(json.dumps({"used": used, "counts": get_num_threads(), "warnings": [str(w.message) for w in rec]}))
"""
    got = _last_json(_run(code, tmp_path, NUMBA_NUM_THREADS="1"))
    assert got["used"] == 1 and got["counts"] == {"numba": 1, "torch": 1}
    assert got["warnings"] == ["set_num_threads(2): NUMBA_NUM_THREADS=1 limits Numba's pool to 1 threads; "
                               "Numba and PyTorch use 1 threads"]


def test_warmup_accepts_numpy_thread_counts(fresh_config):
    import numba

    from edgesnn.errors import UsageError
    from edgesnn.kernels import cli, get_num_threads, numba_cpu

    fresh_config.setattr(numba_cpu, "warmup", lambda: None)  # the compilation itself is tested elsewhere
    before = get_num_threads()
    try:
        info = cli.warmup(threads=np.int64(1), verbose=False)
        assert info["threads"] == {"numba": 1, "torch": 1}
        with pytest.raises(UsageError, match="^--threads: expected an integer >= 1"):
            cli.warmup(threads=np.int64(0), verbose=False)
    finally:
        numba.set_num_threads(before["numba"])
        torch.set_num_threads(before["torch"])


# -- 5. cache folders given by the user: ~ expanded, unusable ones warned about or refused ----------

def test_tilde_in_cache_variables_is_expanded(fresh_config, tmp_path):
    fresh_config.setenv("HOME", str(tmp_path / "home"))
    fresh_config.setenv("EDGESNN_CACHE_DIR", "~/edge-cache")
    fresh_config.chdir(tmp_path)
    assert config.configure_cache() == str(tmp_path / "home" / "edge-cache" / config._sources_key())
    assert not (tmp_path / "~").exists()


def test_unusable_numba_cache_dir_is_warned_about_once(fresh_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fresh_config.setenv("HOME", str(tmp_path / "home"))
    fresh_config.setenv("NUMBA_CACHE_DIR", str(blocker))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        chosen = config.configure_cache()
        assert config.configure_cache() == chosen
    assert chosen == str(tmp_path / "home" / ".cache" / "edgesnn" / "numba" / config._sources_key())
    assert [str(w.message) for w in rec] == [
        f"NUMBA_CACHE_DIR={blocker}: not a writable folder; the Numba kernel cache goes to {chosen}"]


@pytest.mark.parametrize("kind", ["unwritable", "file"])
def test_explicit_unusable_folder_is_an_error(fresh_config, tmp_path, kind):
    target = "/proc/edgesnn-no-such-folder"
    if kind == "file":
        target = str(tmp_path / "a-file")
        Path(target).write_text("x")
    words = "is a file; expected a folder" if kind == "file" else "is not a writable folder"
    with pytest.raises(ValueError, match=f"^path: {target} {words}"):
        config.configure_cache(target)
    assert config._CACHE_DIR is None  # nothing chosen: no silent fallback


# -- 6. a bad EDGESNN_CACHE_DIR warns once, at the user's line --------------------------------------

def test_bad_edgesnn_cache_dir_warns_once_across_kernel_modules(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = """
import json, warnings
with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    import edgesnn.kernels.numba_bits
    import edgesnn.kernels.numba_bn
    import edgesnn.kernels.numba_cpu
    from edgesnn.kernels import cache_dir
    cache_dir()
print(json.dumps([[str(w.message), w.filename] for w in rec if "CACHE_DIR" in str(w.message)]))
"""
    res = _run(code, tmp_path, EDGESNN_CACHE_DIR=str(blocker / "cache"), HOME=str(tmp_path / "home"))
    got = _last_json(res)
    assert len(got) == 1, got
    message, filename = got[0]
    assert message.startswith(f"EDGESNN_CACHE_DIR={blocker / 'cache'}: not a writable folder; the Numba kernel "
                              f"cache goes to {tmp_path / 'home'}")
    assert filename == str(tmp_path / "script.py")  # the user's import line, not a library one


# -- 7. EDGESNN_WIDE_VECTORS is a switch with the usual spellings -----------------------------------

def test_wide_vectors_switch_spellings(fresh_config):
    fresh_config.setattr(cpu_features, "_wide_features", lambda: "+avx512f,-prefer-256-bit")
    fresh_config.setattr(cpu_features, "_cpu_target_created", lambda: False)
    fresh_config.setattr(cpu_features, "_export_numba_setting", lambda *a: None)
    for value in ("TRUE", "on", " 1", "Yes"):
        fresh_config.setattr(cpu_features, "_CPU_FEATURES", None)
        fresh_config.setenv("EDGESNN_WIDE_VECTORS", value)
        assert cpu_features.configure_cpu_features().endswith("-prefer-256-bit"), value
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for value in ("0", "off", "FALSE", "no", "", "garbage", "garbage"):
            fresh_config.setattr(cpu_features, "_CPU_FEATURES", None)
            fresh_config.setenv("EDGESNN_WIDE_VECTORS", value)
            assert cpu_features.configure_cpu_features() == "", value
    assert [str(w.message) for w in rec] == [
        "EDGESNN_WIDE_VECTORS='garbage': expected 1/0, true/false, yes/no or on/off; wide vectors stay off"]


def test_wide_vectors_too_late_is_warned_about(fresh_config):
    fresh_config.setattr(cpu_features, "_wide_features", lambda: "+avx512f,-prefer-256-bit")
    fresh_config.setattr(cpu_features, "_cpu_target_created", lambda: True)
    fresh_config.setenv("EDGESNN_WIDE_VECTORS", "1")
    with pytest.warns(RuntimeWarning, match="^EDGESNN_WIDE_VECTORS: has no effect"):
        assert cpu_features.configure_cpu_features() == ""
    assert "NUMBA_CPU_FEATURES" not in os.environ


# -- 8. NUMBA_NUM_THREADS must be an integer >= 1: one line naming it --------------------------------

def test_bad_numba_num_threads_is_one_line_naming_it(tmp_path):
    code = """
import torch
from edgesnn.nn import LIF
try:
    LIF(backend="auto", step_mode="m")(torch.randn(4, 2, 8))
except ValueError as exc:
    import sys
    print(type(exc).__name__, exc)
    print("numba imported" if "numba" in sys.modules else "numba not imported")
"""
    res = _run(code, tmp_path, NUMBA_NUM_THREADS="0")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines() == [
        "UsageError NUMBA_NUM_THREADS='0': expected an integer >= 1 (the size of Numba's thread pool); unset it to use "
        "every core", "numba not imported"]
    for value in ("0", "abc"):
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        env.update(PYTHONPATH=str(ROOT), EDGESNN_CACHE_DIR=str(tmp_path / "cache"), NUMBA_NUM_THREADS=value)
        res = subprocess.run([sys.executable, "-m", "edgesnn", "warmup"], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 2 and res.stderr.strip() == (
            f"edgesnn warmup: error: NUMBA_NUM_THREADS={value!r}: expected an integer >= 1 (the size of Numba's thread "
            "pool); unset it to use every core"), res.stderr[-3000:]


_HIDE_NUMBA_CUDA = """
import sys

class HideNumbaCuda:
    def find_spec(self, name, path=None, target=None):
        if name == "numba_cuda" or name.startswith("numba_cuda."):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, HideNumbaCuda())
"""


def test_importing_the_kernels_leaves_numba_unimported_without_numba_cuda(tmp_path):
    """A user install has no numba-cuda (a dev extra). Looking for Numba's in-tree CUDA target with
    ``find_spec("numba.cuda")`` imported Numba itself when ``edgesnn.kernels`` was imported
    (~0.5 s, before edgesnn checked Numba's settings). numba-cuda is hidden here, as on such an
    install; the in-tree target is still found (from the files, without importing Numba)."""
    code = _HIDE_NUMBA_CUDA + """
import importlib.util, os
import edgesnn.kernels
from edgesnn.kernels import dispatch
print("numba imported" if "numba" in sys.modules else "numba not imported")
roots = importlib.util.find_spec("numba").submodule_search_locations
print(dispatch._NUMBA_CUDA == any(os.path.isfile(os.path.join(r, "cuda", "__init__.py")) for r in roots))
"""
    res = _run(code, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines() == ["numba not imported", "True"]


def test_bad_numba_num_threads_is_one_line_without_numba_cuda(tmp_path):
    """Without numba-cuda, ``edgesnn warmup`` with ``NUMBA_NUM_THREADS='abc'`` printed Numba's own
    multi-line parse warning (Numba had been imported to look for its CUDA target) before
    edgesnn's one-line error."""
    code = _HIDE_NUMBA_CUDA + """
from edgesnn.cli import main
sys.exit(main(["warmup"]))
"""
    res = _run(code, tmp_path, NUMBA_NUM_THREADS="abc")
    assert res.returncode == 2 and res.stderr.strip() == (
        "edgesnn warmup: error: NUMBA_NUM_THREADS='abc': expected an integer >= 1 (the size of Numba's thread "
        "pool); unset it to use every core"), res.stderr[-3000:]
