"""Library calls leave what the user owns as it was: every submodule's train/eval mode (a BatchNorm the
user froze with ``bn.eval()`` stays frozen) and the global random stream (a seeded script draws the
same numbers after planning or exporting as without it)."""

import pytest
import torch
from torch import nn

from edgesnn.models import build_model
from edgesnn.user_state import evaluating
from edgesnn.nn import LIF, SeqToANN


def _frozen(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]


def test_evaluating_restores_each_submodule_mode_also_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)))
    model.train()
    model[1].eval()
    model[2][0].eval()
    before = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(ValueError):
        with evaluating(model):
            assert not any(m.training for m in model.modules())
            raise ValueError("inside")
    assert {n: m.training for n, m in model.named_modules()} == before
    model.eval()
    model[2].train()  # a training child of an eval parent
    before = {n: m.training for n, m in model.named_modules()}
    with evaluating(model):
        pass
    assert {n: m.training for n, m in model.named_modules()} == before


def test_evaluating_restores_a_module_shared_by_two_parents():
    bn = nn.BatchNorm1d(4)
    model = nn.Sequential(nn.Sequential(bn), nn.Sequential(nn.Linear(4, 4), bn))  # weight-tied: one BatchNorm twice
    model.train()
    bn.eval()
    with evaluating(model):
        pass
    assert not bn.training and model.training and model[1].training


class _Net(nn.Module):
    """A conv net with ``in_shape`` and ``timesteps``, as the planner reads a model."""

    def __init__(self):
        super().__init__()
        self.in_shape, self.timesteps = (2, 8, 8), 4
        self.body = nn.Sequential(SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(),
                                  SeqToANN(nn.Flatten(), nn.Linear(256, 10)))

    def forward(self, x):
        return self.body(x.unsqueeze(0).expand(4, *x.shape)).mean(0)


def _call_export_nir(model, tmp_path):
    pytest.importorskip("nir")
    from edgesnn.export.nir_export import export_nir

    export_nir(model, tmp_path / "m.nir")


def _call_chain_model(model, tmp_path):
    from edgesnn.planner import ChainModel

    ChainModel(model)


def _call_predict_peak(model, tmp_path):
    from edgesnn.planner.bptt_peak import predict_peak

    predict_peak(model, (2, 8, 8), 4, 2)


def _call_evaluate(model, tmp_path):
    from edgesnn.training.data import Split
    from edgesnn.training.loop import evaluate

    evaluate(model, Split(torch.rand(6, 2, 8, 8), torch.arange(6) % 10), batch_size=4)


@pytest.mark.parametrize("call", [_call_export_nir, _call_chain_model, _call_predict_peak, _call_evaluate],
                         ids=["export_nir", "ChainModel", "predict_peak", "evaluate"])
def test_a_frozen_batchnorm_stays_frozen(call, tmp_path):
    torch.manual_seed(0)
    model = _Net()
    model.train()
    bn = model.body[0].module[1]
    bn.eval()
    call(model, tmp_path)
    assert _frozen(model) == ["body.0.module.1"] and model.training
    mean = bn.running_mean.clone()
    model(torch.rand(3, 2, 8, 8))
    assert torch.equal(bn.running_mean, mean)  # its statistics did not move in the next training forward


def _plan(tmp_path):
    from edgesnn.devices import load_device
    from edgesnn.planner import make_plan

    model = build_model("mlp", (64,), 10, 4, neuron="lif", node={"backend": "reference"})
    return lambda: make_plan(model, load_device("raspberry-pi-4-4gb"), 4, 8)


def _chain_with_an_unknown_module(tmp_path):
    from edgesnn.planner import ChainModel

    class WithGELU(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_shape = (16,)
            self.body = nn.Sequential(nn.Linear(16, 16), nn.GELU(), LIF())  # (GELU: measured by a probe)

    model = WithGELU()
    return lambda: ChainModel(model)


def _chain_with_a_dropout(tmp_path):
    from edgesnn.planner import ChainModel

    class WithDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.in_shape = (16,)
            self.body = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.RReLU(), LIF())  # (measured: both draw)

    model = WithDropout()
    return lambda: ChainModel(model)


def _onnx_step(tmp_path):
    pytest.importorskip("onnx")
    from edgesnn.export.onnx_step import export_onnx_step

    model = build_model("mlp", (16,), 4, 4, neuron="revlif", hidden=(8,))
    return lambda: export_onnx_step(model, tmp_path / "step", batch_size=2)


@pytest.mark.parametrize("prepare", [_plan, _chain_with_an_unknown_module, _chain_with_a_dropout, _onnx_step],
                         ids=["make_plan", "ChainModel", "ChainModel-Dropout", "export_onnx_step"])
def test_planning_and_exporting_leave_the_global_random_stream(prepare, tmp_path):
    call = prepare(tmp_path)  # (building the model draws its initial weights: before the seed)
    torch.manual_seed(0)
    expect = torch.rand(4)
    torch.manual_seed(0)
    call()
    assert torch.equal(torch.rand(4), expect)


def test_importing_the_ops_leaves_the_torch_triton_logger_level(tmp_path):
    # the ops quiet torch's "Triton not available" warnings only while they register
    import subprocess
    import sys

    code = ("import logging; log = logging.getLogger('torch._library.triton'); log.setLevel(logging.INFO); "
            "import edgesnn.kernels.custom_ops; print(logging.getLevelName(log.level))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "INFO", out.stderr[-2000:]


def test_the_training_graph_export_leaves_onnxruntimes_logger_severity(tmp_path, monkeypatch):
    # onnxruntime has no getter for its process-wide severity: setting it cannot be undone
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxruntime.training")
    from edgesnn.export.onnx_training import export_onnx_training

    calls = []
    monkeypatch.setattr(ort, "set_default_logger_severity", lambda level: calls.append(level))
    export_onnx_training(build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,)), tmp_path / "train", batch_size=4)
    assert (tmp_path / "train" / "manifest.json").is_file() and calls == []


def test_a_planner_probe_does_not_rewind_another_threads_random_stream():
    # the probes draw from generators of their own: saving and restoring the global stream around
    # them (the first way tried) gave a thread drawing meanwhile the same numbers again
    import threading

    from edgesnn.planner.memory_model import _reference_factor

    stop = threading.Event()

    def probe_meanwhile():
        node = LIF()
        while not stop.is_set():
            _reference_factor(node, torch.float32)

    prober = threading.Thread(target=probe_meanwhile)
    prober.start()
    try:
        draws = [float(torch.rand(())) for _ in range(10000)]
    finally:
        stop.set()
        prober.join()
    assert len(set(draws)) >= 9980  # float32 draws: a few may collide by chance, a rewind repeats many
