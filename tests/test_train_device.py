"""``edgesnn train --device auto|cpu|cuda``: device choice, one-line errors, and the code path that
moves the model, the batches and the loss (exercised with ``device="cpu"``; a GPU run uses the same
lines with ``cuda``)."""

import pytest
import torch
from torch import nn

from edgesnn.cli import main
from edgesnn.errors import UsageError
from edgesnn.training import TrainConfig, train
from edgesnn.training.device import check_backend_device, resolve_device

NO_CUDA = not torch.cuda.is_available()


def test_resolve_device_choices(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UsageError, match="--device: expected one of auto, cpu, cuda"):
        resolve_device("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_error(capsys):
    with pytest.raises(UsageError, match=r"--device cuda: no CUDA device available .*use --device cpu"):
        resolve_device("cuda")
    assert main(["train", "--device", "cuda", "--epochs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgesnn train: error: --device cuda: no CUDA device available")
    assert "\n" not in err and "Traceback" not in err


def test_backend_must_fit_the_device(capsys):
    with pytest.raises(UsageError, match="--backend cuda runs CUDA tensors.*--device cuda"):
        check_backend_device("cuda", torch.device("cpu"))
    with pytest.raises(UsageError, match="--backend numba runs CPU tensors"):
        check_backend_device("numba", torch.device("cuda"))
    for backend in ("auto", "torch", "reference"):
        check_backend_device(backend, torch.device("cpu"))
        check_backend_device(backend, torch.device("cuda"))
    assert main(["train", "--device", "cpu", "--backend", "cuda", "--epochs", "1", "--no-progress"]) == 2
    assert "--backend cuda runs CUDA tensors" in capsys.readouterr().err


def test_train_moves_model_data_and_loss_to_the_device(monkeypatch):
    """Every ``.to(device)`` of the loop goes to the resolved device: the model, the loss, each
    training and evaluation batch (inputs and labels)."""
    moved_modules, moved_tensors = [], []
    orig_module_to, orig_tensor_to = nn.Module.to, torch.Tensor.to

    def module_to(self, *args, **kwargs):
        moved_modules.append((type(self).__name__, args[0] if args else kwargs.get("device")))
        return orig_module_to(self, *args, **kwargs)

    def tensor_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device):
            moved_tensors.append((tuple(self.shape), args[0]))
        return orig_tensor_to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", module_to)
    monkeypatch.setattr(torch.Tensor, "to", tensor_to)
    cfg = TrainConfig(epochs=1, timesteps=2, batch_size=128)
    report = train(cfg, progress=False, log=lambda s: None, device="cpu")
    monkeypatch.undo()
    assert 0.0 <= report["test_accuracy"] <= 1.0
    names = [n for n, _ in moved_modules]
    assert "SpikingClassifier" in names and "CrossEntropyLoss" in names
    assert all(torch.device(d) == torch.device("cpu") for _, d in moved_modules)
    assert moved_tensors and all(d == torch.device("cpu") for _, d in moved_tensors)
    # inputs and labels of the training batches and of the evaluation batches
    assert any(len(shape) == 1 for shape, _ in moved_tensors) and any(len(shape) > 1 for shape, _ in moved_tensors)


def test_cli_device_cpu_trains_like_the_default(tmp_path, capsys):
    args = ["train", "--epochs", "1", "--timesteps", "2", "--no-progress"]
    assert main(args + ["--device", "cpu", "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "final test accuracy" in out and "cpu)" in out
    report_default = train(TrainConfig(epochs=1, timesteps=2), progress=False, log=lambda s: None)
    import json

    report_cpu = json.loads((tmp_path / "a.json").read_text())
    assert report_cpu["test_accuracy"] == report_default["test_accuracy"]


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
def test_cuda_trains_digits_like_cpu():
    cfg = dict(epochs=2, timesteps=2)
    cpu = train(TrainConfig(**cfg), progress=False, log=lambda s: None, device="cpu")
    gpu = train(TrainConfig(**cfg), progress=False, log=lambda s: None, device="cuda")
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 0.03


def test_batch_of_one_needs_no_batchnorm(capsys):
    """BatchNorm cannot train on one sample: batch 1 with it is refused up front (it used to skip
    every batch and report loss 0); without BatchNorm a batch of one trains."""
    with pytest.raises(UsageError, match="batch_size: BatchNorm needs at least 2 samples"):
        TrainConfig(batch_size=1).validate()
    assert main(["train", "--batch-size", "1", "--epochs", "1", "--no-progress"]) == 2
    assert "--batch-size: BatchNorm needs at least 2" in capsys.readouterr().err
    logs = []
    train(TrainConfig(batch_size=1, batchnorm=False, epochs=1), progress=False, log=logs.append, max_steps=3)
    loss = float(next(line for line in logs if " loss " in line).split(" loss ")[1].split()[0])
    assert loss > 0.1
