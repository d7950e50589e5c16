"""A whole training step as one plain ONNX inference graph (``edgesnn export --format onnx-step``).

``step.onnx`` maps ``(parameters, frozen buffers, optimizer state, x, labels, lr)`` to
``(new parameters, new optimizer state, loss, correct, recon_error)``. It runs on plain
``onnxruntime`` (any ``InferenceSession``; no training build, no torch). Inside:

1. **prefix**: the stateless layers before the first spiking node see the same (direct-encoded)
   input at every step, so they run once on ``[B, ...]``.
2. **forward** ``Scan`` over the ``T`` steps, ``K`` steps per iteration (``K`` = 4, 2 or 1, the
   largest that divides ``T``). Per spiking layer it keeps, for the backward, only:
   LIF: ``h`` (float32, 4 bytes per neuron-step, as the ``torch`` backend saves);
   RevLIF: the spike bit and (exact mode) the bit halving shifted out of the state, packed
   ``K`` steps per byte (2 bits per neuron-step), plus the final state (a loop-carried value).
   The time-averaged logits are accumulated.
3. **loss**: cross-entropy on the mean logits, written as log-softmax x one-hot (its gradient is
   ``(softmax - onehot) / B`` by construction; an exported ``F.cross_entropy`` backward once
   dropped the ``1/B``), and the number of correct predictions.
4. **backward** ``Loop`` over the same chunks, last first (a ``Loop`` rather than a ``Scan``:
   ORT's Scan keeps four buffers per loop-carried value, which for the weight-gradient
   accumulators costs a fixed extra 3x their size once it runs three or more iterations).
   At each step it recomputes the stateless
   layers from the previous spiking layer's output (LIF: ``s = h >= v_th``; RevLIF:
   ``y = alpha * quantize(x) + s`` from the recomputed input and the stored spike bit), then
   back-propagates top-down with the project's own VJPs: :func:`~edgesnn.functional.lif.lif_step_vjp`
   for LIF, and :func:`~edgesnn.functional.revlif.revlif_step_backward` for RevLIF, which walks
   the state back from the final state (inverse and gradient in one pass). Linear, Conv2d
   (stride/padding, dilation 1, groups 1), frozen-statistics BatchNorm, AvgPool2d (kernel =
   stride) and Flatten have explicit VJPs below. Parameter gradients accumulate as loop-carried
   values (Linear/Conv2d weight gradients once per chunk, as one product over its ``K x B`` rows);
   no ``[T, B, N]`` tensor of a RevLIF layer exists anywhere in the graph.
5. **update**: SGD (momentum, Nesterov, weight decay; ``torch.optim.SGD``) or AdamW
   (``torch.optim.AdamW``'s formula).

``recon_error`` verifies the reversible layers: the largest difference between a reconstructed
input and the recomputed one, and between the reconstructed initial state and the fresh state.
It is exactly 0.0 in exact mode (grid arithmetic: floor/round on 2^-16 survive ONNX Runtime bit
for bit); in float mode it is compared with :data:`~edgesnn.functional.revlif_autograd.FLOAT_MODE_TOLERANCE`.
The runner checks it after every step.

BatchNorm uses its running statistics (frozen, as in ``onnx-training``): its statistics are
over ``T x B`` and batch statistics would need every step's input of that layer at once, the
history the reversible graph avoids. Its weight and bias train.

Each piece is traced with ``torch.jit.trace`` (so ``stop_gradient`` takes its eager ``detach``
branch, which the ONNX exporter drops: straight-through rounding then adds an exact 0.0) and
exported with the TorchScript-based exporter at opset 17; the pieces are stitched into one graph
with ``onnx.helper``. File size and export time do not grow with ``T`` (one loop body each way).

Known cost: :func:`~edgesnn.functional.revlif.revlif_step_backward` fills its outputs by slice
assignment (``x[:, i] = ...``); traced, each becomes a ``ScatterND`` on a constant buffer with
index tensors computed every step. It is correct, but it makes RevLIF's session ~25 MB larger
(wide MLP) and its steps slower than a list-and-stack formulation would.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..checkpoint import encode_config
from ..functional.grid import quantize_input, to_grid
from ..functional.lif import lif_charge, lif_fire_reset_values, lif_step_vjp
from ..functional.revlif import RevLIFParams, revlif_step, revlif_step_backward
from ..functional.revlif_autograd import FLOAT_MODE_TOLERANCE
from ..nn import LIF, RevLIF, SeqToANN
from .artifacts import STEP_EVAL_MODEL, STEP_INIT, STEP_MODEL, StepManifest, atomic_write_bytes, write_step_manifest
from .onnx_inference import OPSET, _onnx
from .prepare import ExportError, export_copy

__all__ = ["STEP_OPTIMIZERS", "StepProgram", "build_step_program", "export_onnx_step", "reference_step"]

STEP_OPTIMIZERS = ("sgd", "adamw")


# ----------------------------------------------------------------------------- the model as a plan


@dataclass
class _Leaf:
    kind: str  # linear | conv | bn | pool | flatten | identity
    name: str  # qualified module name (parameter prefix)
    module: nn.Module
    params: List[str] = field(default_factory=list)  # trainable parameter names
    buffers: List[str] = field(default_factory=list)  # frozen tensors it reads


@dataclass
class _Stage:
    leaves: List[_Leaf]  # stateless layers before the node (empty for the first: the prefix)
    kind: str  # lif | revlif
    name: str
    params: object  # LIFParams | RevLIFParams
    x_shape: Tuple[int, ...] = ()  # one step's node input [B, ...]


def _leaf(name: str, m: nn.Module) -> _Leaf:
    if isinstance(m, nn.Linear):
        return _Leaf("linear", name, m, [f"{name}.weight"] + ([f"{name}.bias"] if m.bias is not None else []))
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or tuple(m.dilation) != (1, 1) or not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
            raise ExportError(f"onnx-step: {name}: only Conv2d with groups=1, dilation=1, numeric zero padding is supported")
        return _Leaf("conv", name, m, [f"{name}.weight"] + ([f"{name}.bias"] if m.bias is not None else []))
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if not m.affine or m.running_mean is None:
            raise ExportError(f"onnx-step: {name}: only affine BatchNorm with running statistics is supported")
        return _Leaf("bn", name, m, [f"{name}.weight", f"{name}.bias"], [f"{name}.running_mean", f"{name}.running_var"])
    if isinstance(m, nn.AvgPool2d):
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        s = m.stride if isinstance(m.stride, tuple) else (m.stride, m.stride)
        p = m.padding if isinstance(m.padding, tuple) else (m.padding, m.padding)
        if k != s or p != (0, 0) or m.ceil_mode or m.divisor_override is not None:
            raise ExportError(f"onnx-step: {name}: only AvgPool2d with kernel_size == stride, no padding, floor mode is supported")
        return _Leaf("pool", name, m)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ExportError(f"onnx-step: {name}: only Flatten(1, -1) is supported")
        return _Leaf("flatten", name, m)
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return _Leaf("identity", name, m)
    raise ExportError(f"onnx-step: layer {name} ({type(m).__name__}) has no explicit VJP; supported: Linear, Conv2d, "
                      f"BatchNorm, AvgPool2d, Flatten, Identity/Dropout")


def _plan(model: nn.Module) -> Tuple[List[_Leaf], List[_Stage], List[_Leaf]]:
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise ExportError("onnx-step: expected an edgesnn SpikingClassifier (model.body an nn.Sequential)")
    stages: List[_Stage] = []
    pending: List[_Leaf] = []
    prefix: Optional[List[_Leaf]] = None
    for i, m in enumerate(body):
        name = f"body.{i}"
        if isinstance(m, SeqToANN):
            inner = m.module
            if isinstance(inner, nn.Sequential):
                pending += [_leaf(f"{name}.module.{j}", c) for j, c in enumerate(inner)]
            else:
                pending.append(_leaf(f"{name}.module", inner))
        elif type(m) in (LIF, RevLIF):
            if m.stateful:
                raise ExportError(f"onnx-step: spiking layer {name} is stateful (carries .v across calls); export needs fresh states")
            kind = "lif" if type(m) is LIF else "revlif"
            if prefix is None:
                prefix, leaves = pending, []
            else:
                leaves = pending
            stages.append(_Stage(leaves, kind, name, m.params))
            pending = []
        else:
            raise ExportError(f"onnx-step: layer {name} ({type(m).__name__}) is not supported (LIF, RevLIF and SeqToANN layers only)")
    if not stages:
        raise ExportError("onnx-step: the model has no LIF/RevLIF layer")
    return prefix or [], stages, pending


# ----------------------------------------------------------------------------- explicit layer VJPs


def _leaf_forward(leaf: _Leaf, t: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    m = leaf.module
    if leaf.kind == "linear":
        return F.linear(x, t[f"{leaf.name}.weight"], t.get(f"{leaf.name}.bias"))
    if leaf.kind == "conv":
        return F.conv2d(x, t[f"{leaf.name}.weight"], t.get(f"{leaf.name}.bias"), m.stride, m.padding)
    if leaf.kind == "bn":
        shape = [1, -1] + [1] * (x.dim() - 2)
        invstd = torch.rsqrt(t[f"{leaf.name}.running_var"] + float(m.eps))
        xhat = (x - t[f"{leaf.name}.running_mean"].reshape(shape)) * invstd.reshape(shape)
        return xhat * t[f"{leaf.name}.weight"].reshape(shape) + t[f"{leaf.name}.bias"].reshape(shape)
    if leaf.kind == "pool":
        return F.avg_pool2d(x, m.kernel_size, m.stride)
    if leaf.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    return x


def _weight_grad(leaf: _Leaf, x: torch.Tensor, gy: torch.Tensor, acc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear / Conv2d weight gradient at input ``x`` and output gradient ``gy`` (plus ``acc``)."""
    if leaf.kind == "linear":
        return gy.t().matmul(x) if acc is None else torch.addmm(acc, gy.t(), x)
    m = leaf.module
    kh, kw = tuple(m.kernel_size)
    # a convolution over the batch: channels and batch swap roles
    gw = F.conv2d(x.transpose(0, 1), gy.transpose(0, 1), None, 1, tuple(m.padding), tuple(m.stride)).transpose(0, 1)
    gw = gw[:, :, :kh, :kw]
    return gw if acc is None else acc + gw


def _leaf_vjp(leaf: _Leaf, t: Dict[str, torch.Tensor], x: torch.Tensor, gy: torch.Tensor,
              need_gx: bool = True, defer: bool = False) -> Tuple[Optional[torch.Tensor], Dict[str, object]]:
    """``(grad of the input, {parameter name: gradient})`` of one layer at input ``x``.

    ``defer``: Linear/Conv2d weight gradients come back as ``(x, gy)`` pairs, so that a caller
    can compute them for several time steps in one matrix product (:func:`_weight_grad`).
    """
    m, n = leaf.module, leaf.name
    grads: Dict[str, object] = {}
    if leaf.kind in ("linear", "conv") and defer:
        grads[f"{n}.weight"] = (x, gy)
    elif leaf.kind in ("linear", "conv"):
        grads[f"{n}.weight"] = _weight_grad(leaf, x, gy)
    if leaf.kind == "linear":
        w = t[f"{n}.weight"]
        if f"{n}.bias" in t:
            grads[f"{n}.bias"] = gy.sum(0)
        return (gy.matmul(w) if need_gx else None), grads
    if leaf.kind == "conv":
        w = t[f"{n}.weight"]
        s, p = tuple(m.stride), tuple(m.padding)
        kh, kw = w.shape[2], w.shape[3]
        if f"{n}.bias" in t:
            grads[f"{n}.bias"] = gy.sum((0, 2, 3))
        gx = None
        if need_gx:
            H, W = x.shape[2], x.shape[3]
            oh = H + 2 * p[0] - ((gy.shape[2] - 1) * s[0] + kh)
            ow = W + 2 * p[1] - ((gy.shape[3] - 1) * s[1] + kw)
            gx = F.conv_transpose2d(gy, w, None, s, p, (oh, ow))
        return gx, grads
    if leaf.kind == "bn":
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        invstd = torch.rsqrt(t[f"{n}.running_var"] + float(m.eps))
        xhat = (x - t[f"{n}.running_mean"].reshape(shape)) * invstd.reshape(shape)
        grads[f"{n}.weight"] = (gy * xhat).sum(dims)
        grads[f"{n}.bias"] = gy.sum(dims)
        return (gy * (t[f"{n}.weight"] * invstd).reshape(shape) if need_gx else None), grads
    if leaf.kind == "pool":
        if not need_gx:
            return None, grads
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        N, C, Ho, Wo = gy.shape
        up = gy.reshape(N, C, Ho, 1, Wo, 1).expand(N, C, Ho, k[0], Wo, k[1]).reshape(N, C, Ho * k[0], Wo * k[1])
        up = up * (1.0 / (k[0] * k[1]))
        H, W = x.shape[2], x.shape[3]
        if (H, W) != (Ho * k[0], Wo * k[1]):
            up = F.pad(up, (0, W - Wo * k[1], 0, H - Ho * k[0]))
        return up, grads
    if leaf.kind == "flatten":
        return (gy.reshape(x.shape) if need_gx else None), grads
    return gy, grads


def _block_forward(leaves: Sequence[_Leaf], t, x) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Inputs of every layer (for the VJPs) and the block's output."""
    inputs = []
    for leaf in leaves:
        inputs.append(x)
        x = _leaf_forward(leaf, t, x)
    return inputs, x


def _block_vjp(leaves: Sequence[_Leaf], t, inputs, gy, need_gx: bool = True, defer: bool = False):
    grads: Dict[str, object] = {}
    for i in range(len(leaves) - 1, -1, -1):
        gy, g = _leaf_vjp(leaves[i], t, inputs[i], gy, need_gx or i > 0, defer)
        grads.update(g)
    return gy, grads


# ----------------------------------------------------------------------------- one time step


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    B, C = x.shape[0], x.shape[1]
    return x.reshape(B, groups, (C // groups) * math.prod(x.shape[2:]))


def _node_input(st: _Stage, x: torch.Tensor) -> torch.Tensor:
    """The value a RevLIF layer steps on: grouped, clamped and on the grid in exact mode."""
    xg = _grouped(x, st.params.groups)
    return quantize_input(xg) if st.params.exact else xg


def _initial_state(st: _Stage) -> torch.Tensor:
    if st.kind == "lif":
        return torch.full(st.x_shape, st.params.charge_reset)
    B, C = st.x_shape[0], st.x_shape[1]
    shape = (B, st.params.groups, (C // st.params.groups) * math.prod(st.x_shape[2:]))
    v = torch.full(shape, st.params.lif.charge_reset)
    return to_grid(v) if st.params.exact else v


# ----------------------------------------------------------------------------- the program


@dataclass
class StepProgram:
    """The traced-to-be pieces of a training step for one model (see the module docstring)."""

    model: nn.Module
    prefix: List[_Leaf]
    stages: List[_Stage]
    head: List[_Leaf]
    batch_size: int
    timesteps: int
    chunk: int
    trainable: List[str]
    frozen: List[str]
    values: Dict[str, torch.Tensor]
    optimizer: str
    hparams: Dict[str, float]
    in_shape: Tuple[int, ...]
    num_classes: int

    @property
    def opt_state(self) -> List[str]:
        if self.optimizer == "adamw":
            return ["optimizer.step"] + [f"{n}.exp_avg" for n in self.trainable] + [f"{n}.exp_avg_sq" for n in self.trainable]
        if self.hparams.get("momentum", 0.0) != 0.0:
            return [f"{n}.momentum_buffer" for n in self.trainable]
        return []

    def initial_opt_state(self) -> Dict[str, np.ndarray]:
        out = {}
        for name in self.opt_state:
            if name == "optimizer.step":
                out[name] = np.zeros((), np.float32)
            else:
                base = name.rsplit(".", 1)[0]
                out[name] = np.zeros(tuple(self.values[base].shape), np.float32)
        return out

    # -- pieces as plain torch functions ------------------------------------------------

    def loop_names(self) -> List[str]:
        """Trainable parameters of the layers inside the time loop (stages and head)."""
        names = []
        for st in self.stages:
            for leaf in st.leaves:
                names += leaf.params
        for leaf in self.head:
            names += leaf.params
        return names

    def prefix_names(self) -> List[str]:
        return [n for leaf in self.prefix for n in leaf.params]

    def read_names(self, leaves: Sequence[_Leaf]) -> List[str]:
        return [n for leaf in leaves for n in leaf.params + leaf.buffers]

    def loop_read_names(self) -> List[str]:
        names = []
        for st in self.stages:
            names += self.read_names(st.leaves)
        return names + self.read_names(self.head)

    def forward_step(self, t: Dict[str, torch.Tensor], P: torch.Tensor, states: List[torch.Tensor]):
        """One time step: ``(logits, new states, kept values per stage)``; kept: LIF ``h``,
        RevLIF ``(spike, grid bit | None)`` float 0/1 in grouped layout."""
        out = P
        new_states, kept = [], []
        for st, v in zip(self.stages, states):
            _, x = _block_forward(st.leaves, t, out)
            if st.kind == "lif":
                h = lif_charge(x, v, st.params)
                s, u = lif_fire_reset_values(h, st.params)
                new_states.append(u)
                kept.append(h)
                out = s
            else:
                p: RevLIFParams = st.params
                xg = _node_input(st, x)
                y, v_new, bits = revlif_step(xg, v, p)
                spike = (y - p.alpha * xg >= 0.5).to(y.dtype)
                new_states.append(v_new)
                kept.append((spike, None if bits is None else bits.to(y.dtype)))
                out = y.reshape(x.shape)
        _, logits = _block_forward(self.head, t, out)
        return logits, new_states, kept

    def backward_step(self, t, P, g_logits_t, v_rev: List[torch.Tensor], gv: List[torch.Tensor], kept, err,
                      defer: bool = False):
        """Back-propagate one time step (top-down). ``kept``: per stage, LIF ``h``, RevLIF
        ``(spike, bit)``; ``v_rev``: RevLIF states after the step (one per RevLIF stage).
        Returns ``(v_rev before the step, gv before the step, {param: grad}, grad of P, err)``."""
        # recompute the stateless layers (and the RevLIF outputs) bottom-up
        out = P
        acts = []
        for st, kv in zip(self.stages, kept):
            inputs, x = _block_forward(st.leaves, t, out)
            if st.kind == "lif":
                out_next = (kv >= st.params.v_threshold).to(kv.dtype)
                acts.append((inputs, x, None))
            else:
                p: RevLIFParams = st.params
                xg = _node_input(st, x)
                spike, _ = kv
                y = p.alpha * xg + spike
                acts.append((inputs, x, (xg, y)))
                out_next = y.reshape(x.shape)
            out = out_next
        head_inputs, _ = _block_forward(self.head, t, out)
        g, grads = _block_vjp(self.head, t, head_inputs, g_logits_t, defer=defer)
        new_v, new_gv = list(v_rev), list(gv)
        ri = sum(1 for st in self.stages if st.kind == "revlif")
        for li in range(len(self.stages) - 1, -1, -1):
            st, kv, (inputs, x, rev) = self.stages[li], kept[li], acts[li]
            if st.kind == "lif":
                gx, new_gv[li] = lif_step_vjp(kv, g, gv[li], st.params)
            else:
                ri -= 1
                p = st.params
                xg, y = rev
                _, bit = kv
                x_rec, v_prev, gxg, new_gv[li] = revlif_step_backward(
                    y, v_rev[ri], bit, _grouped(g, p.groups), gv[li], p)
                err = torch.maximum(err, (x_rec - xg).abs().max())
                new_v[ri] = v_prev
                gx = gxg.reshape(x.shape)
            g, gl = _block_vjp(st.leaves, t, inputs, gx, defer=defer)
            grads.update(gl)
        return new_v, new_gv, grads, g, err

    def update(self, t: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor], lr):
        """``(new params, new optimizer state)`` as ``torch.optim.SGD`` / ``torch.optim.AdamW`` compute them."""
        hp = self.hparams
        new_p, new_s = {}, {}
        if self.optimizer == "adamw":
            b1, b2, eps, wd = hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
            step = state["optimizer.step"] + 1.0
            new_s["optimizer.step"] = step
            bc1 = 1.0 - torch.pow(torch.tensor(b1, dtype=torch.float32), step)
            bc2 = 1.0 - torch.pow(torch.tensor(b2, dtype=torch.float32), step)
            step_size = lr / bc1
            bc2_sqrt = torch.sqrt(bc2)
            for n in self.trainable:
                p, g = t[n], grads[n]
                p = p * (1.0 - lr * wd)
                m = state[f"{n}.exp_avg"]
                m = m + (g - m) * (1.0 - b1)
                v = state[f"{n}.exp_avg_sq"] * b2 + g * g * (1.0 - b2)
                denom = torch.sqrt(v) / bc2_sqrt + eps
                new_p[n] = p - step_size * (m / denom)
                new_s[f"{n}.exp_avg"], new_s[f"{n}.exp_avg_sq"] = m, v
            return new_p, new_s
        mom, wd, nesterov = hp.get("momentum", 0.0), hp.get("weight_decay", 0.0), bool(hp.get("nesterov", 0.0))
        for n in self.trainable:
            p, d = t[n], grads[n]
            if wd:
                d = d + wd * p
            if mom:
                buf = state[f"{n}.momentum_buffer"] * mom + d
                new_s[f"{n}.momentum_buffer"] = buf
                d = d + mom * buf if nesterov else buf
            new_p[n] = p - lr * d
        return new_p, new_s

    def loss(self, logit_sum: torch.Tensor, labels: torch.Tensor):
        logits = logit_sum / float(self.timesteps)
        logp = torch.log_softmax(logits, 1)
        onehot = F.one_hot(labels, self.num_classes).to(logits.dtype)
        B = float(self.batch_size)
        loss = -(logp * onehot).sum() / B
        g = (torch.exp(logp) - onehot) / B
        correct = (logits.argmax(1) == labels).to(torch.int64).sum()
        return loss, correct, g / float(self.timesteps)

    def eager_step(self, x, labels, lr, t: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]):
        """The whole step in eager PyTorch with the same functions (used to check the exported graph)."""
        P_in, P = _block_forward(self.prefix, t, x)
        states = [_initial_state(st) for st in self.stages]
        logit_sum = 0.0
        kept_all = []
        for _ in range(self.timesteps):
            logits, states, kept = self.forward_step(t, P, states)
            logit_sum = logit_sum + logits
            kept_all.append(kept)
        loss, correct, g_t = self.loss(logit_sum, labels)
        v_rev = [s for st, s in zip(self.stages, states) if st.kind == "revlif"]
        gv = [torch.zeros_like(s) for s in states]
        err = torch.zeros(())
        gacc: Dict[str, torch.Tensor] = {}
        gP = torch.zeros_like(P)
        for step in range(self.timesteps - 1, -1, -1):
            v_rev, gv, grads, g, err = self.backward_step(t, P, g_t, v_rev, gv, kept_all[step], err)
            for k, val in grads.items():
                gacc[k] = gacc[k] + val if k in gacc else val
            gP = gP + g
        _, pg = _block_vjp(self.prefix, t, P_in, gP, need_gx=False)
        gacc.update(pg)
        new_p, new_s = self.update(t, gacc, state, lr)
        return new_p, new_s, loss, correct, err, gacc


def build_step_program(model: nn.Module, batch_size: int, optimizer: str = "sgd", momentum: float = 0.9,
                       weight_decay: Optional[float] = None, nesterov: bool = False, betas=(0.9, 0.999),
                       eps: float = 1e-8) -> StepProgram:
    if optimizer not in STEP_OPTIMIZERS:
        raise ExportError(f"optimizer: expected one of {STEP_OPTIMIZERS}, got {optimizer!r}")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ExportError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    clone = export_copy(model)
    prefix, stages, head = _plan(clone)
    T = int(clone.timesteps)
    values = {k: v.detach().clone().float() for k, v in clone.state_dict().items()}
    trainable = [n for n, _ in clone.named_parameters()]
    used = set()
    for leaves in [prefix, head] + [st.leaves for st in stages]:
        for leaf in leaves:
            used.update(leaf.params)
    missing = sorted(set(trainable) - used)
    if missing:
        raise ExportError(f"onnx-step: parameters {missing} belong to layers without an explicit VJP")
    frozen = [n for leaves in [prefix, head] + [st.leaves for st in stages] for leaf in leaves for n in leaf.buffers]
    wd = (0.01 if optimizer == "adamw" else 0.0) if weight_decay is None else float(weight_decay)
    hp = {"weight_decay": wd}
    if optimizer == "adamw":
        hp.update(beta1=float(betas[0]), beta2=float(betas[1]), eps=float(eps))
    else:
        hp.update(momentum=float(momentum), nesterov=float(bool(nesterov)))
    chunk = 4 if T % 4 == 0 else (2 if T % 2 == 0 else 1)
    cfg = dict(getattr(model, "config", {}) or {})
    prog = StepProgram(clone, prefix, stages, head, batch_size, T, chunk, trainable, frozen, values, optimizer, hp,
                       tuple(clone.in_shape), int(cfg.get("num_classes", 0)) or 0)
    # shapes: one eager pass
    with torch.no_grad():
        x = torch.zeros(batch_size, *clone.in_shape)
        _, out = _block_forward(prefix, values, x)
        for i, st in enumerate(stages):
            _, xi = _block_forward(st.leaves, values, out)
            st.x_shape = tuple(xi.shape)
            out = xi
        _, logits = _block_forward(head, values, out)
        prog.num_classes = int(logits.shape[1])
    return prog


def reference_step(prog: StepProgram, x, labels, lr, params, state):
    """Eager version of the step (numpy in, numpy out) for checks."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
    s = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    with torch.no_grad():
        new_p, new_s, loss, correct, err, _ = prog.eager_step(torch.from_numpy(x), torch.from_numpy(labels), float(lr), t, s)
    return ({k: v.numpy() for k, v in new_p.items()}, {k: v.numpy() for k, v in new_s.items()}, float(loss), int(correct),
            float(err))


# ----------------------------------------------------------------------------- tracing pieces to ONNX


class _Fn(nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _export_piece(fn: Callable, args: Sequence[torch.Tensor], input_names: List[str], output_names: List[str]):
    """Trace ``fn`` with ``torch.jit.trace`` (eager branches: ``detach``) and export it; returns a GraphProto."""
    onnx = _onnx()
    args = tuple(a.detach() for a in args)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(_Fn(fn), args, check_trace=False)
        buf = io.BytesIO()
        torch.onnx.export(traced, args, buf, input_names=input_names, output_names=output_names, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    have = {i.name for i in graph.input}
    # keep every declared input (the exporter drops unused ones)
    for name, a in zip(input_names, args):
        if name not in have:
            graph.input.append(onnx.helper.make_tensor_value_info(name, _elem(a), list(a.shape)))
    return graph


def _elem(a: torch.Tensor) -> int:
    onnx = _onnx()
    return {torch.float32: onnx.TensorProto.FLOAT, torch.int64: onnx.TensorProto.INT64,
            torch.uint8: onnx.TensorProto.UINT8}[a.dtype]


def _rename_graph(graph, prefix: str, keep: set) -> None:
    """Prefix every name in ``graph`` (values, nodes, initializers) except those in ``keep``."""
    def r(n: str) -> str:
        return n if (not n or n in keep) else prefix + n

    for node in graph.node:
        node.input[:] = [r(n) for n in node.input]
        node.output[:] = [r(n) for n in node.output]
        node.name = prefix + (node.name or node.op_type)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                _rename_graph(attr.g, prefix, keep)
    for init in graph.initializer:
        init.name = r(init.name)
    for vi in list(graph.input) + list(graph.output):
        vi.name = r(vi.name)
    del graph.value_info[:]


def _fix_passthrough(graph, prefix: str) -> None:
    """Scan bodies: an output that is an input (or an outer value) gets its own Identity node."""
    onnx = _onnx()
    produced = {o for n in graph.node for o in n.output}
    seen = set()
    for out in graph.output:
        if out.name not in produced or out.name in seen:
            new = f"{prefix}id/{out.name}"
            graph.node.append(onnx.helper.make_node("Identity", [out.name], [new], name=f"{prefix}Identity/{out.name}"))
            out.name = new
        seen.add(out.name)


def _body(fn, args, input_names, output_names, local_in: List[str], prefix: str):
    """A Scan body: ``local_in`` become the body inputs (in order); the other inputs are outer-scope names."""
    graph = _export_piece(fn, args, input_names, output_names)
    outer = set(input_names) - set(local_in)
    by_name = {i.name: i for i in graph.input}
    kept_inputs = [by_name[n] for n in local_in]
    new_inputs = [type(kept_inputs[0])() for _ in kept_inputs]
    for dst, src in zip(new_inputs, kept_inputs):
        dst.CopyFrom(src)
    del graph.input[:]
    graph.input.extend(new_inputs)
    # initializers that shadow inputs are not expected; rename everything local
    _rename_graph(graph, prefix, outer)
    _fix_passthrough(graph, prefix)
    graph.name = prefix.strip("/")
    return graph


def _scan_body_to_loop(graph, n_state: int, store_names: List[str], n_chunks: int, prefix: str) -> None:
    """Turn a Scan body ``(states..., slices...) -> states...`` into a ``Loop`` body that walks the
    chunks backwards, reading chunk ``n_chunks - 1 - i`` of each outer ``store`` by ``Gather``.

    ONNX Runtime's Scan keeps up to four buffers per loop-carried value (input, two alternating,
    final output): for the weight-gradient accumulators that is 3x their size more than Loop,
    whose iterations hand their outputs on as the next inputs.
    """
    onnx = _onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    slices = list(graph.input)[n_state:]
    states = list(graph.input)[:n_state]
    it, cond_in, cond_out = f"{prefix}iter", f"{prefix}cond_in", f"{prefix}cond_out"
    last = helper.make_tensor(f"{prefix}last_chunk", TP.INT64, [], [n_chunks - 1])
    graph.initializer.append(last)
    nodes = [helper.make_node("Sub", [last.name, it], [f"{prefix}chunk"], name=f"{prefix}chunk_index")]
    for vi, store in zip(slices, store_names):
        nodes.append(helper.make_node("Gather", [store, f"{prefix}chunk"], [vi.name], name=f"{prefix}Gather/{store}", axis=0))
    nodes.append(helper.make_node("Identity", [cond_in], [cond_out], name=f"{prefix}cond"))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    new_inputs = [helper.make_tensor_value_info(it, TP.INT64, []), helper.make_tensor_value_info(cond_in, TP.BOOL, [])]
    del graph.input[:]
    graph.input.extend(new_inputs + states)
    outs = list(graph.output)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(cond_out, TP.BOOL, [])] + outs)


def _pruned(graph, n_outputs: int):
    """A copy of ``graph`` with only its first ``n_outputs`` outputs and the nodes they need."""
    import copy

    g = copy.deepcopy(graph)
    outs = list(g.output)[:n_outputs]
    del g.output[:]
    g.output.extend(outs)
    needed = {o.name for o in outs}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # values a nested graph reads from this scope
                if attr.g is not None:
                    needed.update(n for sub in attr.g.node for n in sub.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    return g


def _inline(graph, prefix: str, keep: set):
    """Nodes and initializers of an exported piece, internal names prefixed; I/O names kept."""
    io_names = {i.name for i in graph.input} | {o.name for o in graph.output}
    _rename_graph(graph, prefix, keep | io_names)
    return list(graph.node), list(graph.initializer)


def _to_numpy(d: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return {k: v.detach().numpy().astype(np.float32) for k, v in d.items()}


def build_graphs(prog: StepProgram):
    """``(step ModelProto, eval ModelProto, io description)``."""
    onnx = _onnx()
    helper = onnx.helper
    TP = onnx.TensorProto
    B, T, K = prog.batch_size, prog.timesteps, prog.chunk
    n_chunks = T // K
    V = {k: v for k, v in prog.values.items()}
    prefix_read = prog.read_names(prog.prefix)
    loop_read = prog.loop_read_names()
    loop_params = [n for n in prog.loop_names()]
    x_ex = torch.rand(B, *prog.in_shape)
    labels_ex = torch.randint(0, prog.num_classes, (B,))
    stages = prog.stages
    rev_idx = [i for i, st in enumerate(stages) if st.kind == "revlif"]

    # ---- prefix: x -> P, initial states
    def f_pre(x, *vals):
        t = dict(zip(prefix_read, vals))
        _, P = _block_forward(prog.prefix, t, x)
        inits = [_initial_state(st) for st in stages]
        return (P, *inits, torch.zeros(B, prog.num_classes))

    with torch.no_grad():
        _, P_ex = _block_forward(prog.prefix, V, x_ex)
    init_states = [_initial_state(st) for st in stages]
    pre_out = ["P"] + [f"v_init{i}" for i in range(len(stages))] + ["logit_sum_init"]

    # ---- forward body
    def kept_to_store(kept_k: List, st: _Stage):
        if st.kind == "lif":
            return torch.stack(kept_k)  # [K, B, ...]
        acc = None
        for k, (s, bit) in enumerate(kept_k):
            term = s * float(4 ** k)
            if bit is not None:
                term = term + bit * float(2 * 4 ** k)
            acc = term if acc is None else acc + term
        return acc.to(torch.uint8)  # [B, n, M]

    def make_fwd(store: bool):
        def f_fwd(P, *rest):
            nv = len(loop_read)
            t = dict(zip(loop_read, rest[:nv]))
            states = list(rest[nv:nv + len(stages)])
            logit_sum = rest[nv + len(stages)]
            kept_steps = []
            for _ in range(K):
                logits, states, kept = prog.forward_step(t, P, states)
                logit_sum = logit_sum + logits
                kept_steps.append(kept)
            outs = [*states, logit_sum]
            if store:
                outs += [kept_to_store([ks[i] for ks in kept_steps], st) for i, st in enumerate(stages)]
            return tuple(outs)
        return f_fwd

    tick_ex = torch.zeros(1)
    fwd_local = [f"s{i}" for i in range(len(stages))] + ["logit_sum", "tick"]
    fwd_in_names = ["P"] + loop_read + fwd_local
    fwd_args = [P_ex] + [V[n] for n in loop_read] + init_states + [torch.zeros(B, prog.num_classes), tick_ex]
    fwd_out_state = [f"s{i}_out" for i in range(len(stages))] + ["logit_sum_out"]
    store_names = [f"store{i}" for i in range(len(stages))]

    def fwd_fn_with_tick(store):
        f = make_fwd(store)
        return lambda P, *rest: f(P, *rest[:-1])

    with torch.no_grad():
        ex_store = fwd_fn_with_tick(True)(*fwd_args)[len(stages) + 1:]
    body_f = _body(fwd_fn_with_tick(True), fwd_args, fwd_in_names, fwd_out_state + [f"{n}_slice" for n in store_names],
                   fwd_local, "fwd/")
    body_e = _pruned(body_f, len(fwd_out_state))  # the eval graph's forward: the same body without the stores

    # ---- loss
    def f_loss(logit_sum, labels, *params):
        loss, correct, g_t = prog.loss(logit_sum, labels)
        zeros = [p * 0.0 for p in params]
        return (loss, correct, g_t, *zeros)

    loss_params = loop_params
    loss_out = ["loss", "correct", "g_logits_t"] + [f"gacc0/{n}" for n in loss_params]

    # ---- backward body
    def unpack(store_k: torch.Tensor, k: int, st: _Stage):
        if st.kind == "lif":
            return store_k[k]
        b = store_k.to(torch.float32)
        def bit(j):
            return torch.floor(b / float(2 ** j)) - 2.0 * torch.floor(b / float(2 ** (j + 1)))
        spike = bit(2 * k)
        gbit = bit(2 * k + 1) if st.params.exact else None
        return spike, gbit

    n_rev = len(rev_idx)
    leaf_of = {f"{leaf.name}.weight": leaf for leaves in [prog.head] + [st.leaves for st in stages] for leaf in leaves}

    def f_bwd(P, g_t, *rest):
        nv = len(loop_read)
        t = dict(zip(loop_read, rest[:nv]))
        rest = rest[nv:]
        v_rev = list(rest[:n_rev]); rest = rest[n_rev:]
        gv = list(rest[:len(stages)]); rest = rest[len(stages):]
        gacc = dict(zip(loop_params, rest[:len(loop_params)])); rest = rest[len(loop_params):]
        gP, err = rest[0], rest[1]
        stores = rest[2:]
        pairs: Dict[str, List] = {}
        for k in range(K - 1, -1, -1):
            kept = [unpack(s, k, st) for s, st in zip(stores, stages)]
            v_rev, gv, grads, g, err = prog.backward_step(t, P, g_t, v_rev, gv, kept, err, defer=True)
            for n in loop_params:
                if isinstance(grads[n], tuple):
                    pairs.setdefault(n, []).append(grads[n])
                else:
                    gacc[n] = gacc[n] + grads[n]
            gP = gP + g
        # weight gradients of the chunk's K steps in one product each
        for n, pl in pairs.items():
            xs = torch.cat([p[0] for p in pl]) if len(pl) > 1 else pl[0][0]
            gs = torch.cat([p[1] for p in pl]) if len(pl) > 1 else pl[0][1]
            gacc[n] = _weight_grad(leaf_of[n], xs, gs, gacc[n])
        return (*v_rev, *gv, *[gacc[n] for n in loop_params], gP, err)

    with torch.no_grad():  # example final states: run the forward once
        st_ex = list(init_states)
        for _ in range(T):
            _, st_ex, _ = prog.forward_step(V, P_ex, st_ex)
    bwd_local = ([f"bv{j}" for j in range(n_rev)] + [f"bgv{i}" for i in range(len(stages))]
                 + [f"bg/{n}" for n in loop_params] + ["bgP", "berr"] + [f"{n}_slice" for n in store_names])
    bwd_in_names = ["P", "g_logits_t"] + loop_read + bwd_local
    bwd_args = ([P_ex, torch.zeros(B, prog.num_classes)] + [V[n] for n in loop_read] + [st_ex[i] for i in rev_idx]
                + [torch.zeros_like(s) for s in init_states] + [torch.zeros_like(V[n]) for n in loop_params]
                + [torch.zeros_like(P_ex), torch.zeros(())] + list(ex_store))
    bwd_out = ([f"bv{j}_out" for j in range(n_rev)] + [f"bgv{i}_out" for i in range(len(stages))]
               + [f"bg/{n}_out" for n in loop_params] + ["bgP_out", "berr_out"])
    body_b = _body(f_bwd, bwd_args, bwd_in_names, bwd_out, bwd_local[:len(bwd_out)] + [f"{n}_slice" for n in store_names], "bwd/")
    _scan_body_to_loop(body_b, len(bwd_out), store_names, n_chunks, "bwd/")

    # ---- post: prefix VJP, verification, update
    opt_names = prog.opt_state
    prefix_params = prog.prefix_names()
    init_rev = [init_states[i] for i in rev_idx]

    def f_post(x, lr, gP, err, *rest):
        t = dict(zip(prog.trainable + prog.frozen, rest[:len(prog.trainable) + len(prog.frozen)]))
        rest = rest[len(prog.trainable) + len(prog.frozen):]
        state = dict(zip(opt_names, rest[:len(opt_names)])); rest = rest[len(opt_names):]
        gl = dict(zip(loop_params, rest[:len(loop_params)])); rest = rest[len(loop_params):]
        v0_rec = rest[:n_rev]
        inputs, _ = _block_forward(prog.prefix, t, x)
        _, pg = _block_vjp(prog.prefix, t, inputs, gP, need_gx=False)
        grads = dict(gl)
        grads.update(pg)
        for v, v0 in zip(v0_rec, init_rev):
            err = torch.maximum(err, (v - v0).abs().max())
        new_p, new_s = prog.update(t, grads, state, lr)
        return (*[new_p[n] for n in prog.trainable], *[new_s[n] for n in opt_names], err)

    init_opt = {k: torch.from_numpy(v) for k, v in prog.initial_opt_state().items()}
    post_in = (["input", "lr", "gP_final", "err_final"] + prog.trainable + prog.frozen + opt_names
               + [f"gfin/{n}" for n in loop_params] + [f"v0rec{j}" for j in range(n_rev)])
    post_args = ([x_ex, torch.tensor(0.01), torch.zeros_like(P_ex), torch.zeros(())] + [V[n] for n in prog.trainable + prog.frozen]
                 + [init_opt[n] for n in opt_names] + [torch.zeros_like(V[n]) for n in loop_params]
                 + [init_states[i] for i in rev_idx])
    post_out = [f"new/{n}" for n in prog.trainable] + [f"new/{n}" for n in opt_names] + ["recon_error"]

    # ---- export the pieces
    import copy as _copy_mod

    _copy = _copy_mod.deepcopy
    g_pre = _export_piece(f_pre, [x_ex] + [V[n] for n in prefix_read], ["input"] + prefix_read, pre_out)
    g_loss = _export_piece(f_loss, [torch.zeros(B, prog.num_classes), labels_ex] + [V[n] for n in loss_params],
                           ["logit_sum_final", "labels"] + loss_params, ["loss", "correct_i64", "g_logits_t"] + loss_out[3:])
    g_post = _export_piece(f_post, post_args, post_in, post_out)

    all_inputs = prog.trainable + prog.frozen
    keep_outer = set(all_inputs) | set(opt_names)
    nodes_pre, init_pre = _inline(g_pre, "pre/", keep_outer)
    nodes_loss, init_loss = _inline(g_loss, "loss/", keep_outer)
    nodes_post, init_post = _inline(g_post, "post/", keep_outer)

    tick = helper.make_tensor("ticks", TP.FLOAT, [n_chunks, 1], np.zeros(n_chunks, np.float32).tolist())
    S = len(stages)
    scan_f = helper.make_node(
        "Scan", [f"v_init{i}" for i in range(S)] + ["logit_sum_init", "ticks"],
        [f"v_T{i}" for i in range(S)] + ["logit_sum_final"] + store_names,
        name="forward_scan", body=body_f, num_scan_inputs=1)
    zero = helper.make_tensor("zero_scalar", TP.FLOAT, [], [0.0])
    gv0 = []
    gv_nodes = []
    for i in range(S):
        gv_nodes.append(helper.make_node("Mul", [f"v_init{i}", "zero_scalar"], [f"gv_init{i}"], name=f"gv_init{i}"))
        gv0.append(f"gv_init{i}")
    gv_nodes.append(helper.make_node("Mul", ["P", "zero_scalar"], ["gP_init"], name="gP_init"))
    trip = helper.make_tensor("n_chunks", TP.INT64, [], [n_chunks])
    scan_b = helper.make_node(
        "Loop", ["n_chunks", ""] + [f"v_T{i}" for i in rev_idx] + gv0 + [f"gacc0/{n}" for n in loop_params]
        + ["gP_init", "zero_scalar"],
        [f"v0rec{j}" for j in range(n_rev)] + [f"gv0_{i}" for i in range(S)] + [f"gfin/{n}" for n in loop_params]
        + ["gP_final", "err_final"],
        name="backward_loop", body=body_b)
    cast_correct = helper.make_node("Identity", ["correct_i64"], ["correct"], name="correct_out")

    def vi(name, arr_shape, et=TP.FLOAT):
        return helper.make_tensor_value_info(name, et, list(arr_shape))

    inputs = ([vi(n, V[n].shape) for n in all_inputs] + [vi(n, init_opt[n].shape) for n in opt_names]
              + [vi("input", [B, *prog.in_shape]), vi("labels", [B], TP.INT64), vi("lr", [])])
    outputs = ([vi(f"new/{n}", V[n].shape) for n in prog.trainable] + [vi(f"new/{n}", init_opt[n].shape) for n in opt_names]
               + [vi("loss", []), vi("correct", [], TP.INT64), vi("recon_error", [])])
    graph = helper.make_graph(nodes_pre + [scan_f] + nodes_loss + gv_nodes + [scan_b] + nodes_post + [cast_correct],
                              "edgesnn_step", inputs, outputs, initializer=init_pre + init_loss + init_post + [tick, zero, trip])
    step_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgesnn")
    step_model.ir_version = 8
    onnx.checker.check_model(step_model)

    # ---- eval graph: prefix + forward scan (no stores) + mean logits
    nodes_pre2, init_pre2 = [_copy(n) for n in nodes_pre], [_copy(i) for i in init_pre]
    scan_e = helper.make_node(
        "Scan", [f"v_init{i}" for i in range(S)] + ["logit_sum_init", "ticks"],
        [f"v_T{i}" for i in range(S)] + ["logit_sum_final"], name="forward_scan", body=body_e, num_scan_inputs=1)
    tconst = helper.make_tensor("T_float", TP.FLOAT, [], [float(T)])
    mean = helper.make_node("Div", ["logit_sum_final", "T_float"], ["logits"], name="mean_logits")
    eval_graph = helper.make_graph(nodes_pre2 + [scan_e, mean], "edgesnn_eval",
                                   [vi(n, V[n].shape) for n in all_inputs] + [vi("input", [B, *prog.in_shape])],
                                   [vi("logits", [B, prog.num_classes])], initializer=init_pre2 + [tick, tconst])
    eval_model = helper.make_model(eval_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgesnn")
    eval_model.ir_version = 8
    onnx.checker.check_model(eval_model)
    carried = [[n, f"new/{n}"] for n in prog.trainable] + [[n, f"new/{n}"] for n in opt_names]
    return step_model, eval_model, carried


def export_onnx_step(model: nn.Module, out_dir, batch_size: int = 32, optimizer: str = "sgd", learning_rate: float = 0.01,
                     momentum: float = 0.9, weight_decay: Optional[float] = None, nesterov: bool = False) -> StepManifest:
    """Write ``step.onnx``, ``eval.onnx``, ``init.npz`` and ``manifest.json`` into ``out_dir``."""
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ExportError(f"learning_rate: expected a finite number > 0, got {learning_rate!r}")
    prog = build_step_program(model, batch_size, optimizer, momentum, weight_decay, nesterov)
    step_model, eval_model, carried = build_graphs(prog)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / STEP_MODEL, step_model.SerializeToString())
    atomic_write_bytes(out_dir / STEP_EVAL_MODEL, eval_model.SerializeToString())
    arrays = {n: prog.values[n].numpy().astype(np.float32) for n in prog.trainable + prog.frozen}
    arrays.update(prog.initial_opt_state())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out_dir / STEP_INIT, buf.getvalue())
    cfg = dict(getattr(model, "config", {}) or {})
    manifest = StepManifest(
        model_config=encode_config(cfg), batch_size=prog.batch_size, in_shape=list(prog.in_shape),
        num_classes=prog.num_classes, timesteps=prog.timesteps, trainable=list(prog.trainable), frozen=list(prog.frozen),
        optimizer_state=list(prog.opt_state), carried=carried, optimizer=prog.optimizer,
        hyperparameters=dict(prog.hparams), learning_rate=float(learning_rate), chunk=prog.chunk,
        neurons=[{"layer": st.name, "kind": st.kind, **({"mode": st.params.mode, "groups": st.params.groups}
                                                         if st.kind == "revlif" else {})} for st in prog.stages],
        recon_tolerance=(0.0 if all(st.kind == "lif" or st.params.exact for st in prog.stages)
                         else FLOAT_MODE_TOLERANCE * max(max(1.0, abs(st.params.lif.v_threshold)) for st in prog.stages
                                                         if st.kind == "revlif")),
        edgesnn_version=__version__,
    )
    write_step_manifest(out_dir, manifest)
    return manifest
