"""Thread-safety audit, the parallel CPU kernels: Numba's ``workqueue`` threading layer (the
README's remedy for forked DataLoader workers) ends the process when two threads launch parallel
kernels at once; every ``parallel=True`` kernel goes through :func:`edgesnn.kernels.launch.launch`,
which serializes launches on that layer only (a forked child gets fresh locks). Models, nodes, the
buffer pool and the planner from threads: tests/test_thread_safety_audit.py."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from edgesnn.kernels import dispatch
from edgesnn.nn import LIF, RevLIF

ROOT = Path(__file__).resolve().parents[1]
needs_numba = pytest.mark.skipif(not dispatch.numba_available(), reason="needs Numba")


def kernel_workload(seed: int = 0) -> List[torch.Tensor]:
    """Every ``parallel=True`` CPU kernel once, through the public paths (shared nodes): LIF and
    RevLIF forward/backward, LIF + 2x2 max-pool forward/backward, the exact BatchNorm statistics and
    gradient kernels, and the 1-bit packing; returns every result."""
    from edgesnn.kernels.numba_lif_pool import lif_pool2_backward, lif_pool2_forward
    from edgesnn.memopt.batchnorm import ExactStats, grad_sums, input_grad_
    from edgesnn.memopt.packing import pack_bits, unpack_bits

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(8, 4, 4096, generator=g) * 2).requires_grad_()
    res: List[torch.Tensor] = []
    for node in _SHARED_NODES:
        y = node(x)
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        res += [y.detach(), gx]
    z = torch.rand(6, 8, 16, 16, generator=g) * 2
    pooled, vT = lif_pool2_forward(z, torch.zeros(8, 16, 16), _SHARED_NODES[0].params)
    res += [pooled, vT, *lif_pool2_backward(z, torch.zeros(8, 16, 16), torch.ones_like(pooled), torch.zeros_like(vT),
                                            _SHARED_NODES[0].params)]
    a = torch.randn(4, 16, 256, generator=g)
    st = ExactStats()
    st.add_sum(a)
    st.add_var(a)
    c = torch.rand(16, generator=g)
    res += [st.mean(), st.var_sum(), *grad_sums(a, a.clone()), input_grad_(a.clone(), a.clone(), c, c, c)]
    spikes = (torch.rand(8, 4096, generator=g) > 0.5).float()
    packed = pack_bits(spikes)
    return res + [packed, unpack_bits(packed, (4096,), torch.float32)]


_SHARED_NODES = [LIF(backend="numba"), RevLIF(backend="numba")]

WORKQUEUE_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading, torch
    sys.path.insert(0, sys.argv[1])
    import numba
    from test_kernel_launch_threads_audit import kernel_workload
    ref = kernel_workload()
    out, errors = {}, []
    def run(i):
        try:
            for _ in range(6):
                out[i] = kernel_workload()
        except BaseException as exc:
            errors.append(repr(exc))
    ts = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    same = len(out) == 4 and all(all(torch.equal(a, b) for a, b in zip(r, ref)) for r in out.values())
    from edgesnn.kernels import launch
    print(json.dumps({"layer": numba.threading_layer(), "serialized": launch.serialized(), "same": same,
                      "errors": errors}))
    """
)


@needs_numba
def test_workqueue_layer_concurrent_kernels_match_single_thread():
    """4 threads run every parallel kernel (shared LIF / RevLIF nodes, BatchNorm, packing) on the
    workqueue layer: exit 0 and the single-threaded results (the process aborted before)."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_NUM_THREADS", "PYTHONPATH")}
    env["NUMBA_THREADING_LAYER"] = "workqueue"
    r = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT, str(ROOT / "tests")], capture_output=True, text=True,
                       timeout=300, env=env, cwd=ROOT)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-1500:]}"
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"layer": "workqueue", "serialized": True, "same": True, "errors": []}, got


def _parallel_kernels() -> Dict[str, tuple]:
    """``"module.name" -> (module, name)`` of every ``parallel=True`` Numba kernel of edgesnn."""
    import importlib

    from edgesnn.kernels.cache_key import CACHED_KERNEL_MODULES

    found = {}
    for mod_name in CACHED_KERNEL_MODULES:
        mod = importlib.import_module(f"edgesnn.kernels.{mod_name}")
        for name, obj in vars(mod).items():
            if getattr(obj, "targetoptions", {}).get("parallel") and getattr(obj, "py_func", None) is not None \
                    and obj.py_func.__module__ == mod.__name__:
                found[f"{mod_name}.{name}"] = (mod, name)
    return found


@needs_numba
def test_every_parallel_kernel_is_launched_through_the_launcher(monkeypatch):
    """With launches serialized, each of the parallel kernels is called by the launcher's locked
    call, none directly (a direct call would bypass the lock); and no edgesnn source calls one by name."""
    from edgesnn.kernels import launch

    kernels = _parallel_kernels()
    assert len(kernels) >= 12, sorted(kernels)
    locked_call = launch._Serialized.__call__.__code__
    called, direct = set(), []

    def tripwire(key: str, real):
        def kernel(*args):
            called.add(key)
            if sys._getframe(1).f_code is not locked_call:
                direct.append(f"{key} called from {sys._getframe(1).f_code.co_name}")
            return real(*args)
        return kernel

    for key, (mod, name) in kernels.items():
        monkeypatch.setattr(mod, name, tripwire(key, getattr(mod, name)))
    monkeypatch.setattr(launch, "_SERIAL", True)
    kernel_workload()
    assert not direct, direct
    assert called == set(kernels), sorted(set(kernels) - called)
    names = {name for _, name in kernels.values()}
    calls = []
    for path in sorted((ROOT / "edgesnn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):  # kernel(...) or numba_xxx.kernel(...); launch(kernel)(...) is fine
                f = node.func
                name = f.id if isinstance(f, ast.Name) else None
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id.startswith("numba_"):
                    name = f.attr
                if name in names:
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not calls, f"parallel kernels called without launch(kernel)(...): {calls}"


@needs_numba
def test_launcher_decides_after_the_layer_started_and_calls_directly_off_workqueue():
    import numba

    from edgesnn.kernels import launch

    kernel_workload()  # kernels ran: Numba's layer started
    layer = numba.threading_layer()
    assert launch.serialized() == (layer == "workqueue")
    if layer != "workqueue":
        k = _parallel_kernels()["numba_cpu._lif_fwd"]
        assert launch.launch(getattr(*k)) is getattr(*k)  # the direct path: the kernel itself


def test_forked_child_gets_unlocked_launch_block_and_probe_locks():
    """A fork while another thread holds the launch lock (or the memopt block lock, or the shape
    probe's) must not leave the child's lock held: the child's first launch would wait forever."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    from edgesnn.kernels import launch
    from edgesnn import shape_probe
    from edgesnn.memopt import handoff

    held, release = threading.Event(), threading.Event()

    def holder():
        with launch._LOCK, handoff.run_lock(), shape_probe._PROBE_LOCK:
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(30)
    try:
        pid = os.fork()
        if pid == 0:  # child: every lock free
            ok = all(lock.acquire(timeout=2) for lock in (launch._LOCK, handoff.run_lock(), shape_probe._PROBE_LOCK))
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
