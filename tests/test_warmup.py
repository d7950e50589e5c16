"""``edgesnn warmup``: a cold cache filled (in compile processes), a warm one loaded, every kernel a
training step runs covered, the parts compiled in separate processes sharing no cached kernel."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

pytest.importorskip("numba")  # a hard dependency; should it be missing, say so with a skip
from edgesnn.kernels import cli as kcli  # noqa: E402


def test_warmup_command_fills_the_cache(tmp_path):
    """`edgesnn warmup --jobs 2` in a fresh process compiles into an empty cache folder in two
    compile processes; a second run loads it in its own process, starting none: it compiles nothing,
    so it writes nothing there (and takes a fraction of the time).

    Both processes run with ``NUMBA_OPT=0`` (no LLVM optimisation passes; the cache is this test's
    own): the same compile-and-cache path, ~40% less time for the cold compile (26 s instead of
    42 s on the 2-core VM). The optimised kernels are compiled and run by the rest of the suite,
    and ``test_warmup_covers_what_a_training_step_runs`` runs ``warmup()`` at the default level."""
    import json
    import os
    import subprocess
    import sys

    from edgesnn import cli

    assert "edgesnn.kernels.cli" in cli.SUBCOMMANDS
    code = (
        "import argparse, sys; from edgesnn.kernels import cli; p = argparse.ArgumentParser(); "
        "cli.register(p.add_subparsers(dest='command')); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("EDGESNN_CACHE_DIR", None)
    env["NUMBA_OPT"] = "0"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")

    def files():
        """Every file in the cache folder: its size and modification time."""
        out = {}
        for folder, _, names in os.walk(tmp_path):
            for name in names:
                st = os.stat(os.path.join(folder, name))
                out[os.path.relpath(os.path.join(folder, name), tmp_path)] = (st.st_size, st.st_mtime_ns)
        return out

    assert not files()
    infos, snapshots = [], []
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", code, "warmup", "--cache-dir", str(tmp_path), "--threads", "1",
                              "--jobs", "2"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        infos.append(json.loads(res.stdout.strip().splitlines()[-1]))
        snapshots.append(files())
    from unittest import mock

    from edgesnn.kernels.config import _sources_key

    with mock.patch.dict(os.environ, {"NUMBA_OPT": "0"}):  # the children's setting is part of the key
        key = _sources_key()
    assert infos[0]["cache_dir"] == str(tmp_path / key)  # one sub-folder per kernel-source version and settings
    assert infos[0]["threads"] == {"numba": 1, "torch": 1}
    assert [info["jobs"] for info in infos] == [2, 0]  # compile processes for the cold cache only
    # the first process wrote index (.nbi) and machine-code (.nbc) files for every kernel module
    written = snapshots[0]
    for module in ("numba_cpu", "numba_revlif", "numba_lif_pool", "numba_bits", "numba_bn"):
        assert any(os.path.basename(f).startswith(module + ".") and f.endswith(".nbi") for f in written), module
        assert any(os.path.basename(f).startswith(module + ".") and f.endswith(".nbc") for f in written), module
    # the second process loads machine code instead of compiling: no file added or rewritten
    assert snapshots[1] == written, sorted(set(snapshots[1].items()) ^ set(written.items()))
    assert infos[1]["cpu_seconds"] < max(3.0, 0.3 * infos[0]["cpu_seconds"]), infos


WARMUP_COVERAGE = """
import torch
from torch import nn
import edgesnn
from edgesnn.kernels import numba_bits, numba_bn, numba_cpu, numba_lif_pool, numba_revlif
from edgesnn.nn import LIF, RevLIF, SeqToANN

numba_cpu.warmup()
mods = (numba_cpu, numba_revlif, numba_lif_pool, numba_bits, numba_bn)

def compiled():
    return {f"{m.__name__}.{n}": len(o.signatures) for m in mods for n, o in vars(m).items()
            if hasattr(o, "signatures") and hasattr(o, "py_func")}

before = compiled()
torch.manual_seed(0)
x = torch.randn(6, 2, 8, requires_grad=True)
for node in (LIF(), RevLIF(), RevLIF(mode="float", beta=0.75)):
    node(x).sum().backward()
for static in (False, True):  # a training step of a memory-optimized conv net, both input kinds
    net = nn.Sequential(SeqToANN(nn.Conv2d(2, 8, 3, padding=1)), SeqToANN(nn.BatchNorm2d(8)), LIF(), SeqToANN(nn.MaxPool2d(2)),
                        SeqToANN(nn.Conv2d(8, 8, 3, padding=1)), SeqToANN(nn.BatchNorm2d(8)), LIF(), SeqToANN(nn.AvgPool2d(2)),
                        SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(8 * 2 * 2, 3)))
    x0 = torch.rand(3, 2, 9, 9)
    xs = x0.unsqueeze(0).expand(6, *x0.shape) if static else torch.rand(6, 3, 2, 9, 9)
    edgesnn.optimize_memory(net, xs, chunk=4)
    nn.functional.cross_entropy(net(xs).mean(0), torch.tensor([0, 1, 2])).backward()
    with torch.no_grad():
        net.eval()
        net(xs)
new = {k: (before.get(k, 0), v) for k, v in compiled().items() if v != before.get(k, 0)}
assert not new, f"compiled after warmup: {new}"
print("OK", sum(before.values()))
"""


def test_warmup_covers_what_a_training_step_runs(tmp_path):
    """After ``warmup()`` the nodes' and a memory-optimized network's training step compile nothing
    new (a Jetson would otherwise compile for seconds in the middle of the first step). Runs in a
    fresh process: this one may already hold specialisations from other tests."""
    import subprocess
    import sys

    path = tmp_path / "warm.py"
    path.write_text(WARMUP_COVERAGE)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.startswith("OK"), r.stdout + r.stderr


PARTS_DISJOINT = """
from edgesnn.kernels import numba_bits, numba_bn, numba_cpu, numba_lif_pool, numba_revlif
from edgesnn.kernels.warmup_parts import PARTS, run_part

mods = (numba_cpu, numba_revlif, numba_lif_pool, numba_bits, numba_bn)
cached = {f"{m.__name__}.{n}": o for m in mods for n, o in vars(m).items()
          if hasattr(o, "signatures") and hasattr(o, "py_func") and o._cache.__class__.__name__ != "NullCache"}
owners = {name: [] for name in cached}
for part in PARTS:
    before = {name: len(o.signatures) for name, o in cached.items()}
    run_part(part)
    for name, o in cached.items():
        if len(o.signatures) != before[name]:
            owners[name].append(part)
print(sorted(owners.items()))
"""


def test_warmup_parts_compile_each_cached_kernel_exactly_once(tmp_path):
    """Two compile processes writing the same kernel's index file at once could each drop the
    other's entry: every ``cache=True`` kernel belongs to exactly one part. Fresh process (the
    kernels load from this suite's cache)."""
    path = tmp_path / "parts.py"
    path.write_text(PARTS_DISJOINT)
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    owners = eval(r.stdout.strip().splitlines()[-1])  # noqa: S307 - our own repr of a list
    assert len(owners) >= 12, owners  # LIF, RevLIF, pool: forward + backward; 2 bit packing, 4 BatchNorm
    assert all(len(parts) == 1 for _, parts in owners), [o for o in owners if len(o[1]) != 1]


def test_default_jobs_is_bounded_by_cores_memory_and_parts(monkeypatch):
    from edgesnn import memory_guard
    from edgesnn.kernels.warmup_parts import PARTS

    monkeypatch.setattr(kcli.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: 3 * 2**30 + 5)
    assert kcli.default_jobs() == 3  # one per GiB
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: 2**29)
    assert kcli.default_jobs() == 1  # a 512 MB board compiles in one process
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: None)
    assert kcli.default_jobs() == len(PARTS)
    monkeypatch.setattr(kcli.os, "sched_getaffinity", lambda pid: {0, 1})
    assert kcli.default_jobs() == 2


def test_warmup_refuses_bad_jobs_in_one_line(capsys):
    from edgesnn.cli import main

    assert main(["warmup", "--jobs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn warmup: error: --jobs:") and ">= 1" in err and "\n" not in err, err


def test_a_dead_compile_process_leaves_the_work_to_this_one(monkeypatch):
    """A compile process killed (e.g. for memory) breaks the pool: warmup warns once and compiles or
    loads every kernel in this process instead of failing."""
    from concurrent.futures.process import BrokenProcessPool

    class DyingPool:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def map(self, *a, **k):
            raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    import concurrent.futures

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", DyingPool)
    monkeypatch.setattr(kcli, "_cache_filled", lambda folder: False)
    ran = []
    from edgesnn.kernels import numba_cpu

    monkeypatch.setattr(numba_cpu, "warmup", lambda: ran.append("here"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = kcli.warmup(jobs=2, verbose=False)
    assert ran == ["here"] and info["jobs"] == 2
    assert [str(w.message) for w in caught if "compile process died" in str(w.message)], [str(w.message) for w in caught]
