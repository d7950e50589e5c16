"""Huge sizes, part two (after tests/test_huge_sizes.py): a NIR input sized on the meta device, the
planner's host memory and its loops over T, the onnx-step export's time in T and widest layer, and a NIR-loaded
model's checkpoint. Nothing here allocates much: shapes go through the meta device, and what older
code would have allocated runs in a subprocess under RLIMIT_AS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from _address_limit import LIMIT_AFTER_IMPORTS  # tests/ helper (pytest puts tests/ on sys.path)
from edgesnn import cli, memory_guard
from edgesnn.checkpoint import CheckpointError, save_checkpoint
from edgesnn.models import build_model
from edgesnn.planner import network
from edgesnn.planner.network_model import BlockShape, fused_static, n_chunks, predict_peak

ROOT = Path(__file__).resolve().parents[1]


def _run_limited(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter under RLIMIT_AS = its imports + 3 GiB."""
    head = LIMIT_AFTER_IMPORTS
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", head + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


# ----------------------------------------------------------------------------- NIR input shapes

_NIR_CONV = """
    import numpy as np, nir
    from edgesnn import nir as enir
    def f(shape, v):
        return np.full(shape, v, np.float32)
    H = {H}
    out = (2, H - 2, H - 2)
    conv = nir.Conv2d(input_shape=(H, H), weight=f((2, 1, 3, 3), 0.1), stride=1, padding=0, dilation=1, groups=1,
                      bias=f(2, 0.0))
    lif = nir.LIF(tau=f(1, 3e-4), r=f(1, 1.0), v_leak=f(1, 0.0), v_threshold=f(1, 0.5), v_reset=f(1, 0.0))
    g = nir.NIRGraph(nodes={{"input": nir.Input(np.array([1, H, H])), "c": conv, "lif": lif,
                            "output": nir.Output(np.array(out))}},
                     edges=[("input", "c"), ("c", "lif"), ("lif", "output")], type_check=False, metadata={{"dt": 1e-4}})
    m = enir.load(g, timesteps=2, backend="torch")
    print(m.config["num_classes"], ",".join(map(str, m.in_shape)))
"""


@pytest.mark.parametrize("H", [100000, 32768])  # 40 GB (above this machine) and 4.3 GB (above the limit only)
def test_a_huge_nir_input_is_sized_not_allocated(H):
    pytest.importorskip("nir")
    res = _run_limited(_NIR_CONV.format(H=H))
    assert res.returncode == 0, res.stderr[-2000:]  # was: "nir.Conv2d cannot take an input" (the allocation failed)
    assert res.stdout.split() == [str(2 * (H - 2) ** 2), f"1,{H},{H}"]


def test_a_nir_input_past_64_bit_sizes_is_named():
    nir = pytest.importorskip("nir")
    from edgesnn import nir as enir

    f = lambda shape, v: np.full(shape, v, np.float32)  # noqa: E731
    huge = [2**40, 2**40]
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array(huge)), "fl": nir.Flatten(input_type={"input": np.array(huge)}),
                            "lif": nir.LIF(tau=f(1, 3e-4), r=f(1, 1.0), v_leak=f(1, 0.0), v_threshold=f(1, 0.5),
                                           v_reset=f(1, 0.0)),
                            "output": nir.Output(np.array([2**80]))},
                     edges=[("input", "fl"), ("fl", "lif"), ("lif", "output")], type_check=False, metadata={"dt": 1e-4})
    with pytest.raises(enir.NIRError, match=r"^node fl: nir\.Flatten input of shape \(1099511627776, 1099511627776\) "
                                            r"holds 1208925819614629174706176 values, more than a tensor's 64-bit"):
        enir.load(g, timesteps=2, backend="torch")


# ----------------------------------------------------------------------------- planner: loops over T

def _shapes(T: int, seed: int):
    """A repeated-input block handing off to two chunked blocks (random sizes)."""
    rng = np.random.RandomState(seed)
    r = lambda lo, hi: int(rng.randint(lo, hi))  # noqa: E731
    return [BlockShape(f"b{j}", T, r(1, 33), r(1, 10**5), r(1, 10**5), r(1, 10**6), r(1, 10**5), j == 0, j > 0, True,
                       r(1, 10**7), hands_off=j < 2, param_bytes=r(0, 10**6), has_post=bool(j % 2),
                       sums_over_time=bool(seed % 2)) for j in range(3)]


def _fit_every_multiple(shapes, chunks):
    """The static block's interval tried over every multiple of the next chunk (the old way)."""
    out = list(chunks)
    for i, b in enumerate(shapes):
        if fused_static(shapes, i):
            options = sorted({m * out[i + 1] for m in range(1, n_chunks(b.T, out[i + 1]) + 1)} | {b.T})
            out[i] = min(options, key=lambda c: (predict_peak(shapes, out[:i] + [c] + out[i + 1:])[0], c))
    return out


def _keeps_one_by_one(shapes, chunks):
    """choose_keeps counting down from every chunk (the old way)."""
    keeps = [0] * len(shapes)
    cap = predict_peak(shapes, chunks)[0]
    for i, (b, K) in enumerate(zip(shapes, chunks)):
        for m in range(n_chunks(b.T, K), 0, -1) if network.chunked_bn(b, K) else ():
            bd = {}
            predict_peak(shapes, chunks, breakdown=bd, keeps=keeps[:i] + [m] + keeps[i + 1:])
            if bd[f"forward {b.name}"] <= cap:
                keeps[i] = m
                break
    return keeps


@pytest.mark.parametrize("seed", range(4))
def test_static_interval_and_keeps_match_trying_every_count(seed):
    rng = np.random.RandomState(seed)
    for T in [1, 2, 3, 7, 16, 37, 64, 100, 129]:
        shapes = _shapes(T, seed)
        cands = network._candidates(T)
        for _ in range(4):
            chunks = [int(rng.choice(cands)) for _ in shapes]
            assert network._fit_static(shapes, chunks, 0) == _fit_every_multiple(shapes, chunks)
            assert network.choose_keeps(shapes, chunks) == _keeps_one_by_one(shapes, chunks)


def test_static_options_cover_every_chunk_count():
    for T in range(1, 90):
        for k in range(1, T + 1):
            opts = network._static_options(T, k)
            every = {m * k for m in range(1, n_chunks(T, k) + 1)} | {T}
            assert set(opts) <= every and opts == sorted(opts)
            for n in {n_chunks(T, c) for c in every}:  # the smallest interval of every chunk count
                assert min(c for c in every if n_chunks(T, c) == n) in opts


def test_a_billion_steps_plans_in_seconds_without_a_set_of_t():
    res = _run_limited("""
        import time
        from edgesnn.planner import network
        from edgesnn.planner.network_model import BlockShape
        T = 10**9
        shapes = [BlockShape(f"b{j}", T, 4, 4096, 4096, 8192, 4096, j == 0, j > 0, True, 10**6, hands_off=j < 2)
                  for j in range(3)]
        t = time.perf_counter()
        fit = network._fit_static(shapes, [T, 1, 1], 0)
        keeps = network.choose_keeps(shapes, [fit[0], 1000, 1000])
        print(fit[0] >= 1, keeps[1] >= 1, round(time.perf_counter() - t, 1))
    """, timeout=40)
    assert res.returncode == 0, res.stderr[-2000:]  # was: a set of 10**9 integers (MemoryError), then 10**6 predictions
    ok_fit, ok_keeps, seconds = res.stdout.split()
    assert ok_fit == ok_keeps == "True" and float(seconds) < 10


# ----------------------------------------------------------------------------- planner: host memory

@pytest.mark.parametrize("memopt", [False, True])
def test_plan_refuses_widths_this_machine_cannot_build(monkeypatch, capsys, memopt):
    monkeypatch.setattr(memory_guard, "physical_memory", lambda: 2**18)  # 256 KiB: 300 x 300 weights do not fit
    rc = cli.main(["plan", "--model", "mlp", "--input", "64", "--hidden", "300,300", "-T", "4",
                   "--device", "jetson-orin-nano-8gb", *(["--memopt"] if memopt else [])])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("edgesnn plan: error: --model mlp --input 64 --hidden 300,300: the model's "), err
    state = build_model("mlp", (64,), 10, 4, hidden=(300, 300)).state_dict().values()
    nbytes = sum(t.numel() * t.element_size() for t in state)
    assert f"needs {nbytes * (2 if memopt else 1)} bytes" in err and "lower --hidden/--channels" in err, err


def test_plan_still_plans_what_fits(capsys):
    rc = cli.main(["plan", "--model", "mlp", "--input", "64", "--hidden", "32", "-T", "4", "--device",
                   "jetson-orin-nano-8gb"])
    assert rc == 0 and "predicted" in capsys.readouterr().out


# ----------------------------------------------------------------------------- onnx-step export time

def test_onnx_step_export_does_not_run_the_forward_t_times(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from edgesnn.export import step_program
    from edgesnn.export.onnx_step import export_onnx_step

    calls = []
    real = step_program.StepProgram.forward_step
    monkeypatch.setattr(step_program.StepProgram, "forward_step", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    counts = []
    for T in (4, 96):
        torch.manual_seed(0)
        calls.clear()
        export_onnx_step(build_model("mlp", (8,), 3, T, "revlif", hidden=(6,)), tmp_path / f"t{T}", 2, chunk=1)
        counts.append(len(calls))
    assert counts[0] == counts[1] < 20, counts  # was T more: an example pass over every step (hours at T = 10**8)


def test_onnx_step_export_sizes_its_widest_layer_before_allocating(tmp_path, monkeypatch):
    """A batch whose widest layer cannot fit is one line naming batch_size and the layer; the
    check counted only the input ([64, 16] here) and the shape pass then allocated [B, 8192]."""
    pytest.importorskip("onnx")
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError

    monkeypatch.setattr(memory_guard, "physical_memory", lambda: 2**20)  # a 1 MiB machine
    model = build_model("mlp", (16,), 3, 4, "lif", hidden=(8192,))
    with pytest.raises(ExportError, match=r"batch_size 64: layer .*'s input \[B, 8192\] float32 needs 2097152 bytes"):
        export_onnx_step(model, tmp_path / "art", 64)
    assert not (tmp_path / "art").exists()


# ----------------------------------------------------------------------------- NIR model checkpoints

def test_a_nir_loaded_model_is_not_saved_as_a_checkpoint(tmp_path):
    nir = pytest.importorskip("nir")
    from edgesnn import nir as enir

    f = lambda v: np.full(3, v, np.float32)  # noqa: E731
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([3])), "fc": nir.Affine(np.eye(3, dtype=np.float32), f(0.0)),
                            "lif": nir.LIF(tau=f(3e-4), r=f(1.0), v_leak=f(0.0), v_threshold=f(0.5), v_reset=f(0.0)),
                            "output": nir.Output(np.array([3]))},
                     edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False, metadata={"dt": 1e-4})
    m = enir.load(g, timesteps=2, backend="torch")
    assert m.config["name"] == "nir"
    path = tmp_path / "nir.ckpt"
    with pytest.raises(CheckpointError, match=r"^save_checkpoint: .*nir\.ckpt: model_config is a model loaded from NIR "
                                              r"\(name 'nir'\), .* edgesnn\.nir\.load\(file\) \+ load_state_dict$"):
        save_checkpoint(path, m.config, m.state_dict())
    assert not path.exists()  # was written, then `edgesnn export --checkpoint` failed: "unexpected keyword 'dt'"
    ok = build_model("mlp", (3,), 3, 2, hidden=(4,))
    save_checkpoint(path, ok.config, ok.state_dict())  # build_model models save as before
    assert path.exists()

    # a NIR model's checkpoint written before the refusal: rebuilding it says what to do, in one line
    from edgesnn.checkpoint import FORMAT, VERSION, encode_config
    from edgesnn.training.loop import model_from_checkpoint

    old = tmp_path / "old-nir.ckpt"
    torch.save({"format": FORMAT, "version": VERSION, "model_config": encode_config(m.config),
                "model_state": m.state_dict()}, old)
    with pytest.raises(CheckpointError, match=r"^checkpoint: .*old-nir\.ckpt: model_config is a model loaded from NIR "
                                              r"\(name 'nir'\), .*edgesnn\.nir\.load\(the \.nir file\)"):
        model_from_checkpoint(str(old))  # was "does not match its model config (... unexpected keyword argument 'dt')"
    from edgesnn.export.prepare import ExportError
    from edgesnn.export.prepare import model_from_checkpoint as export_model

    with pytest.raises(ExportError, match=r"^--checkpoint .*old-nir\.ckpt: model_config is a model loaded from NIR"):
        export_model(old, "--checkpoint")  # edgesnn export's rebuild


# ----------------------------------------------------------------------------- planner layer shapes

def test_the_planner_sizes_layers_on_the_meta_device():
    """ChainModel learns each layer's output shape without building a sample: a [3, 40000, 40000] input
    (19 GB of zeros, 2 GB of weights at most) is planned under a 3 GiB address space (the old probe
    said the Conv2d could not take its input: the allocator's error read as a wrong shape)."""
    res = _run_limited("""
        from torch import nn
        from edgesnn.models import SpikingClassifier
        from edgesnn.nn import LIF, SeqToANN
        from edgesnn.planner.memory_model import ChainModel
        body = nn.Sequential(SeqToANN(nn.Conv2d(3, 2, 3, padding=1)), LIF(backend="torch"),
                             SeqToANN(nn.AdaptiveAvgPool2d(1)), SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(2, 10)))
        chain = ChainModel(SpikingClassifier(body, 4, (3, 40000, 40000), {}))
        print([L.out_shape for L in chain.layers])
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[(2, 40000, 40000), (2, 40000, 40000), (2, 1, 1), (2,), (10,)]"
