"""Shared helpers for the export tests, and the torch-free artifact-validation tests."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch



from edgesnn.models import build_model  # noqa: E402
T = 4
IN_FEATURES = 64
CONV_SHAPE = (1, 8, 8)
CLASSES = 10

CASES = [  # (model, neuron, surrogate): LIF and RevLIF, MLP and conv, both surrogates
    ("mlp", "lif", "sigmoid"),
    ("mlp", "revlif", "atan"),
    ("convnet", "lif", "atan"),
    ("convnet", "revlif", "sigmoid"),
]


def _importable(*modules: str) -> bool:
    try:
        for name in modules:
            importlib.import_module(name)
    except Exception:
        return False
    return True


def ort_training_available() -> bool:
    return _importable("onnx", "onnxruntime.training.artifacts")


needs_ort = pytest.mark.skipif(
    not ort_training_available(),
    reason="onnxruntime.training not importable (install the extra: pip install -e .[ort])",
)


def onnx_runtime_available() -> bool:
    """onnx and an ONNX Runtime with ``InferenceSession`` (plain onnxruntime, or the training
    build, which serves it too): what ``--format onnx`` / ``onnx-step`` and the device runner use."""
    return _importable("onnx", "onnxruntime") and hasattr(importlib.import_module("onnxruntime"), "InferenceSession")


#: The onnx-step graph, the device runner and inference ONNX: no onnxruntime-training needed (the
#: only ONNX Runtime on Python 3.13, where the dev extras install plain onnxruntime).
needs_onnx_runtime = pytest.mark.skipif(
    not onnx_runtime_available(),
    reason="needs onnx and onnxruntime (pip install -e .[dev], or the onnx and device extras)",
)


def make_model(name: str, neuron: str, surrogate: str, seed: int = 0) -> torch.nn.Module:
    """A tiny trained-looking model: random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    if name == "mlp":
        model = build_model("mlp", (IN_FEATURES,), CLASSES, T, neuron=neuron, hidden=(32, 32), node={"surrogate": surrogate})
    else:
        model = build_model("convnet", CONV_SHAPE, CLASSES, T, neuron=neuron, channels=(4, 8), node={"surrogate": surrogate})
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(1.0, 2.0)
                m.bias.uniform_(0.0, 0.5)
    return model.eval()


def make_batch(name: str, batch: int, seed: int = 1):
    """``(x, y)``: inputs scaled so that every spiking layer fires, and labels."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, IN_FEATURES) if name == "mlp" else (batch, *CONV_SHAPE)
    x = torch.rand(*shape, generator=g) * 2.0
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    return x, y


def write_npz(path, x: torch.Tensor, y: torch.Tensor) -> Path:
    np.savez(path, x=x.numpy().astype(np.float32), y=y.numpy().astype(np.int64))
    return Path(path)


def run_python(code: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of the same (installed) environment."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------- artifact validation (no ORT)


def _fake_artifacts(tmp_path: Path) -> Path:
    from edgesnn.export.artifacts import ARTIFACT_FILES, Manifest, write_manifest

    d = tmp_path / "art"
    d.mkdir()
    for name in ARTIFACT_FILES:
        (d / name).write_bytes(os.urandom(64))
    write_manifest(d, Manifest(model_config={}, batch_size=4, in_shape=[64], num_classes=10, timesteps=4,
                               trainable=["w"], frozen=[]))
    return d


def test_validate_accepts_complete_dir(tmp_path):
    from edgesnn.export.artifacts import validate_artifact_dir

    m = validate_artifact_dir(_fake_artifacts(tmp_path))
    assert m.batch_size == 4 and m.time_loop == "unrolled" and set(m.files) == {
        "model.onnx", "training_model.onnx", "eval_model.onnx", "optimizer_model.onnx", "checkpoint"}


@pytest.mark.parametrize("victim", ["training_model.onnx", "checkpoint", "manifest.json"])
def test_missing_artifact_file_is_named(tmp_path, victim):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir

    d = _fake_artifacts(tmp_path)
    (d / victim).unlink()
    with pytest.raises(ArtifactError, match=f"missing artifact file {victim}"):
        validate_artifact_dir(d)


@pytest.mark.parametrize("victim", ["eval_model.onnx", "checkpoint"])
def test_corrupt_artifact_file_is_named(tmp_path, victim):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir

    d = _fake_artifacts(tmp_path)
    data = bytearray((d / victim).read_bytes())
    data[10] ^= 0xFF
    (d / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=rf"{victim}: corrupt artifact file"):
        validate_artifact_dir(d)


def test_corrupt_manifest_is_named(tmp_path):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir

    d = _fake_artifacts(tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json: corrupt artifact file"):
        validate_artifact_dir(d)
    (d / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not an edgesnn training-artifact manifest"):
        validate_artifact_dir(d)


def test_missing_directory(tmp_path):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir

    with pytest.raises(ArtifactError, match="no such directory"):
        validate_artifact_dir(tmp_path / "nope")


def test_edited_manifest_is_refused(tmp_path):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir

    d = _fake_artifacts(tmp_path)
    data = json.loads((d / "manifest.json").read_text())
    data["learning_rate"] = 50.0  # an edit the graph files' hashes would not show
    (d / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="manifest.json: edited after the export"):
        validate_artifact_dir(d)
    del data["manifest_sha256"]  # an older export without the checksum still loads
    (d / "manifest.json").write_text(json.dumps(data))
    assert validate_artifact_dir(d).learning_rate == 50.0
