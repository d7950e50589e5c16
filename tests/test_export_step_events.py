"""``--format onnx-step`` for a model trained on event data (N-MNIST, DVS Gesture, SHD): T frames
per sample instead of one frame repeated over T.

* The step graph takes ``x [B, T, *in_shape]`` (the manifest's ``in_shape`` is ``[T, *in_shape]``,
  so the device data is ``x [N, T, ...]``, the layout ``edgesnn train``'s event loaders give);
  the layers before the first spiking layer run at every step, inside the loops. 5 runner steps
  match PyTorch eager fed ``[T, B, ...]`` (LIF and RevLIF, MLP and conv net, T = 8 and 5: chunks
  of 4 and of 1), RevLIF reconstruction exactly 0; ``eval.onnx`` gives the model's logits.
* From the CLI: train on SHD files in the real format, export (the format used to refuse such a
  checkpoint), fine-tune with ``edgesnn-device`` on the loader's frames.
* The inference exports (``onnx``, ``torchscript``) of such a model take the same ``[B, T, ...]``
  frames and give the model's logits; ``onnx-training`` (one frame repeated) still refuses it
  (tests/test_export_step.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _step_compare import runner_matches_torch
from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime


def _runner_matches_torch_on_frames(model, art, T, shape, batch=4):
    from edgesnn.export.runner import import_plain_ort

    sess, manifest, start, ref = runner_matches_torch(model, art, 4, batch=batch, event=True)
    assert manifest.in_shape == [T, *shape]  # one sample: T frames
    got = sess.values()
    ort = import_plain_ort()
    g = torch.Generator().manual_seed(2)
    # the eval graph on frames: the trained model's logits
    ev = ort.InferenceSession(str(art / "eval.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(batch, T, *shape, generator=g) * 4.0
    logits = ev.run(None, {**{n: got[n] for n in manifest.trainable}, **{n: start[n] for n in manifest.frozen},
                           "input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(logits, ref(x.transpose(0, 1)).numpy(), atol=1e-4)
    assert logits.std(0).max() > 1e-4, "every sample gave the same logits (no spikes): the checks would be vacuous"
    # frames that differ over T are not one frame repeated: the step depends on every frame
    x2 = x.clone()
    x2[:, -1] += 5.0
    assert not np.allclose(ev.run(None, {**{n: got[n] for n in manifest.trainable}, **{n: start[n] for n in manifest.frozen},
                                         "input": x2.numpy()})[0], logits)


CASES = [("mlp", "lif", 8), ("mlp", "revlif", 5), ("convnet", "revlif", 8), ("convnet", "lif", 5)]


@pytest.mark.parametrize("name,neuron,T", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_runner_steps_on_frames_match_torch(tmp_path, name, neuron, T):
    from edgesnn.models import build_model

    torch.manual_seed(0)
    shape = (16,) if name == "mlp" else (2, 6, 6)
    widths = {"hidden": (8, 8)} if name == "mlp" else {"channels": (4, 4)}
    model = build_model(name, shape, 4, T, neuron=neuron, **widths).eval()
    with torch.no_grad():  # larger BatchNorm scales: every spiking layer fires, so the logits depend on the input
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(3.0)
                m.bias.fill_(1.0)
    _runner_matches_torch_on_frames(model, tmp_path / "art", T, shape)


def test_cli_trains_on_events_exports_and_fine_tunes_on_the_device(tmp_path, capsys):
    pytest.importorskip("tonic")
    pytest.importorskip("h5py")
    from test_datasets_events import make_shd

    from edgesnn.cli import main
    from edgesnn.training.data import load_dataset

    make_shd(tmp_path)
    ck = tmp_path / "shd.ckpt"
    assert main(["train", "--dataset", "shd", "--data-dir", str(tmp_path), "--model", "mlp", "--neuron", "revlif",
                 "-T", "4", "--epochs", "1", "--batch-size", "8", "--no-progress", "--device", "cpu",
                 "--checkpoint", str(ck)]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp_path / "art"),
                 "--batch-size", "8"]) == 0
    assert "device data x [N, 4, 700]: T frames per sample" in capsys.readouterr().out
    data = load_dataset("shd", str(tmp_path), timesteps=4)
    np.savez(tmp_path / "device.npz", x=data.train.x.numpy().astype(np.float32), y=data.train.y.numpy())
    r = _device(tmp_path / "art", "--data", tmp_path / "device.npz", "--epochs", "2", "--out", tmp_path / "ft")
    assert r.returncode == 0 and "epoch 2/2" in r.stdout, r.stderr[-2000:]
    with np.load(tmp_path / "ft" / "params.npz") as npz, np.load(tmp_path / "art" / "init.npz") as init:
        assert any(not np.array_equal(npz[k], init[k]) for k in npz.files)  # it trained
    # one frame per sample (the static layout) is refused in one line naming the shape
    np.savez(tmp_path / "static.npz", x=data.train.x.numpy()[:, 0].astype(np.float32), y=data.train.y.numpy())
    r = _device(tmp_path / "art", "--data", tmp_path / "static.npz", "--out", tmp_path / "ft2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "[N, 4, 700]" in r.stderr, r.stderr


def _device(*args):
    """``edgesnn-device ARGS`` in a fresh interpreter (the runner checks that it imports no torch)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgesnn.export.runner", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_inference_exports_take_frames(tmp_path, capsys):
    import json
    import warnings

    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.cli import main
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.torchscript import METADATA_FILE, load_torchscript
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("convnet", (2, 6, 6), 4, 3, neuron="revlif", channels=(4, 4)).eval()
    ck = save_checkpoint(tmp_path / "ev.ckpt", model.config, model.state_dict(), epoch=1,
                         train_config={"dataset": "dvsgesture", "timesteps": 3})
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "input [B, 3, 2, 6, 6]: T frames per sample" in capsys.readouterr().out
    assert main(["export", "--checkpoint", str(ck), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    ort = import_plain_ort()
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["in_shape"]) == [3, 2, 6, 6] and "frame t at time step t" in meta["input"]
    ts = load_torchscript(tmp_path / "m.pt")
    files = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files[METADATA_FILE])["in_shape"] == [3, 2, 6, 6]
    g = torch.Generator().manual_seed(2)
    for batch in (2, 5):  # a dynamic batch
        x = torch.rand(batch, 3, 2, 6, 6, generator=g) * 4.0
        with torch.no_grad():
            want = model(x.transpose(0, 1)).numpy()
            got_ts = ts(x).numpy()
        np.testing.assert_allclose(sess.run(None, {"input": x.numpy()})[0], want, atol=1e-4)
        np.testing.assert_allclose(got_ts, want, atol=1e-5)
    assert np.abs(want - want[0]).max() > 1e-5  # samples differ: the check is not vacuous
    with pytest.raises(torch.jit.Error, match=r"expected \[B, 3, 2, 6, 6\]"):
        ts(torch.rand(2, 2, 6, 6))  # one frame per sample: refused, not repeated
