"""``nir.NIRGraph`` or ``.nir`` file -> edgesnn ``SpikingClassifier`` (:func:`load`); the mapping is in :mod:`edgesnn.nir`.

Thresholds: NIR fires at ``v > v_threshold``, edgesnn at ``v >= v_threshold``; a loaded LIF gets
the smallest float32 above the graph's threshold (``np.nextafter(thr, +inf)``), so it fires on
exactly the float32 potentials a NIR simulator fires on (and a graph edgesnn wrote gets back the
exported threshold bit for bit).

Graphs are read without nir's own type check (nir 1.0.8 infers Conv2d shapes wrongly for
``groups > 1`` and non-square kernels); :func:`load` checks the shapes itself, node by node.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import warnings
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import first_line
from ..memory_guard import is_size_overflow
from ..models import SpikingClassifier
from ..shape_probe import probe_output
from .chain import chain as _chain
from .common import DEFAULT_DT, NIRError, check_dt, check_finite_node, int_values, nir_module, threshold_from_nir

if TYPE_CHECKING:  # pragma: no cover
    import nir

__all__ = ["load", "NIRClassifier"]


class NIRClassifier(SpikingClassifier):
    """The model :func:`load` makes of a graph from another tool: a :class:`SpikingClassifier` whose
    logits are the graph's output averaged over T and flattened, ``[B, prod(out_shape)]``.

    ``body`` keeps the graph's own output shape (``[T, B, *out_shape]``, e.g. a conv output
    ``[C, H, W]``: what a NIR simulator gives), and ``to_nir`` writes that shape back; the flat
    logits are what ``config["num_classes"]``, cross-entropy and :func:`~edgesnn.training.loop.evaluate`
    take (one class per output value, in C order). For a 1-D output the flattening changes nothing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, *in_shape]`` or ``[T, B, *in_shape]`` -> logits ``[B, prod(out_shape)]``."""
        return super().forward(x).flatten(1)


def _uniform(value: Any, what: str) -> float:
    """The one value a NIR parameter array holds (edgesnn's LIF has scalar parameters).

    A missing (``None``) or non-numeric value is a one-line :class:`NIRError` naming ``what``
    (not NaN, which would be compared as if it were a parameter, nor a NumPy traceback).
    """
    try:
        if value is None or isinstance(value, (str, bytes)):
            raise TypeError(type(value).__name__)
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise NIRError(f"{what}: expected real numbers (one value or one per neuron), got {first_line(repr(value), 60)} "
                       f"({first_line(e, 60)})") from None
    u = np.unique(arr)
    if u.size != 1:
        raise NIRError(f"{what}: edgesnn nodes take one value per layer, the graph has {u.size} different ones")
    return float(u[0])


def _close(a: float, b: float) -> bool:
    """Equal up to float32 rounding of the graph's arrays."""
    return bool(np.isclose(a, b, rtol=1e-6, atol=1e-12))


def _meta(graph: Any, key: str, default: Any = None) -> Any:
    """``graph.metadata[key]`` as a plain Python value (bytes decoded, NumPy scalars unwrapped)."""
    md = getattr(graph, "metadata", None)
    if not isinstance(md, dict) or key not in md:
        return default
    v = md[key]
    if isinstance(v, bytes):
        v = v.decode("utf8")
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def _lif_from_nir(key: str, node: Any, dt: float, backend: str) -> nn.Module:
    """edgesnn's LIF for a NIR ``LIF`` (or ``CubaLIF`` with ``tau_syn = dt``); refuses what it cannot match."""
    from ..nn import LIF

    nir = nir_module()
    if isinstance(node, nir.CubaLIF):
        tau_syn = _uniform(node.tau_syn, f"node {key}: tau_syn")
        if not _close(tau_syn, dt):
            how = "longer" if tau_syn > dt else "shorter"
            raise NIRError(f"node {key}: CubaLIF with a synaptic time constant ({tau_syn:g} s) {how} than one step "
                           f"(dt={dt:g} s) has a synaptic current state that edgesnn's LIF does not have "
                           "(only tau_syn = dt loads; pass load(graph, dt=...) if dt is wrong)")
        tau = _uniform(node.tau_mem, f"node {key}: tau_mem") / dt
        w_in = _uniform(node.w_in, f"node {key}: w_in")
        r, r_name = _uniform(node.r, f"node {key}: r") * w_in, "r * w_in"
    else:
        tau = _uniform(node.tau, f"node {key}: tau") / dt
        r, r_name = _uniform(node.r, f"node {key}: r"), "r"
    snapped = round(tau, 9)  # tau_N / dt in floating point: 4.000000000000001 -> 4.0
    if math.isfinite(tau) and abs(snapped - tau) <= 1e-12 * abs(tau):
        tau = snapped
    if not (math.isfinite(tau) and tau > 1.0):
        raise NIRError(f"node {key}: tau / dt = {tau:g} steps; edgesnn's LIF needs a finite tau > 1 step "
                       f"(is dt={dt:g} s right? pass load(graph, dt=...))")
    if _close(r, 1.0) or _close(r, tau):  # a tau within rounding of 1 passes both: the nearer one decides
        decay_input = abs(r - 1.0) <= abs(r - tau)
    else:
        raise NIRError(f"node {key}: {r_name} = {r:g}; edgesnn's LIF has {r_name} = 1 (decay_input=True) or "
                       f"tau/dt = {tau:g} (decay_input=False) with dt={dt:g} s (is dt right? pass load(graph, dt=...))")
    v_reset = _uniform(node.v_reset, f"node {key}: v_reset")
    v_leak = _uniform(node.v_leak, f"node {key}: v_leak")
    if not _close(v_leak, v_reset):
        raise NIRError(f"node {key}: v_leak ({v_leak:g}) != v_reset ({v_reset:g}); edgesnn's LIF leaks towards v_reset")
    v_th = threshold_from_nir(_uniform(node.v_threshold, f"node {key}: v_threshold"))  # NIR's v > thr as v >= v_th
    try:  # step_mode "m": the loaded body always runs [T, B, ...] (no 4-D input warning)
        return LIF(tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=decay_input, backend=backend, step_mode="m")
    except ValueError as e:
        raise NIRError(f"node {key}: nir.{type(node).__name__}: {first_line(e, 500)}") from None


def _ints(v: Any) -> Tuple[int, ...]:
    """An int, list or array as a tuple of ints."""
    return tuple(int(i) for i in np.ravel(v))


def _type_shape(key: str, types: Any, name: str) -> Optional[Tuple[int, ...]]:
    """The shape a NIR Input/Output node ``key`` records (``None`` when it records none).

    Refuses sizes that are not positive integers (``[2.5, 8]`` is not truncated to ``[2, 8]``).
    """
    t = types.get(name) if isinstance(types, dict) else None
    if t is None:
        return None
    try:
        arr = np.ravel(np.asarray(t, dtype=np.float64))
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if not bool(np.all(np.isfinite(arr) & (arr == np.round(arr)) & (arr >= 1))):
        raise NIRError(f"node {key}: the {name} shape {arr.tolist()} is not a list of positive integers")
    return _ints(arr)


def _stateless(key: str, node: Any, shape: Tuple[int, ...]) -> nn.Module:
    """The torch layer for a NIR Affine / Linear / Conv2d / AvgPool2d / Flatten node fed ``shape``."""
    nir = nir_module()
    name = f"node {key}: nir.{type(node).__name__}"
    if isinstance(node, (nir.Affine, nir.Linear)):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        if w.dim() != 2:
            raise NIRError(f"{name} weight of shape {tuple(w.shape)}; expected [out, in]")
        if not shape or shape[-1] != w.shape[1]:
            raise NIRError(f"{name} takes {w.shape[1]} inputs (weight {tuple(w.shape)}), its input has shape {shape}")
        lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
        with torch.no_grad():
            lin.weight.copy_(w)
            if isinstance(node, nir.Affine):
                lin.bias.copy_(_bias(name, node.bias, w.shape[0]))
        return lin
    if isinstance(node, nir.Conv2d):
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
        groups = int_values(f"{name} groups", node.groups, 1, (1,))[0]
        if w.dim() != 4 or groups < 1 or w.shape[0] % groups:
            raise NIRError(f"{name} weight of shape {tuple(w.shape)} with groups={groups}; expected [out, in/groups, kh, kw]")
        if len(shape) != 3 or shape[0] != w.shape[1] * groups:
            raise NIRError(f"{name} takes [{w.shape[1] * groups}, H, W] inputs (weight {tuple(w.shape)}, groups={groups}), "
                           f"its input has shape {shape}")
        pad = node.padding if isinstance(node.padding, str) else int_values(f"{name} padding", node.padding, 0)
        stride, dilation = (int_values(f"{name} {f}", getattr(node, f), 1) for f in ("stride", "dilation"))
        try:  # e.g. padding="same" with a stride > 1, or an unknown padding string
            conv = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=pad,
                             dilation=dilation, groups=groups, bias=True)
        except (ValueError, RuntimeError) as e:
            raise NIRError(f"{name}: {first_line(e, 500)}") from None
        with torch.no_grad():
            conv.weight.copy_(w)
            conv.bias.copy_(_bias(name, node.bias, w.shape[0]))
        return conv
    if isinstance(node, nir.AvgPool2d):
        kernel, stride = (int_values(f"{name} {f}", getattr(node, f), 1) for f in ("kernel_size", "stride"))
        return nn.AvgPool2d(kernel, stride, int_values(f"{name} padding", node.padding, 0))
    if isinstance(node, nir.Flatten):
        start, end = (int_values(f"{name} {f}", getattr(node, f), None, (1,))[0] for f in ("start_dim", "end_dim"))
        for f, d in (("start_dim", start), ("end_dim", end)):  # (a negative one would reach the batch dim)
            if not -len(shape) <= d < len(shape):
                raise NIRError(f"{name} {f} {d} is out of range for its input of shape {shape} (dims "
                               f"{-len(shape)} to {len(shape) - 1}; NIR shapes have no batch dim)")
        start = start + 1 if start >= 0 else start  # NIR dims exclude the batch dim
        end = end + 1 if end >= 0 else end
        return nn.Flatten(start, end)
    raise NIRError(f"{name} has no edgesnn equivalent "
                   "(loaded: Affine, Linear, Conv2d, AvgPool2d, Flatten, LIF, CubaLIF with tau_syn = dt)")


def _bias(name: str, bias: Any, n: int) -> torch.Tensor:
    """A NIR bias as ``n`` float32 values, or a one-line error."""
    b = torch.as_tensor(np.asarray(bias, dtype=np.float32))
    if b.numel() != n:
        raise NIRError(f"{name} bias of shape {tuple(b.shape)}; expected {n} values (one per output)")
    return b.reshape(n)


def _out_shape(key: str, node: Any, layer: nn.Module, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """One sample of ``shape`` through ``layer`` (a sample above ``META_PROBE_BYTES`` on the ``meta``
    device: shapes only, nothing allocated; an input of ``[1, 100000, 100000]`` is sized, not built):
    its output shape, or a one-line error naming the node."""
    try:
        y = probe_output(layer, tuple(shape))
    except (RuntimeError, IndexError, ValueError) as e:
        if is_size_overflow(e):
            raise NIRError(f"node {key}: nir.{type(node).__name__} input of shape {shape} holds {math.prod(shape)} "
                           "values, more than a tensor's 64-bit sizes can address") from None
        raise NIRError(f"node {key}: nir.{type(node).__name__} cannot take an input of shape {shape}: "
                       f"{first_line(e, 1000)}") from None
    return tuple(y.shape[1:])


def _check_neurons(key: str, node: Any, shape: Tuple[int, ...]) -> None:
    """A neuron node's parameter arrays hold one value or one per input element."""
    n = math.prod(shape)  # Python integers: np.prod wraps past int64
    for field in ("tau", "tau_mem", "tau_syn", "r", "w_in", "v_leak", "v_threshold", "v_reset"):
        value = getattr(node, field, None)
        size = 1 if value is None else np.asarray(value).size
        if size not in (1, n):
            raise NIRError(f"node {key}: nir.{type(node).__name__} {field} holds {size} values, its input has shape "
                           f"{shape} ({n} values)")


def _resolve_dt(graph: Any, dt: Any) -> float:
    """``dt`` checked; else the graph's ``metadata["dt"]``; else :data:`DEFAULT_DT` with a warning."""
    if dt is not None:
        return check_dt(dt, "dt")
    recorded = _meta(graph, "dt")
    if recorded is None:
        warnings.warn(f"nir: the graph records no dt (metadata['dt']); assuming dt = {DEFAULT_DT:g} s per time step. "
                      "Pass load(graph, dt=...) with the seconds per step its time constants were made for",
                      UserWarning, stacklevel=3)
        return DEFAULT_DT
    return check_dt(recorded, "metadata['dt'] of the graph (pass load(graph, dt=...) to override)")


def _read(path: str) -> "nir.NIRGraph":
    """The graph in the ``.nir`` file ``path``; a one-line error for a missing file or one that is not a NIR graph."""
    nir = nir_module()
    if not os.path.exists(path):
        raise FileNotFoundError(f"nir: no such file: {path}")
    if not os.path.isfile(path):
        raise NIRError(f"nir: {path} is not a file (expected a .nir graph file)")
    try:
        return nir.read(path, type_check=False)  # nir 1.0.8 mis-infers grouped / non-square Conv2d; load checks shapes
    except Exception as e:  # h5py's OSError for a non-HDF5 file, KeyError for HDF5 without a NIR graph, ...
        untyped = _untyped_node_groups(path)
        if untyped:
            raise NIRError(f"nir: {path}: node group(s) {untyped[:5]} hold no node type: nir.write stores a node name "
                           "containing '/' (e.g. 'net/lif') as nested HDF5 groups that nir.read cannot read back; "
                           "name the nodes without '/' and write the graph again") from None
        raise NIRError(f"nir: {path} is not a NIR graph file (nir.read: {type(e).__name__}: {first_line(e, 300)})") from None


def _untyped_node_groups(path: str) -> List[str]:
    """Names of the groups under ``node/nodes`` of the HDF5 file ``path`` with no ``type`` (what
    ``nir.write`` makes of a node name with a ``/``); ``[]`` when there are none or it is not such a file."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            nodes = f["node"]["nodes"]
            return sorted(k for k in nodes if isinstance(nodes[k], h5py.Group) and "type" not in nodes[k])
    except Exception:  # noqa: BLE001 - not HDF5, no node/nodes group, ...: the caller's message stands
        return []


def _resolve_timesteps(graph: Any, timesteps: Any) -> int:
    """``timesteps`` checked (an integer >= 1; ``4.0`` is 4, ``2.5`` is refused); else the graph's
    ``metadata["timesteps"]`` (checked the same way; 0 or absent: none recorded); else 4."""
    def as_int(v: Any, what: str) -> int:
        if isinstance(v, str) and what != "timesteps":  # an attribute HDF5 gave back as text
            v = v.strip()
            v = int(v) if v.isdigit() else v
        ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) \
            and float(v) == int(v) and int(v) >= 1
        if not ok:
            raise NIRError(f"{what}: expected an integer >= 1, got {v!r}")
        return int(v)

    if timesteps is not None:
        return as_int(timesteps, "timesteps")
    recorded = _meta(graph, "timesteps")
    if recorded is None or (isinstance(recorded, numbers.Real) and recorded == 0):  # edgesnn writes 0: no T known
        return 4
    return as_int(recorded, "metadata['timesteps'] of the graph (pass load(graph, timesteps=...) to override)")


def load(graph: Union["nir.NIRGraph", str, "os.PathLike[str]"], dt: Optional[float] = None,
         timesteps: Optional[int] = None, backend: str = "auto") -> SpikingClassifier:
    """A ``nir.NIRGraph`` (or the path of a ``.nir`` file) as an edgesnn :class:`SpikingClassifier`.

    Args:
        graph: the graph or its file (``str`` or any ``os.PathLike``).
        dt: seconds per time step (finite, > 0); default the graph's ``metadata["dt"]``, else
            :data:`DEFAULT_DT` with a warning.
        timesteps: T for static inputs (direct encoding); default the graph's ``metadata["timesteps"]``, else 4.
        backend: the LIF nodes' backend (``"auto"``, ``"torch"``, ``"numba"``, ``"cuda"``, ``"reference"``).

    The model's ``body`` runs ``[T, B, *in_shape] -> [T, B, *out_shape]`` (the graph's output shape);
    the model averages over T and flattens: logits ``[B, prod(out_shape)]``, ``config["num_classes"]``
    of them (:class:`NIRClassifier`; a graph edgesnn wrote comes back as its ``build_model`` network). Loaded: a chain Input -> (Affine | Linear | Conv2d | AvgPool2d | Flatten |
    LIF | CubaLIF with tau_syn = dt)* -> Output, each neuron node with one value per parameter.
    Raises :class:`NIRError` (one line, naming the node) for nodes edgesnn cannot represent exactly,
    branches, recurrence (a cycle of edges or a nested subgraph holding one, named) and edges naming no node, NaN/Inf weights or parameters, shapes that do not
    fit together, a bad ``timesteps`` and a file that is not a NIR graph; ``FileNotFoundError``
    (one line) for a missing file.
    """
    nir = nir_module()
    from ..kernels import dispatch
    from ..nn import LIF, SeqToANN

    try:
        dispatch.resolve_backend(backend, torch.empty(0))
    except ValueError as e:
        raise NIRError(str(e)) from None
    if isinstance(graph, (str, os.PathLike)):
        graph = _read(os.fspath(graph))
    if not isinstance(graph, nir.NIRGraph):
        raise NIRError(f"graph: expected a nir.NIRGraph or the path of a .nir file, got {type(graph).__name__}")
    dt = _resolve_dt(graph, dt)
    T = _resolve_timesteps(graph, timesteps)
    chain = _chain(graph)
    for key in chain[1:-1]:
        check_finite_node(key, graph.nodes[key])
    in_shape = _type_shape(chain[0], graph.nodes[chain[0]].input_type, "input")
    if not in_shape:
        raise NIRError(f"node {chain[0]}: the input node records no shape")
    shape = in_shape
    layers: List[nn.Module] = []
    for key in chain[1:-1]:
        node = graph.nodes[key]
        if isinstance(node, (nir.LIF, nir.CubaLIF)):
            _check_neurons(key, node, shape)
            layers.append(_lif_from_nir(key, node, dt, backend))
        else:
            layer = _stateless(key, node, shape)
            shape = _out_shape(key, node, layer, shape)
            layers.append(SeqToANN(layer))
    recorded = _type_shape(chain[-1], graph.nodes[chain[-1]].output_type, "output")
    if recorded and math.prod(recorded) != math.prod(shape):
        raise NIRError(f"node {chain[-1]}: the output node records shape {recorded}, the chain gives {shape}")
    body = nn.Sequential(*layers)
    config = {"name": "nir", "in_shape": list(in_shape), "num_classes": math.prod(shape), "timesteps": T, "dt": dt,
              "source_config": _meta(graph, "model_config")}
    if not any(isinstance(m, LIF) for m in layers):
        raise NIRError("graph: no LIF node; nothing spiking to load")
    model = NIRClassifier(body, T, in_shape, config)
    return _as_edgesnn_model(model, config["source_config"], backend) or model


def _signature(m: nn.Module):
    """What a stateless layer computes, independent of how its arguments were spelled (2 vs (2, 2))."""
    from torch.nn.modules.utils import _pair

    inner = getattr(m, "module", m)
    if isinstance(inner, nn.Conv2d):
        return ("conv", inner.in_channels, inner.out_channels, inner.kernel_size, inner.stride, inner.padding,
                inner.dilation, inner.groups, inner.bias is not None)
    if isinstance(inner, nn.Linear):
        return ("linear", inner.in_features, inner.out_features, inner.bias is not None)
    if isinstance(inner, nn.AvgPool2d):
        stride = inner.stride if inner.stride is not None else inner.kernel_size
        return ("avgpool", _pair(inner.kernel_size), _pair(stride), _pair(inner.padding), inner.ceil_mode,
                inner.count_include_pad, inner.divisor_override)
    if isinstance(inner, nn.Flatten):
        return ("flatten", inner.start_dim, inner.end_dim)
    return repr(m)


def _as_edgesnn_model(model, source_config, backend: str):
    """For a graph that edgesnn exported: the same network as a :func:`~edgesnn.models.build_model` model
    (its config with ``batchnorm=False``: BatchNorm was folded), so it can be checkpointed and exported
    again. Used only when that model has exactly the loaded layers, weights shapes and LIF
    parameters; otherwise ``None`` (the generic model is returned)."""
    from ..checkpoint import decode_config
    from ..models import build_model
    from ..nn import LIF

    if not isinstance(source_config, str) or not source_config:
        return None
    try:
        cfg = decode_config(json.loads(source_config))
        cfg = {**cfg, "batchnorm": False, "timesteps": model.timesteps, "node": {**cfg.get("node", {}), "backend": backend}}
        ref = build_model(**cfg)
    except Exception:  # not an edgesnn config (or a newer one): keep the generic model
        return None
    mine, theirs = model.body, ref.body
    if len(mine) != len(theirs) or tuple(ref.in_shape) != tuple(model.in_shape):
        return None
    for a, b in zip(mine, theirs):
        if type(a) is not type(b):
            return None
        if isinstance(a, LIF):
            pa, pb = a.params, b.params
            # thresholds as the nodes compare them (float32): the config's 0.7 is the loaded float32(0.7)
            if (pa.tau, np.float32(pa.v_threshold), pa.v_reset, pa.decay_input) != \
                    (pb.tau, np.float32(pb.v_threshold), pb.v_reset, pb.decay_input):
                return None
        elif _signature(a) != _signature(b):
            return None
    sa, sb = model.state_dict(), ref.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return None
    ref.load_state_dict(sa)
    return ref
