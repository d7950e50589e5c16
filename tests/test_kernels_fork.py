"""A child forked after the CPU kernels ran (a forked DataLoader worker) still runs the nodes and
a memory-optimized network.

Numba's OpenMP threading layer (GNU OpenMP) is not fork-safe: a forked child that launches a
parallel kernel is terminated. edgesnn's fork guard routes ``backend="auto"`` to the PyTorch path
in such a child and makes ``backend="numba"`` raise a one-line error. Runs in a fresh interpreter
so that the pytest process itself is never forked.
"""

import subprocess
import sys
import textwrap

import pytest

from edgesnn.kernels import dispatch

pytestmark = pytest.mark.skipif(not dispatch.numba_available() or sys.platform != "linux",
                                reason="needs Numba and the fork start method")

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import torch
    from edgesnn.kernels import dispatch
    from edgesnn.nn import LIF, RevLIF

    def run(x):
        out = []
        for node in (LIF(), RevLIF()):
            xr = x.clone().requires_grad_()
            y = node(xr)
            y.sum().backward()
            out += [y.detach(), xr.grad]
        # a training step of a memory-optimized conv net (chunked BatchNorm statistics, fused
        # LIF + max-pool, packed spikes: each has a Numba kernel and a PyTorch path)
        torch.manual_seed(1)
        from torch import nn
        import edgesnn
        from edgesnn.nn import SeqToANN
        net = nn.Sequential(SeqToANN(nn.Conv2d(2, 6, 3, padding=1)), SeqToANN(nn.BatchNorm2d(6)), LIF(),
                            SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Conv2d(6, 6, 3, padding=1)),
                            SeqToANN(nn.BatchNorm2d(6)), LIF(), SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(6 * 4 * 4, 3)))
        xs = torch.rand(6, 3, 2, 8, 8) * 2
        edgesnn.optimize_memory(net, xs, chunk=2)
        loss = nn.functional.cross_entropy(net(xs).mean(0), torch.tensor([0, 1, 2]))
        loss.backward()
        out += [loss.detach().reshape(1)] + [p.grad for p in net.parameters()]
        return out

    def child(x, q):
        # what a DataLoader worker does first: PyTorch's own (GNU) OpenMP pool hangs in a forked child
        torch.set_num_threads(1)
        try:
            res = {"usable": dispatch.numba_available(), "out": [t.numpy() for t in run(x)]}  # by value
            try:
                LIF(backend="numba")(x)
                res["numba_error"] = None
            except RuntimeError as e:
                res["numba_error"] = str(e)
            q.put(res)
        except BaseException as e:
            q.put({"error": repr(e)})

    if __name__ == "__main__":
        torch.manual_seed(0)
        x = torch.randn(6, 3, 8) * 1.5 + 0.5
        parent = run(x)  # the kernels run (and Numba's threads start) before the fork
        import numba
        layer = numba.threading_layer()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(x, q))
        p.start()
        p.join(120)  # the results are small: the child's queue feeder flushes them before it exits
        assert p.exitcode == 0, f"the forked child ended with exit code {p.exitcode}"
        res = q.get(timeout=10)
        assert "error" not in res, res
        assert res["usable"] == (layer != "omp"), (layer, res["usable"])
        for a, b in zip(parent, res["out"]):
            torch.testing.assert_close(torch.from_numpy(b), a, rtol=1e-5, atol=1e-6)
        if layer == "omp":
            msg = res["numba_error"]
            assert msg is not None and "forked" in msg and "\\n" not in msg, msg
        print("OK", layer)
    """
)


@pytest.mark.parametrize("layer", [None, "workqueue"])
def test_forked_child_runs_the_nodes(tmp_path, layer):
    import os

    path = tmp_path / "fork_child.py"
    path.write_text(SCRIPT)
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().startswith("OK"), r.stdout + r.stderr
