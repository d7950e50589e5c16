"""The onnx-step runner against PyTorch eager on one model: the shared check of the layer tests."""

from __future__ import annotations

import numpy as np
import torch


def largest_chunk(T: int) -> int:
    """The largest of 4, 2, 1 dividing ``T``: the tests export with it, so every chunk size stays covered."""
    return 4 if T % 4 == 0 else (2 if T % 2 == 0 else 1)


def runner_matches_torch(model, art_dir, classes: int, steps: int = 5, batch: int = 4, lr: float = 0.05, ref=None,
                         export: bool = True, event: bool = False):
    """Run ``steps`` runner steps on ``art_dir`` and the same SGD (momentum 0.9) steps in PyTorch eager
    on ``ref`` (default: ``export_copy(model)``): the first step's gradients agree to 2e-5 and the
    first layer's are not all zero, every loss to 1e-5, the RevLIF reconstruction error is 0, and
    the final parameters agree to 1e-5. ``export``: write ``art_dir`` first (onnx-step, SGD momentum
    0.9; otherwise it was exported with those settings); ``event``: the input is ``[B, T, ...]``
    frames (the model takes them time-major). Returns ``(session, manifest, initial values, ref)``."""
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    if export:
        export_onnx_step(model, art_dir, batch, "sgd", lr, momentum=0.9, event=event,
                         chunk=largest_chunk(int(model.timesteps)))
    manifest = validate_artifact_dir(art_dir)
    with np.load(art_dir / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = StepSession(import_plain_ort(), art_dir, manifest, start, threads=1, lean_memory=True)
    sess.set_lr(lr)
    ref = export_copy(model) if ref is None else ref
    params = dict(ref.named_parameters())
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for k in range(steps):
        if event:  # spike counts 0-2 per frame
            shape = (batch, model.timesteps, *model.in_shape)
            x = (torch.rand(shape, generator=g) < 0.3).float() * torch.randint(1, 3, shape, generator=g)
        else:
            x = torch.rand(batch, *model.in_shape, generator=g) * 2.0
        y = torch.randint(0, classes, (batch,), generator=g)
        loss, _, err = sess.step(x.numpy(), y.numpy())
        out = torch.nn.functional.cross_entropy(ref(x.transpose(0, 1) if event else x), y)
        opt.zero_grad()
        out.backward()
        if k == 0:  # first SGD step: (start - new) / lr is the gradient
            got = sess.values()
            for n, p in params.items():
                np.testing.assert_allclose((start[n] - got[n]) / lr, p.grad.numpy(), atol=2e-5, err_msg=n)
            assert params[manifest.trainable[0]].grad.abs().max() > 0, "the first layer's gradient is zero: vacuous"
        opt.step()
        assert err == 0.0 and abs(loss - out.item()) < 1e-5, (k, loss, out.item(), err)
    got = sess.values()
    diffs = {n: float(np.abs(got[n] - p.detach().numpy()).max()) for n, p in params.items()}
    assert max(diffs.values()) < 1e-5, diffs
    return sess, manifest, start, ref


def small_runner_case(tmp, neuron: str, samples: int, batch: int = 8):
    """``tmp/art``: a small MLP (16 -> 8 -> 4, T = 2, seed 0) exported as onnx-step (batch ``batch``, SGD
    lr 0.05 momentum 0.9), and ``tmp/data.npz``: ``samples`` seeded samples in [0, 2). Returns ``tmp``."""
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, neuron=neuron, hidden=(8,)).eval()
    export_onnx_step(model, tmp / "art", batch, "sgd", 0.05, momentum=0.9)
    g = np.random.default_rng(0)
    np.savez(tmp / "data.npz", x=(g.random((samples, 16)) * 2).astype(np.float32), y=g.integers(0, 4, samples))
    return tmp
