"""``edgesnn train --memopt``'s cold-cache notice also covers the kernels ``optimize_memory`` compiles.

The notice looked only for the run's neuron kernels (``numba_cpu`` / ``numba_revlif``). A
``--memopt`` run also compiles memopt's own kernels (``numba_bn``, ``numba_bits``,
``numba_lif_pool``, by the model's layers), so on a cache warmed by a plain run it compiled them
without a word. :func:`~edgesnn.kernels.cli.memopt_kernel_modules` names them; checked here against
the kernels that one optimized training step of built-in models really compiles (fresh interpreter
each) and through the CLI on stand-in cache files.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_oldest_torch_user_audit import _train_stderr, _warm

pytest.importorskip("numba")

from edgesnn.kernels import config  # noqa: E402
from edgesnn.kernels.cli import compile_notice, memopt_kernel_modules  # noqa: E402

MEMOPT = ("numba_bn", "numba_bits", "numba_lif_pool")


def test_memopt_modules_follow_the_layers():
    assert memopt_kernel_modules("mlp", "lif", (8, 8)) == ("numba_bn", "numba_bits")
    assert memopt_kernel_modules("mlp", "revlif", (8, 8), batchnorm=False) == ()
    # a last LIF's spikes feed no block: nothing to pack
    assert memopt_kernel_modules("mlp", ["revlif", "lif"], (8, 8), batchnorm=False) == ()
    assert memopt_kernel_modules("mlp", "lif", (8,), batchnorm=False) == ()
    assert memopt_kernel_modules("vgg11", "lif", pool="max") == MEMOPT
    assert memopt_kernel_modules("vgg11", "lif", pool="max", backend="torch") == ("numba_bn", "numba_bits")
    assert memopt_kernel_modules("vgg11", ["revlif"] * 7 + ["lif"], batchnorm=False, pool="max") == ()
    # the convnet's one pool is followed by the classifier: not fused
    assert memopt_kernel_modules("convnet", "lif", (4, 8), pool="max") == ("numba_bn", "numba_bits")


#: one optimized training step in a fresh interpreter; prints the memopt kernel modules holding compiled code
_STEP = """
import json, sys, torch
from edgesnn.memopt import optimize_memory
from edgesnn.models import build_model
name, neuron, bn, pool, backend = json.loads(sys.argv[1])
torch.manual_seed(0)
shape = (16,) if name == "mlp" else (3, 16, 16)
kw = {"hidden": (8, 8)} if name == "mlp" else {"channels": (4, 8)} if name == "convnet" else {}
m = build_model(name, shape, 3, 2, neuron=neuron, batchnorm=bn, pool=pool, node={"backend": backend}, **kw)
x = torch.rand(2, *shape)
optimize_memory(m, x)
m.train()
m(x).sum().backward()
used = [k for k in ("numba_bn", "numba_bits", "numba_lif_pool") if f"edgesnn.kernels.{k}" in sys.modules
        and any(getattr(v, "signatures", None) for v in vars(sys.modules[f"edgesnn.kernels.{k}"]).values()
                if type(v).__name__.endswith("Dispatcher"))]
print(json.dumps(used))
"""


@pytest.mark.parametrize("name, neuron, bn, pool, backend", [
    ("mlp", "lif", True, "avg", "auto"),
    ("mlp", ["lif", "revlif"], False, "avg", "auto"),
    ("convnet", "revlif", True, "max", "auto"),
    ("vgg11", "lif", False, "max", "auto"),
    ("vgg11", "lif", True, "max", "torch"),
])
def test_the_rule_matches_what_one_optimized_step_compiles(name, neuron, bn, pool, backend):
    proc = subprocess.run([sys.executable, "-c", _STEP, json.dumps([name, neuron, bn, pool, backend])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = json.loads(proc.stdout.strip().splitlines()[-1])
    widths = (8, 8) if name == "mlp" else (4, 8)
    assert set(memopt_kernel_modules(name, neuron, widths, bn, pool, backend)) == set(compiled)


@pytest.mark.parametrize("argv, memopt_files", [
    (["--neuron", "lif"], ("numba_bn", "numba_bits")),
    (["--neuron", "revlif", "--no-batchnorm", "--batch-size", "8"], None),  # memopt adds nothing here
    (["--model", "convnet", "--neuron", "revlif"], ("numba_bn",)),
])
def test_memopt_run_notices_memopt_kernels(tmp_path, monkeypatch, capsys, argv, memopt_files):
    """A cache holding only the neuron's kernels: silent for a plain run, a notice for a --memopt run
    whose memopt kernels are still to compile; silent again once their files are there too."""
    monkeypatch.setattr(config, "_CACHE_DIR", str(tmp_path))
    neuron = argv[argv.index("--neuron") + 1]
    _warm(tmp_path, "numba_cpu" if neuron == "lif" else "numba_revlif")
    base = ["--device", "cpu", *argv]
    assert "compiling Numba kernels" not in _train_stderr(base, monkeypatch, capsys)
    err = _train_stderr(base + ["--memopt"], monkeypatch, capsys)
    assert ("compiling Numba kernels once" in err) is (memopt_files is not None), err
    if memopt_files:
        _warm(tmp_path, *memopt_files)
        assert "compiling Numba kernels" not in _train_stderr(base + ["--memopt"], monkeypatch, capsys)


def test_memopt_kernels_compile_on_the_torch_backend_too(tmp_path, monkeypatch, capsys):
    """``--backend torch`` runs no neuron kernel, but memopt's BatchNorm and bit packing still use Numba."""
    monkeypatch.setattr(config, "_CACHE_DIR", str(tmp_path))
    base = ["--device", "cpu", "--backend", "torch"]
    assert "compiling Numba kernels" not in _train_stderr(base, monkeypatch, capsys)
    assert "compiling Numba kernels once" in _train_stderr(base + ["--memopt"], monkeypatch, capsys)
    _warm(tmp_path, "numba_bn", "numba_bits")
    assert "compiling Numba kernels" not in _train_stderr(base + ["--memopt"], monkeypatch, capsys)
    assert compile_notice("torch", "lif", ("numba_lif_pool",)) is not None  # a module still cold
