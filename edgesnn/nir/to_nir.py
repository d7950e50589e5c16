"""edgesnn model -> ``nir.NIRGraph`` (:func:`to_nir`) and ``.nir`` file (:func:`write`); the mapping is in :mod:`edgesnn.nir`.

Thresholds: edgesnn fires at ``v >= v_threshold`` (float32), NIR at ``v > v_threshold``, so the
graph records the largest float32 below edgesnn's threshold (``np.nextafter(thr, -inf)``): a NIR
simulator then fires on exactly the same float32 potentials, and :func:`edgesnn.nir.load` maps it
back to the original threshold bit for bit.

The graph is built without nir's own type check (nir 1.0.8 infers Conv2d shapes wrongly for
``groups > 1`` and non-square kernels); the shapes are those of a forward pass through the model.
"""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import first_line
from ..memopt.layers import pair
from .common import DEFAULT_DT, NIRError, check_dt, check_finite_node, int_values, nir_module, threshold_to_nir, to_numpy

if TYPE_CHECKING:  # pragma: no cover
    import nir

__all__ = ["to_nir", "write"]


def _leaves(body: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """The layers of a multi-step body in forward order: SeqToANN / nn.Sequential unwrapped."""
    from ..nn import SeqToANN

    out: List[Tuple[str, nn.Module]] = []
    if isinstance(body, SeqToANN):
        return _leaves(body.module, f"{prefix}.module" if prefix else "module")
    if isinstance(body, nn.Sequential):
        for name, child in body.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix, body)]


def _fold_bn(weight: torch.Tensor, bias: Optional[torch.Tensor], bn: nn.modules.batchnorm._BatchNorm):
    """``W' = W * g``, ``b' = (b - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)`` (eval statistics)."""
    if bn.running_mean is None or bn.running_var is None:
        raise NIRError("BatchNorm without running statistics cannot be folded")
    w64, mean, var = weight.detach().double(), bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(mean)
    g = gamma / torch.sqrt(var + bn.eps)
    b = bias.detach().double() if bias is not None else torch.zeros_like(mean)
    w = w64 * g.reshape(-1, *([1] * (w64.dim() - 1)))
    return w.float(), ((b - mean) * g + beta).float()


def _lif_params(name: str, m: nn.Module) -> Tuple[float, float, Optional[float], bool]:
    """``(tau, v_threshold, v_reset, decay_input)`` of a LIF-like node; refuses what NIR cannot hold."""
    from ..nn import LIF, ParametricLIF, RevLIF

    if isinstance(m, RevLIF):
        raise NIRError(f"layer {name}: RevLIF has no NIR primitive (its reversible update mixes channel groups, "
                       f"y = alpha*x + s with cross-group state coupling, which no NIR neuron node expresses); "
                       "export a LIF model (--neuron lif), or use --format onnx / torchscript")
    if isinstance(m, LIF):
        p = m.params
        return p.tau, p.v_threshold, p.v_reset, p.decay_input
    if isinstance(m, ParametricLIF):
        v_th = m.v_threshold
        v_th = float(v_th.detach()) if isinstance(v_th, torch.Tensor) else float(v_th)
        # the tau the node computes with on float32 inputs, 1 / sigmoid(w) in float32, not m.tau (float64): the two
        # can differ by one float32 step and flip a spike whose potential lands at the threshold. A float32 tau of
        # 1.0 (w >~ 17) keeps m.tau, just above 1 (NIR's LIF needs tau > 1), which float32 rounds to 1.0 as well.
        with torch.no_grad():
            tau = float(1.0 / torch.sigmoid(m.w.detach().float()))
        if not tau > 1.0:
            tau = m.tau
        return tau, v_th, m.v_reset, m.decay_input
    raise AssertionError(type(m))


def to_nir(model: nn.Module, dt: float = DEFAULT_DT, in_shape: Optional[Tuple[int, ...]] = None) -> "nir.NIRGraph":
    """Convert an edgesnn LIF model to a ``nir.NIRGraph`` (see the module docstring for the mapping).

    Args:
        model: a :class:`~edgesnn.models.SpikingClassifier` (its ``body`` is converted) or a
            multi-step ``nn.Sequential`` of ``SeqToANN`` layers and spiking nodes.
        dt: seconds per time step (a finite number > 0, Python or NumPy), used for NIR's time constants.
        in_shape: one sample's shape; taken from a ``SpikingClassifier`` when omitted.

    Raises :class:`NIRError` (one line, names the layer) for what NIR cannot represent.
    """
    nir = nir_module()
    from ..nn import LIF, ParametricLIF, RevLIF

    if not isinstance(model, nn.Module):  # (a checkpoint path was told to pass in_shape)
        raise NIRError(f"to_nir: model: expected an nn.Module (edgesnn.training.model_from_checkpoint(path) loads a "
                       f"checkpoint), got {type(model).__name__}")
    dt = check_dt(dt)
    body = getattr(model, "body", model)
    given = in_shape if in_shape is not None and np.size(in_shape) else getattr(model, "in_shape", None)
    if given is None or np.size(given) == 0:
        raise NIRError("to_nir: pass in_shape (one sample's shape) for a model without .in_shape")
    in_shape = int_values("to_nir: in_shape (one sample's shape)", given, 1, tuple(range(1, 9)))
    layers = _leaves(body)
    nodes: Dict[str, Any] = {"input": nir.Input(input_type=np.array(in_shape))}
    order: List[str] = ["input"]
    x = torch.zeros(1, *in_shape, **_like(model))  # one sample, one time step: tracks the shapes
    pending: Optional[Tuple[str, nn.Module, torch.Tensor, Optional[torch.Tensor]]] = None  # Linear/Conv awaiting a BN

    def emit(key: str, node) -> None:
        nodes[key] = node
        order.append(key)

    def flush() -> None:
        nonlocal pending
        if pending is None:
            return
        key, m, w, b = pending
        if isinstance(m, nn.Linear):
            node = nir.Affine(weight=to_numpy(w), bias=to_numpy(b)) if b is not None else nir.Linear(weight=to_numpy(w))
        else:
            bias = to_numpy(b) if b is not None else np.zeros(w.shape[0], dtype=np.float32)
            node = nir.Conv2d(input_shape=tuple(int(s) for s in pending_in[-2:]), weight=to_numpy(w), stride=tuple(m.stride),
                              padding=tuple(m.padding), dilation=tuple(m.dilation), groups=m.groups, bias=bias)
            # nir 1.0.8 infers [C_in / groups, ...] and a square kernel's output: record the real shapes
            node.input_type = {"input": np.array(pending_in)}
            node.output_type = {"output": np.array(pending_out)}
        emit(key, node)
        pending = None

    pending_in: Tuple[int, ...] = ()
    pending_out: Tuple[int, ...] = ()
    def run(where: str, m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # one sample through m, or one line naming it
        try:
            return m(x)
        except (RuntimeError, ValueError, IndexError) as e:
            raise NIRError(f"layer {where}: {type(m).__name__} cannot take one sample of shape {tuple(x.shape[1:])} "
                           f"(in_shape {in_shape}): {first_line(e, 300)}") from None

    with torch.no_grad():
        for i, (name, m) in enumerate(layers):
            key = f"l{i}_{type(m).__name__.lower()}"
            where = name or type(m).__name__
            if isinstance(m, (nn.Dropout, nn.Identity)):
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm) or type(m).__name__ == "FrozenBatchNorm":
                if pending is None:
                    raise NIRError(f"layer {where}: BatchNorm can be folded only into a directly preceding Linear or Conv2d")
                k, lin, w, b = pending
                if isinstance(lin, nn.Linear) and x.dim() != 2:  # BatchNorm normalises dim 1 of [B, ...]
                    raise NIRError(f"layer {where}: BatchNorm normalises dim 1 of the Linear's output "
                                   f"{list(x.shape[1:])} per sample, not its {w.shape[0]} output features (the last "
                                   "dim): it can be folded only after a Linear whose output is one vector per sample")
                if getattr(m, "num_features", x.shape[1]) != x.shape[1]:  # (not run: it may be in training mode)
                    raise NIRError(f"layer {where}: BatchNorm of {m.num_features} features after a layer of "
                                   f"{x.shape[1]} output channels")
                w, b = _fold_bn(w, b, m)
                pending = (k, lin, w, b)
                continue
            flush()
            if isinstance(m, nn.Linear):
                pending = (key, m, m.weight, m.bias)
                x = run(where, m, x)
            elif isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise NIRError(f"layer {where}: only zero-padded Conv2d with numeric padding maps to nir.Conv2d")
                pending_in = tuple(x.shape[1:])
                pending = (key, m, m.weight, m.bias)
                x = run(where, m, x)
                pending_out = tuple(x.shape[1:])
            elif isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or m.divisor_override is not None or (any(pair(m.padding)) and not m.count_include_pad):
                    raise NIRError(f"layer {where}: this AvgPool2d configuration (ceil_mode / divisor_override / "
                                   "count_include_pad=False) has no NIR equivalent")
                stride = m.stride if m.stride is not None else m.kernel_size
                emit(key, nir.AvgPool2d(kernel_size=np.array(pair(m.kernel_size)), stride=np.array(pair(stride)),
                                        padding=np.array(pair(m.padding))))
                x = run(where, m, x)
            elif isinstance(m, nn.Flatten):
                start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim  # NIR shapes have no batch dim
                end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
                x_in, x = x, run(where, m, x)
                emit(key, nir.Flatten(input_type=np.array(x_in.shape[1:]), start_dim=start, end_dim=end))
            elif isinstance(m, (LIF, ParametricLIF, RevLIF)):
                tau, v_th, v_reset, decay_input = _lif_params(where, m)
                if v_reset is None:
                    raise NIRError(f"layer {where}: a soft reset (v_reset=None: subtract the threshold) has no NIR "
                                   "equivalent (NIR neurons reset to v_reset); train with a hard reset")
                shape = tuple(x.shape[1:])
                full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731  (float64: tau * dt / dt == tau)
                emit(key, nir.LIF(tau=full(tau * dt), r=full(1.0 if decay_input else tau), v_leak=full(v_reset),
                                  v_threshold=full(threshold_to_nir(v_th)), v_reset=full(v_reset)))
            else:
                raise NIRError(f"layer {where}: {type(m).__name__} has no NIR mapping in edgesnn "
                               "(supported: Linear, Conv2d, BatchNorm folded, AvgPool2d, Flatten, LIF, ParametricLIF)")
        flush()
    for key, node in nodes.items():  # a NaN/Inf weight or parameter would make a graph no tool can run
        check_finite_node(key, node)
    nodes["output"] = nir.Output(output_type=np.array(x.shape[1:]))
    order.append("output")
    edges = list(zip(order[:-1], order[1:]))
    meta = {"producer": "edgesnn", "dt": float(dt), "readout": "mean over time",
            "timesteps": int(getattr(model, "timesteps", 0) or 0),
            "model_config": json.dumps(_plain(getattr(model, "config", {})))}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)


def _like(model: nn.Module) -> Dict[str, Any]:
    """``dtype`` and ``device`` of the model's first parameter (or buffer); float32 on the CPU if none."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.is_floating_point():
            return {"dtype": t.dtype, "device": t.device}
    return {"dtype": torch.float32, "device": torch.device("cpu")}


def _plain(obj):
    from ..checkpoint import encode_config

    try:
        return encode_config(obj)
    except Exception:  # pragma: no cover - a config we cannot encode: keep what JSON takes
        return json.loads(json.dumps(obj, default=str))


def _graph_bytes(graph: "nir.NIRGraph") -> bytes:
    """``graph`` serialized as a ``.nir`` file (HDF5), in memory."""
    nir = nir_module()
    buf = io.BytesIO()
    nir.write(buf, graph)
    return buf.getvalue()


def write(model: nn.Module, path: Union[str, Path], dt: float = DEFAULT_DT,
          in_shape: Optional[Tuple[int, ...]] = None) -> Path:
    """Convert ``model`` with :func:`to_nir` and write it to ``path`` (HDF5 ``.nir``, atomically); returns the path.
    ``in_shape``: one sample's shape, for a model without ``.in_shape`` (as for :func:`to_nir`).

    The file is built in memory first and then written in one go, so a failed write (disk full,
    a file size limit) is the one-line ``cannot write PATH: ...`` of every other output, and
    leaves the old file (or none) and no temp file (h5py writing through a Python file object
    cannot report such a failure: it crashed the process)."""
    from ..atomic import atomic_write, is_path_value

    if not is_path_value(path):
        raise NIRError(f"path: expected a file path (a non-empty str or os.PathLike), got {path!r:.80}")
    data = _graph_bytes(to_nir(model, dt=dt, in_shape=in_shape))
    return atomic_write(path, lambda fh: fh.write(data))
