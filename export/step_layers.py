"""The model's layers as the ONNX step graph sees them (:mod:`.onnx_step`), with explicit VJPs.

A model is read into leaves (stateless layers: Linear (on the last dim of ``[B, ..., in]``, as
``nn.Linear``), Conv2d with stride/padding, dilation 1,
groups 1, frozen-statistics BatchNorm, AvgPool2d / MaxPool2d with kernel = stride, Flatten) and stages
(leaves then one spiking node). Each leaf has a forward and a VJP written with standard ops only,
so the traced backward is exactly these formulas (no autograd inside the exported graph).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..functional.grid import quantize_input, to_grid
from ..nn import LIF, RevLIF, SeqToANN
from .prepare import ExportError

__all__ = ["Leaf", "Stage", "make_leaf", "plan_layers", "record_shapes", "leaf_forward", "weight_grad", "leaf_vjp",
           "block_forward", "block_vjp", "grouped", "node_input", "initial_value", "initial_state"]


# ----------------------------------------------------------------------------- the model as a plan


@dataclass
class Leaf:
    """One stateless per-step layer of the step program, with the tensor names it reads."""

    kind: str  # linear | conv | bn | pool | maxpool | flatten | identity
    name: str  # qualified module name (parameter prefix)
    module: nn.Module
    params: List[str] = field(default_factory=list)  # trainable parameter names (the VJP computes their gradients)
    buffers: List[str] = field(default_factory=list)  # frozen tensors it reads (statistics, fixed parameters)
    in_shape: Tuple[int, ...] = ()  # one sample's input shape (no batch dim), set by record_shapes


@dataclass
class Stage:
    """One spiking layer (LIF or RevLIF) and the stateless layers between it and the previous one."""

    leaves: List[Leaf]  # stateless layers before the node (empty for the first: the prefix)
    kind: str  # lif | revlif
    name: str
    params: object  # LIFParams | RevLIFParams
    x_shape: Tuple[int, ...] = ()  # one step's node input [B, ...]


def make_leaf(name: str, m: nn.Module) -> Leaf:
    """The :class:`Leaf` for the per-step layer ``m`` named ``name``; a one-line :class:`ExportError`
    for a layer or setting the explicit VJPs do not cover."""
    if isinstance(m, nn.Linear):
        return Leaf("linear", name, m, [f"{name}.weight"] + ([f"{name}.bias"] if m.bias is not None else []))
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or tuple(m.dilation) != (1, 1) or not isinstance(m.padding, tuple) or m.padding_mode != "zeros":
            raise ExportError(f"onnx-step: {name}: only Conv2d with groups=1, dilation=1, numeric zero padding is supported")
        return Leaf("conv", name, m, [f"{name}.weight"] + ([f"{name}.bias"] if m.bias is not None else []))
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        if not m.affine or m.running_mean is None:
            raise ExportError(f"onnx-step: {name}: only affine BatchNorm with running statistics is supported")
        return Leaf("bn", name, m, [f"{name}.weight", f"{name}.bias"], [f"{name}.running_mean", f"{name}.running_var"])
    if isinstance(m, nn.AvgPool2d):
        if not _tiling_pool(m) or m.divisor_override is not None:
            raise ExportError(f"onnx-step: {name}: only AvgPool2d with kernel_size == stride, no padding, floor mode is supported")
        return Leaf("pool", name, m)
    if isinstance(m, nn.MaxPool2d):
        if not _tiling_pool(m) or _pair(m.dilation) != (1, 1) or m.return_indices:
            raise ExportError(f"onnx-step: {name}: only MaxPool2d with kernel_size == stride, no padding, dilation 1, "
                              f"floor mode, no return_indices is supported")
        return Leaf("maxpool", name, m)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ExportError(f"onnx-step: {name}: only Flatten(1, -1) is supported")
        return Leaf("flatten", name, m)
    if isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)):  # any Dropout: p = 0 (p > 0 is refused before)
        return Leaf("identity", name, m)
    raise ExportError(f"onnx-step: layer {name} ({type(m).__name__}) has no explicit VJP; supported: Linear, Conv2d, "
                      f"BatchNorm, AvgPool2d, MaxPool2d, Flatten, Identity/Dropout")


def _pair(v) -> Tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _tiling_pool(m: nn.Module) -> bool:
    """Whether a pool's windows tile the input: kernel == stride, no padding, floor mode."""
    return _pair(m.kernel_size) == _pair(m.stride if m.stride is not None else m.kernel_size) \
        and _pair(m.padding) == (0, 0) and not m.ceil_mode


#: Stateless layers that, in SpikingJelly's multi-step form (``layer.Conv2d(..., step_mode="m")``,
#: a subclass of ``nn.Conv2d`` that runs on ``[T * B, ...]``), mean exactly ``SeqToANN(nn.Conv2d(...))``.
_STEP_MODULE_TYPES = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.AvgPool2d, nn.MaxPool2d, nn.Flatten)


def plan_layers(model: nn.Module) -> Tuple[List[Leaf], List[Stage], List[Leaf]]:
    """``(prefix, stages, head)`` of ``model.body``: the layers before the first spiking layer, one
    :class:`Stage` per LIF/RevLIF (its node and the layers before it), and the layers after the last."""
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Sequential):
        raise ExportError("onnx-step: expected an edgesnn SpikingClassifier (model.body an nn.Sequential)")
    stages: List[Stage] = []
    pending: List[Leaf] = []
    prefix: Optional[List[Leaf]] = None
    for i, m in enumerate(body):
        name = f"body.{i}"
        if isinstance(m, SeqToANN):
            inner = m.module
            if isinstance(inner, nn.Sequential):
                pending += [make_leaf(f"{name}.module.{j}", c) for j, c in enumerate(inner)]
            else:
                pending.append(make_leaf(f"{name}.module", inner))
        elif isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)):
            continue  # the identity (a dropout layer here has p = 0: build_step_program refuses p > 0 first)
        elif isinstance(m, _STEP_MODULE_TYPES) and hasattr(m, "step_mode"):  # SpikingJelly's layer.Conv2d & co.
            if m.step_mode != "m":
                raise ExportError(f"onnx-step: layer {name} ({type(m).__name__}) has step_mode={m.step_mode!r}; the body runs "
                                  f"on [T, B, ...], so its layers need step_mode='m' (functional.set_step_mode(body, 'm'))")
            pending.append(make_leaf(name, m))
        elif type(m) in (LIF, RevLIF):
            if m.stateful:
                raise ExportError(f"onnx-step: spiking layer {name} is stateful (carries .v across calls); export needs fresh states")
            kind = "lif" if type(m) is LIF else "revlif"
            if prefix is None:
                prefix, leaves = pending, []
            else:
                leaves = pending
            stages.append(Stage(leaves, kind, name, m.params))
            pending = []
        else:
            raise ExportError(f"onnx-step: layer {name} ({type(m).__name__}) is not supported (LIF, RevLIF, SeqToANN and "
                              f"SpikingJelly's multi-step Linear/Conv2d/BatchNorm/AvgPool2d/MaxPool2d/Flatten layers only)")
    if not stages:
        raise ExportError("onnx-step: the model has no LIF/RevLIF layer")
    return prefix or [], stages, pending


def record_shapes(leaves: Sequence[Leaf], t: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Run ``leaves`` eagerly on ``x [B, ...]`` and store each one's per-sample input shape in
    ``leaf.in_shape``; returns the block's output. The VJPs take their spatial sizes from there, so
    the traced graph holds them as constants (sizes read from a traced tensor become ``Shape`` ops,
    and a pad or kernel of run-time size leaves the next convolution's weight shape unknown)."""
    for leaf in leaves:
        leaf.in_shape = tuple(int(d) for d in x.shape[1:])
        x = leaf_forward(leaf, t, x)
    return x


def _static_shape(leaf: Leaf, x: torch.Tensor) -> Tuple[int, ...]:
    """One sample's input shape of ``leaf``: the recorded one, else (eager use) ``x``'s."""
    return leaf.in_shape if leaf.in_shape else tuple(int(d) for d in x.shape[1:])


# ----------------------------------------------------------------------------- explicit layer VJPs


def leaf_forward(leaf: Leaf, t: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """One layer on one time step ``x [B, ...]`` with its tensors from ``t`` (name -> tensor)."""
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
    if leaf.kind == "maxpool":
        return F.max_pool2d(x, m.kernel_size, m.stride)
    if leaf.kind == "flatten":
        return x.reshape(x.shape[0], -1)
    return x


def weight_grad(leaf: Leaf, x: torch.Tensor, gy: torch.Tensor, acc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear / Conv2d weight gradient (the weight's shape) at input ``x`` and output gradient ``gy`` (plus
    ``acc``): Linear ``x [N, ..., in]``, ``gy [N, ..., out]`` -> ``[out, in]``; Conv2d ``x [N, C_in, H, W]``,
    ``gy [N, C_out, H', W']`` -> ``[C_out, C_in, kh, kw]``."""
    if leaf.kind == "linear":
        if x.dim() > 2:  # a Linear on [B, ..., in]: every leading position is a row (sizes from the module)
            x, gy = x.reshape(-1, leaf.module.in_features), gy.reshape(-1, leaf.module.out_features)
        return gy.t().matmul(x) if acc is None else torch.addmm(acc, gy.t(), x)
    m = leaf.module
    kh, kw = tuple(m.kernel_size)
    # a convolution over the batch: channels and batch swap roles
    gw = F.conv2d(x.transpose(0, 1), gy.transpose(0, 1), None, 1, tuple(m.padding), tuple(m.stride)).transpose(0, 1)
    gw = gw[:, :, :kh, :kw]
    return gw if acc is None else acc + gw


def leaf_vjp(leaf: Leaf, t: Dict[str, torch.Tensor], x: torch.Tensor, gy: torch.Tensor,
              need_gx: bool = True, defer: bool = False) -> Tuple[Optional[torch.Tensor], Dict[str, object]]:
    """``(grad of the input, {parameter name: gradient})`` of one layer at input ``x``.

    ``defer``: Linear/Conv2d weight gradients come back as ``(x, gy)`` pairs, so that a caller
    can compute them for several time steps in one matrix product (:func:`weight_grad`).
    """
    m, n = leaf.module, leaf.name
    grads: Dict[str, object] = {}
    trains = set(leaf.params)
    if leaf.kind in ("linear", "conv") and f"{n}.weight" in trains:
        grads[f"{n}.weight"] = (x, gy) if defer else weight_grad(leaf, x, gy)
    if leaf.kind == "linear":
        w = t[f"{n}.weight"]
        if f"{n}.bias" in trains:
            grads[f"{n}.bias"] = gy.sum(0) if gy.dim() == 2 else gy.reshape(-1, m.out_features).sum(0)
        return (gy.matmul(w) if need_gx else None), grads
    if leaf.kind == "conv":
        w = t[f"{n}.weight"]
        s, p = tuple(m.stride), tuple(m.padding)
        kh, kw = w.shape[2], w.shape[3]
        if f"{n}.bias" in trains:
            grads[f"{n}.bias"] = gy.sum((0, 2, 3))
        gx = None
        if need_gx:
            _, H, W = _static_shape(leaf, x)  # Python ints: output_padding is an attribute of the graph
            Ho, Wo = (H + 2 * p[0] - kh) // s[0] + 1, (W + 2 * p[1] - kw) // s[1] + 1
            oh = H + 2 * p[0] - ((Ho - 1) * s[0] + kh)
            ow = W + 2 * p[1] - ((Wo - 1) * s[1] + kw)
            gx = F.conv_transpose2d(gy, w, None, s, p, (oh, ow))
        return gx, grads
    if leaf.kind == "bn":
        shape = [1, -1] + [1] * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        invstd = torch.rsqrt(t[f"{n}.running_var"] + float(m.eps))
        if f"{n}.weight" in trains:
            xhat = (x - t[f"{n}.running_mean"].reshape(shape)) * invstd.reshape(shape)
            grads[f"{n}.weight"] = (gy * xhat).sum(dims)
        if f"{n}.bias" in trains:
            grads[f"{n}.bias"] = gy.sum(dims)
        return (gy * (t[f"{n}.weight"] * invstd).reshape(shape) if need_gx else None), grads
    if leaf.kind == "pool":
        if not need_gx:
            return None, grads
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
        # each output gradient spread evenly over its k x k window: a depthwise transposed convolution
        # with a constant kernel. Its output_padding (Python ints from the recorded shape, < stride)
        # restores the rows/columns the floor-mode pool dropped, with zero gradient. (Reshape/expand
        # plus F.pad gave the same values, but the exporter lost the padded shape, and the next
        # convolution's weight gradient, which uses this as its kernel, could not be exported.)
        C, H, W = _static_shape(leaf, x)
        Ho, Wo = H // k[0], W // k[1]
        kernel = torch.full((C, 1, k[0], k[1]), 1.0 / (k[0] * k[1]), dtype=gy.dtype)
        return F.conv_transpose2d(gy, kernel, None, k, 0, (H - Ho * k[0], W - Wo * k[1]), groups=C), grads
    if leaf.kind == "maxpool":
        return (_maxpool_vjp(leaf, x, gy) if need_gx else None), grads
    if leaf.kind == "flatten":
        return (gy.reshape(-1, *_static_shape(leaf, x)) if need_gx else None), grads
    return gy, grads


def _maxpool_vjp(leaf: Leaf, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Input gradient of a tiling max pool: each output gradient goes to its window's first maximum
    in row-major order, as PyTorch's ``max_pool2d`` backward routes it (spike maps tie often: a
    window with two spikes). The windows become a last axis; ``argmax`` (the first index, ONNX
    ``ArgMax``) and a comparison give a one-hot; a depthwise transposed convolution with one-hot
    kernels puts each window's values back in place, its output_padding (static, < stride) giving
    the rows/columns the floor mode dropped zero gradient (as for AvgPool2d)."""
    kh, kw = _pair(leaf.module.kernel_size)
    C, H, W = _static_shape(leaf, x)
    Ho, Wo, K = H // kh, W // kw, kh * kw
    win = x[:, :, :Ho * kh, :Wo * kw].reshape(-1, C, Ho, kh, Wo, kw).permute(0, 1, 2, 4, 3, 5)
    first = win.reshape(-1, C, Ho, Wo, K).argmax(-1, keepdim=True)
    g = (torch.arange(K) == first).to(gy.dtype) * gy.unsqueeze(-1)  # [B, C, Ho, Wo, K]
    g = g.permute(0, 1, 4, 2, 3).reshape(-1, C * K, Ho, Wo)
    place = torch.eye(K, dtype=gy.dtype).reshape(K, 1, kh, kw).repeat(C, 1, 1, 1)  # channel (c, i): a 1 at window cell i
    return F.conv_transpose2d(g, place, None, (kh, kw), 0, (H - Ho * kh, W - Wo * kw), groups=C)


def block_forward(
    leaves: Sequence[Leaf], t: Dict[str, torch.Tensor], x: torch.Tensor
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Inputs of every layer (for the VJPs) and the block's output, for one time step ``x [B, ...]``."""
    inputs = []
    for leaf in leaves:
        inputs.append(x)
        x = leaf_forward(leaf, t, x)
    return inputs, x


def block_vjp(
    leaves: Sequence[Leaf], t: Dict[str, torch.Tensor], inputs: List[torch.Tensor], gy: torch.Tensor,
    need_gx: bool = True, defer: bool = False,
) -> Tuple[Optional[torch.Tensor], Dict[str, object]]:
    """``(grad of the block's input [B, ...], {parameter: gradient})`` from the output gradient ``gy [B, ...']``
    of one time step and ``inputs`` as :func:`block_forward` returns them, top layer first. Without
    ``need_gx`` it stops below the lowest layer with a trainable parameter (grad ``None``)."""
    grads: Dict[str, object] = {}
    lowest = 0 if need_gx else next((i for i, leaf in enumerate(leaves) if leaf.params), None)
    if lowest is None:
        return None, grads
    for i in range(len(leaves) - 1, lowest - 1, -1):
        gy, g = leaf_vjp(leaves[i], t, inputs[i], gy, need_gx or i > lowest, defer)
        grads.update(g)
    return gy, grads


# ----------------------------------------------------------------------------- one time step


def grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """``x [B, C, ...]`` as ``[B, groups, (C // groups) * prod(...)]`` (RevLIF's channel groups)."""
    B, C = x.shape[0], x.shape[1]
    return x.reshape(B, groups, (C // groups) * math.prod(x.shape[2:]))


def node_input(st: Stage, x: torch.Tensor) -> torch.Tensor:
    """The value a RevLIF layer steps on: ``x [B, C, ...]`` grouped to ``[B, n, M]``, clamped and on the grid
    in exact mode."""
    xg = grouped(x, st.params.groups)
    return quantize_input(xg) if st.params.exact else xg


def initial_value(st: Stage) -> float:
    """The one value a stage's fresh state holds throughout: the reset potential (RevLIF exact
    mode: on the grid, float32)."""
    if st.kind == "lif":
        return float(torch.tensor(st.params.charge_reset))
    v = torch.tensor(st.params.lif.charge_reset)
    return float(to_grid(v) if st.params.exact else v)


def initial_state(st: Stage) -> torch.Tensor:
    """A stage's fresh state: ``x_shape`` (LIF) or grouped ``[B, n, M]`` (RevLIF), :func:`initial_value` throughout."""
    if st.kind == "lif":
        return torch.full(st.x_shape, initial_value(st))
    B, C = st.x_shape[0], st.x_shape[1]
    return torch.full((B, st.params.groups, (C // st.params.groups) * math.prod(st.x_shape[2:])), initial_value(st))
