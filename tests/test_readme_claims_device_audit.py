"""README claims of "On-device fine-tuning" / "Training on your data" that the code did not keep.

* ``export_onnx_step`` "refuses, in one line, the settings ``torch.optim`` refuses (... betas outside
  [0, 1), eps <= 0)": it took no ``betas`` / ``eps`` at all (a ``TypeError``), so an AdamW export
  always baked in torch's defaults. It now takes both, checks them, and the graph computes
  ``torch.optim.AdamW`` with them.
* "Every export format refuses a checkpoint with NaN or Inf weights": ``--format checkpoint
  --params`` copied a NaN BatchNorm statistic (a buffer the device's ``params.npz`` need not hold)
  into the new checkpoint, which every other export then refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgesnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgesnn.cli import main  # noqa: E402
from edgesnn.export.onnx_step import export_onnx_step  # noqa: E402
from edgesnn.export.prepare import ExportError, export_copy  # noqa: E402
from edgesnn.models import build_model  # noqa: E402

from _errors import one_line_error  # noqa: E402


def _mlp(batchnorm: bool = False) -> torch.nn.Module:
    """A small digits-shaped LIF MLP (16 -> 8 -> 4, T = 2), seed 0."""
    torch.manual_seed(0)
    return build_model("mlp", (16,), 4, 2, neuron="lif", hidden=(8,), batchnorm=batchnorm).eval()


# 1. AdamW betas / eps reach the graph, and bad ones are refused -------------------------------------------


@pytest.mark.parametrize("kw,needle", [({"betas": (0.9, 1.0)}, "betas: expected two numbers in [0, 1)"),
                                       ({"betas": (-0.1, 0.9)}, "betas: expected two numbers in [0, 1)"),
                                       ({"betas": (0.9,)}, "betas: expected two numbers in [0, 1)"),
                                       ({"eps": 0.0}, "eps: expected a finite number > 0"),
                                       ({"eps": float("nan")}, "eps: expected a finite number > 0")])
def test_export_onnx_step_refuses_adamw_settings_torch_refuses(tmp_path, kw, needle):
    one_line_error(ExportError, lambda: export_onnx_step(_mlp(), tmp_path / "a", 4, "adamw", 0.01, **kw), needle)
    assert not (tmp_path / "a").exists()  # refused before anything is written


def _torch_adamw(model, xs, ys, lr, **kw) -> dict:
    """Parameters after one ``torch.optim.AdamW`` step per batch on ``export_copy(model)``."""
    ref = export_copy(model)
    opt = torch.optim.AdamW(ref.parameters(), lr=lr, **kw)
    for x, y in zip(xs, ys):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
    return {n: p.detach().numpy() for n, p in ref.named_parameters()}


def test_adamw_betas_and_eps_are_the_graphs(tmp_path):
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    model, lr = _mlp(), 0.02
    hp = {"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.05}
    manifest = export_onnx_step(model, tmp_path / "art", 4, "adamw", lr, **hp)
    assert manifest.hyperparameters == {"weight_decay": 0.05, "beta1": 0.5, "beta2": 0.9, "eps": 1e-3}
    g = torch.Generator().manual_seed(1)
    xs = [torch.rand(4, 16, generator=g) * 2 for _ in range(3)]
    ys = [torch.randint(0, 4, (4,), generator=g) for _ in range(3)]
    with np.load(tmp_path / "art" / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = StepSession(import_plain_ort(), tmp_path / "art", validate_artifact_dir(tmp_path / "art"), start,
                       threads=1, lean_memory=True)
    sess.set_lr(lr)
    for x, y in zip(xs, ys):
        sess.step(x.numpy(), y.numpy())
    got = sess.values()
    want = _torch_adamw(model, xs, ys, lr, **hp)
    default = _torch_adamw(model, xs, ys, lr, weight_decay=0.05)
    gap = max(float(np.abs(want[n] - default[n]).max()) for n in want)
    assert gap > 1e-3, gap  # these betas / eps move the weights elsewhere than the defaults would
    for n in want:
        np.testing.assert_allclose(got[n], want[n], atol=1e-5, err_msg=n)


# 2. --format checkpoint refuses a non-finite checkpoint like every other format -------------------------


def test_fold_refuses_a_checkpoint_with_a_nan_buffer(tmp_path, capsys):
    model = _mlp(batchnorm=True)
    state = model.state_dict()
    params = {n: p.detach().numpy() for n, p in model.named_parameters()}  # what params.npz holds: no buffers
    np.savez(tmp_path / "params.npz", **params)
    bn = next(n for n in state if n.endswith("running_var"))
    state[bn][0] = float("nan")
    ck = save_checkpoint(tmp_path / "nan.ckpt", model.config, state)
    out = tmp_path / "folded.ckpt"
    rc = main(["export", "--checkpoint", str(ck), "--format", "checkpoint", "--params", str(tmp_path / "params.npz"),
               "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err == (f"edgesnn export: error: --checkpoint {ck}: buffer {bn} holds 1 NaN or Inf value (a diverged "
                   "training run?); refusing to export it")
    assert not out.exists()


def test_fold_of_a_finite_checkpoint_still_works(tmp_path, capsys):
    model = _mlp(batchnorm=True)
    ck = save_checkpoint(tmp_path / "ok.ckpt", model.config, model.state_dict())
    params = {n: p.detach().numpy() + 1.0 for n, p in model.named_parameters()}
    np.savez(tmp_path / "params.npz", **params)
    out = tmp_path / "folded.ckpt"
    assert main(["export", "--checkpoint", str(ck), "--format", "checkpoint", "--params",
                 str(tmp_path / "params.npz"), "--out", str(out)]) == 0
    folded = load_checkpoint(out)["model_state"]
    for n, v in params.items():
        np.testing.assert_array_equal(folded[n].numpy(), v)
