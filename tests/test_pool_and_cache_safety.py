"""Safety of the CPU buffer pool and of the kernel configuration (audit findings).

- a pooled output moved into shared memory (sent by a DataLoader worker) is never reused;
- a kept ``tensor.untyped_storage()`` object keeps its buffer out of the pool;
- an invalid ``EDGESNN_BUFFER_POOL_MB`` warns once and gives the default;
- a child forked after PyTorch's OpenMP threads started takes the PyTorch paths (no hang);
- the temporary cache fallback never trusts another user's or a world-writable folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from edgesnn.kernels import buffers, config, dispatch, fork_guard
from _pool_state import isolated_pool  # tests/ helper

BIG = (4, 8, 1 << 14)  # 2 MiB float32: pooled


@pytest.fixture
def pool():
    with isolated_pool(64 << 20):
        yield


def test_shared_storage_is_never_reused(pool):
    a = buffers.empty(BIG)
    a.fill_(1.0)
    a.share_memory_()  # what a DataLoader worker / multiprocessing queue does, in place
    ptr = a.data_ptr()
    held = buffers.pool_bytes()
    del a  # the worker's last reference: another process may still read the memory
    b = buffers.empty(BIG)
    assert b.data_ptr() != ptr
    assert not b.untyped_storage().is_shared()
    assert buffers.pool_bytes() == held  # the shared one was dropped, b took its place
    del b
    buffers.release()
    assert buffers.pool_bytes() == 0


def test_kept_untyped_storage_is_not_reused(pool):
    a = buffers.empty(BIG)
    a.fill_(3.0)
    st = a.untyped_storage()  # the very storage object the pool holds
    ptr = a.data_ptr()
    del a
    b = buffers.empty(BIG)
    b.fill_(0.0)
    assert b.data_ptr() != ptr
    assert torch.equal(torch.empty(0).set_(st, 0, BIG), torch.full(BIG, 3.0))
    del st
    c = buffers.empty(BIG)
    assert c.data_ptr() == ptr  # nothing refers to it any more: reused


@pytest.mark.parametrize("raw", ["inf", "nan", "abc", "-1", "-inf"])
def test_invalid_pool_env_warns_and_uses_default(monkeypatch, raw):
    monkeypatch.setenv("EDGESNN_BUFFER_POOL_MB", raw)
    with pytest.warns(RuntimeWarning) as rec:
        limit = buffers._env_limit()
    assert limit == 64 << 20
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "EDGESNN_BUFFER_POOL_MB" in msg and "0 turns" in msg and "\n" not in msg


@pytest.mark.parametrize("raw, expected", [("0", 0), ("16", 16 << 20), ("0.5", 1 << 19), ("", 64 << 20)])
def test_valid_pool_env(monkeypatch, raw, expected):
    monkeypatch.setenv("EDGESNN_BUFFER_POOL_MB", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert buffers._env_limit() == expected


FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp, sys, torch
    from edgesnn.kernels import config
    from edgesnn.kernels.dispatch import lif_multistep
    from edgesnn.functional.lif import LIFParams

    def child(q):
        torch.set_num_threads(1)
        y = lif_multistep(torch.randn(4, 8, 64), LIFParams(), backend="auto")[0]
        q.put((config.numba_threads_usable(), tuple(y.shape)))

    if __name__ == "__main__":
        if sys.argv[1] == "torch-first":
            a = torch.randn(1000, 1000)
            (a @ a).sum()  # PyTorch's OpenMP threads start in the parent
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,), daemon=True)  # ended with the parent if it hangs
        p.start()
        usable, shape = q.get(timeout=40)
        p.join(30)
        assert p.exitcode == 0, p.exitcode
        print("OK", usable, shape)
    """
)


@pytest.mark.skipif(not dispatch.numba_available() or sys.platform != "linux",
                    reason="needs Numba and the fork start method")
def test_child_forked_after_torch_threads_does_not_hang(tmp_path):
    path = tmp_path / "fork_after_torch.py"
    path.write_text(FORK_SCRIPT)
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    env["OMP_NUM_THREADS"] = "2"  # a real OpenMP pool even on a 1-core runner
    try:
        r = subprocess.run([sys.executable, str(path), "torch-first"], capture_output=True, text=True,
                           timeout=75, env=env)
    except subprocess.TimeoutExpired:  # pragma: no cover - the bug: the child hangs in libgomp
        pytest.fail("a child forked after a PyTorch parallel op hung in a Numba kernel")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().startswith("OK"), r.stdout + r.stderr


def test_fork_hooks_installed_at_import():
    assert fork_guard._FORK_HOOKED or not hasattr(os, "register_at_fork")


@pytest.fixture
def fake_tmp(tmp_path, monkeypatch):
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    uid = os.getuid()
    return base, base / f"edgesnn-numba-{uid}"


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="needs uids")
def test_tmp_cache_created_private(fake_tmp):
    _, fixed = fake_tmp
    got = config._private_tmp_base()
    assert got == str(fixed)
    assert os.stat(got).st_mode & 0o777 == 0o700


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="needs uids")
def test_tmp_cache_world_writable_is_not_trusted(fake_tmp):
    base, fixed = fake_tmp
    fixed.mkdir()
    os.chmod(fixed, 0o777)
    got = config._private_tmp_base()
    assert got != str(fixed) and os.path.dirname(got) == str(base)
    assert os.path.basename(got).startswith("edgesnn-numba-")
    assert os.stat(got).st_mode & 0o777 == 0o700


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown to another user needs root")
def test_tmp_cache_of_another_user_is_not_trusted(fake_tmp):
    _, fixed = fake_tmp
    fixed.mkdir(mode=0o700)
    os.chown(fixed, 65534, 65534)
    got = config._private_tmp_base()
    assert got != str(fixed) and os.stat(got).st_uid == os.getuid()


def _restore_cache(old, monkeypatch) -> None:
    """Undo :func:`config.configure_cache`'s choice and environment, and make Numba read it again."""
    config._CACHE_DIR = old
    monkeypatch.undo()
    try:
        import numba.core.config as nc

        nc.reload_config()
    except Exception:
        pass


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="needs uids")
def test_configure_cache_falls_back_to_private_tmp(fake_tmp, tmp_path, monkeypatch):
    _, fixed = fake_tmp
    fixed.mkdir()
    os.chmod(fixed, 0o777)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.delenv("EDGESNN_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(blocker))  # ~/.cache cannot be created under a file
    old = config._CACHE_DIR
    config._CACHE_DIR = None  # the folder is chosen once per process: search again here
    try:
        chosen = config.configure_cache()
        assert chosen and fixed not in Path(chosen).parents  # (a string prefix test failed when mkdtemp's name began with the uid)
        assert os.stat(os.path.dirname(chosen)).st_mode & 0o777 == 0o700
    finally:
        _restore_cache(old, monkeypatch)


def test_an_unusable_edgesnn_cache_dir_is_warned_about(tmp_path, monkeypatch):
    """EDGESNN_CACHE_DIR set to a folder that cannot be made: one warning naming it, then the fallback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("EDGESNN_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    old = config._CACHE_DIR
    config._CACHE_DIR = None  # the folder is chosen once per process: search again here
    try:
        with pytest.warns(RuntimeWarning, match="EDGESNN_CACHE_DIR=.*not a writable folder"):
            chosen = config.configure_cache()
        assert chosen.startswith(str(tmp_path / "home"))
    finally:
        _restore_cache(old, monkeypatch)


def test_unpooled_takes_fresh_tensors_in_its_thread_only(pool):
    with buffers.unpooled():
        a = buffers.empty(BIG)
        assert buffers.pool_bytes() == 0
        worker = __import__("threading").Thread(target=buffers.empty, args=(BIG,))
        worker.start()
        worker.join()
        assert buffers.pool_bytes() == a.numel() * 4  # (another thread's buffer is pooled as before)
    del a
    b = buffers.empty(BIG)
    assert buffers.pool_bytes() == b.numel() * 4


@pytest.mark.skipif(not dispatch.numba_available(), reason="numba not installed")
def test_evaluation_keeps_no_pooled_buffer_idle(pool):
    """The evaluation pass's kernel outputs ([T, B, N] >= 1 MiB) went into the pool and stayed idle there after
    the next layer, up to its limit: 110 MiB above the resident memory where the planner counts 80 (convnet,
    T = 16); the training step's idle buffers were kept through the pass as well."""
    from edgesnn.models import build_model
    from edgesnn.training.data import Split
    from edgesnn.training.loop import evaluate

    idle = buffers.empty(BIG)
    del idle  # a training step's buffer, idle in the pool
    assert buffers.pool_bytes() > 0
    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10, 8, "lif", hidden=[1 << 13], node={"backend": "numba"})
    split = Split(torch.rand(64, 64), torch.randint(0, 10, (64,)))  # LIF output [8, 64, 8192]: 16 MiB
    evaluate(model, split, 64)
    assert buffers.pool_bytes() == 0
