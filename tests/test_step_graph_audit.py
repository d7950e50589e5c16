"""``--format onnx-step``: one exported step, run by plain ONNX Runtime, against the same step in PyTorch.

Complements ``test_export_step.py`` (MLP / conv net with BatchNorm, LIF / RevLIF, batch 8, SGD
momentum and AdamW over 20 steps) with the configurations it leaves out, each checked per
parameter on one step (plain SGD at lr 1: ``old - new`` is the gradient): no BatchNorm, RevLIF
with 4 groups, mixed neuron lists, soft reset, float mode, other surrogates, batch 1, odd T;
SGD with Nesterov and weight decay (momentum buffers included); AdamW's bias correction; and the
optimizer settings ``torch.optim`` refuses, refused at export.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _model(name, neuron, T, batchnorm=True, node=None, revlif=None, classes=4):
    from edgesnn.models import build_model

    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", (12,), classes, T, neuron=neuron, hidden=(8, 8), batchnorm=batchnorm, node=node,
                            revlif=revlif)
    else:
        model = build_model("convnet", (2, 5, 6), classes, T, neuron=neuron, channels=(4, 4), batchnorm=batchnorm,
                            node=node, revlif=revlif)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial frozen statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


class _Step:
    """``step.onnx`` in a plain ``InferenceSession``, fed by name; the carried values kept here."""

    def __init__(self, model, out, batch, optimizer, lr, **kw):
        from edgesnn.export.onnx_step import export_onnx_step

        self.m = export_onnx_step(model, out, batch, optimizer, lr, **kw)
        with np.load(out / "init.npz") as npz:
            self.values = {k: npz[k] for k in npz.files}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(out / "step.onnx"), opts, providers=["CPUExecutionProvider"])
        self.start = dict(self.values)

    def __call__(self, x, y, lr):
        feed = dict(self.values, input=x.numpy(), labels=y.numpy(), lr=np.array(lr, np.float32))
        names = [o.name for o in self.sess.get_outputs()]
        out = dict(zip(names, self.sess.run(None, {i.name: feed[i.name] for i in self.sess.get_inputs()})))
        for inp, o in self.m.carried:
            self.values[inp] = out[o]
        return out


def _batch(model, B, classes, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, *model.in_shape, generator=g) * scale, torch.randint(0, classes, (B,), generator=g)


GRAD_CASES = [  # (model, neuron, T, batch, batchnorm, node kwargs, revlif kwargs)
    ("mlp", "revlif:4", 3, 1, False, None, None),
    ("convnet", ["lif", "revlif"], 2, 3, True, {"v_reset": None, "surrogate": "atan"}, None),
    ("convnet", "revlif:4", 4, 2, False, {"surrogate": "erf", "detach_reset": True}, None),
    ("mlp", ["revlif", "lif"], 6, 3, True, {"decay_input": False, "surrogate": "piecewise_quadratic"}, None),
    ("mlp", "revlif", 4, 3, True, {"v_reset": None}, {"mode": "float", "alpha": 0.3, "beta": 0.7}),
    ("convnet", "lif", 1, 1, False, {"tau": 3.0, "v_threshold": 0.5, "v_reset": -0.5, "surrogate": "superspike"}, None),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[f"{c[0]}-{c[1]}-T{c[2]}-B{c[3]}-{'bn' if c[4] else 'nobn'}"
                                                  for c in GRAD_CASES])
def test_one_step_gradients_match_autograd(tmp_path, case):
    """Loss and every parameter's gradient of one exported step (``old - new`` at plain SGD, lr 1)
    against autograd on the eval-mode model: no batch-size or time scaling, no sign slip, no
    parameter left out; the RevLIF reconstruction check is 0 in exact mode."""
    from edgesnn.export.prepare import export_copy

    name, neuron, T, B, bn, node, revlif = case
    model = _model(name, neuron, T, bn, node, revlif)
    step = _Step(model, tmp_path / "art", B, "sgd", 1.0, momentum=0.0)
    assert sorted(step.m.trainable) == sorted(n for n, _ in model.named_parameters())
    x, y = _batch(model, B, 4, seed=1)
    out = step(x, y, 1.0)
    ref = export_copy(model)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    assert abs(float(out["loss"]) - loss.item()) < 1e-5
    exact = revlif is None or revlif.get("mode", "exact") == "exact"
    assert float(out["recon_error"]) == 0.0 if exact else float(out["recon_error"]) < 1e-4
    nonzero = 0
    for n, p in ref.named_parameters():
        grad = step.start[n] - out[f"new/{n}"]
        np.testing.assert_allclose(grad, p.grad.numpy(), atol=2e-6, rtol=1e-4, err_msg=n)
        nonzero += bool(p.grad.abs().max() > 0)
    assert nonzero >= len(step.m.trainable) - 2  # the comparison is not vacuous


def test_sgd_nesterov_weight_decay_matches_torch(tmp_path):
    """Three steps of SGD with Nesterov momentum and weight decay: parameters and momentum buffers."""
    from edgesnn.export.prepare import export_copy

    model = _model("convnet", "revlif", 4)
    lr = 0.1
    step = _Step(model, tmp_path / "art", 3, "sgd", lr, momentum=0.5, weight_decay=0.1, nesterov=True)
    ref = export_copy(model)
    params = dict(ref.named_parameters())
    opt = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.5, weight_decay=0.1, nesterov=True)
    for k in range(3):
        x, y = _batch(model, 3, 4, seed=10 + k)
        out = step(x, y, lr)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        opt.step()
        for n, p in params.items():
            np.testing.assert_allclose(out[f"new/{n}"], p.detach().numpy(), atol=1e-6, err_msg=f"step {k} {n}")
            np.testing.assert_allclose(out[f"new/{n}.momentum_buffer"], opt.state[p]["momentum_buffer"].numpy(),
                                       atol=1e-5, err_msg=f"step {k} {n} momentum")


def test_adamw_bias_correction_matches_torch(tmp_path):
    """AdamW's bias corrections were computed in float32 inside the graph: ``1 - 0.999**1`` there is
    1.3e-5 off, so every early update was 6.4e-6 x lr off torch.optim.AdamW's (float64 scalars).
    At lr 1 the first steps' updates must agree to float32 rounding wherever the gradient is not
    tiny (Adam's normalisation turns a 1e-9 rounding difference of a near-zero gradient into a
    full step, so those elements are left out); the step count matches too."""
    from edgesnn.export.prepare import export_copy

    model = _model("mlp", "revlif", 4)
    lr = 1.0
    step = _Step(model, tmp_path / "art", 4, "adamw", lr)
    ref = export_copy(model)
    params = dict(ref.named_parameters())
    opt = torch.optim.AdamW(ref.parameters(), lr=lr)
    for k in range(2):
        x, y = _batch(model, 4, 4, seed=20 + k)
        out = step(x, y, lr)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(x), y).backward()
        before = {n: p.grad.clone() for n, p in params.items()}
        opt.step()
        assert float(out["new/optimizer.step"]) == float(opt.state[params[step.m.trainable[0]]]["step"]) == k + 1
        if k:  # the second step's gradients differ by the first step's rounding: check the first only
            break
        checked = 0
        for n, p in params.items():
            mask = before[n].abs().numpy() > 1e-3
            diff = np.abs(out[f"new/{n}"] - p.detach().numpy())[mask]
            checked += diff.size
            assert diff.size == 0 or diff.max() <= 5e-7, (n, float(diff.max()))
        assert checked > 20


def test_optimizer_settings_torch_refuses_are_refused():
    """The Python API took a NaN or negative momentum, a negative or infinite weight decay, Nesterov
    without momentum (or with AdamW) and bad betas/eps, and baked them into the graph (NaN weights on
    the device, or silently another optimizer); each is now a one-line ExportError."""
    from edgesnn.export.onnx_step import build_step_program, export_onnx_step
    from edgesnn.export.prepare import ExportError

    model = _model("mlp", "lif", 2)
    for kw, words in ((dict(momentum=float("nan")), r"momentum: expected a number in \[0, 1\)"),
                      (dict(momentum=-0.5), "momentum: expected"),
                      (dict(momentum=1.5), r"momentum: expected a number in \[0, 1\)"),  # (was baked in: diverges)
                      (dict(betas="not betas"), "betas: expected two numbers in"),  # (ignored with SGD before)
                      (dict(eps=float("nan")), "eps: expected a finite number > 0"),
                      (dict(momentum=None), r"momentum: expected .*, got None"),  # was float(None)'s TypeError
                      (dict(weight_decay=-1.0), "weight_decay: expected a finite number >= 0"),
                      (dict(weight_decay=float("inf")), "weight_decay: expected"),
                      (dict(momentum=0.0, nesterov=True), "nesterov: needs optimizer 'sgd' with momentum > 0"),
                      (dict(optimizer="adamw", nesterov=True), "nesterov: needs"),
                      (dict(optimizer="adamw", betas=(0.9, 1.0)), "betas: expected two numbers in"),
                      (dict(optimizer="adamw", eps=0.0), "eps: expected a finite number > 0")):
        with pytest.raises(ExportError, match=words):
            build_step_program(model, 2, **kw)
    from edgesnn.export.onnx_training import export_onnx_training

    for lr in (1e39, 1e-50, -1.0, float("nan")):  # inf / 0 as a float32, negative, NaN
        for export in (export_onnx_step, export_onnx_training):  # the legacy export wrote them to its manifest
            with pytest.raises(ExportError, match="learning_rate: expected a number > 0 that float32 holds"):
                export(model, "/nonexistent/never-written", 2, "sgd", lr)
    prog = build_step_program(model, 2, "sgd", momentum=0.0, weight_decay=0.0)  # the valid edge values still pass
    assert prog.opt_state == []
