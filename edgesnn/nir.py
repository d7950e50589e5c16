"""NIR interchange (nir 1.0.8): edgesnn LIF models to and from the Neuromorphic Intermediate Representation.

* :func:`to_nir` / :func:`write`: an edgesnn model (``SpikingClassifier`` or a multi-step
  ``nn.Sequential`` body) -> ``nir.NIRGraph`` (a chain ``input -> ... -> output``); ``edgesnn
  export --format nir`` writes it to a ``.nir`` file (HDF5).
* :func:`load`: a ``nir.NIRGraph`` (or a ``.nir`` file) -> an edgesnn :class:`SpikingClassifier`
  with the same outputs.

Layers: ``Linear`` -> ``nir.Affine`` (``nir.Linear`` without bias), ``Conv2d`` -> ``nir.Conv2d``,
``BatchNorm1d/2d`` (eval statistics) folded into the preceding Linear/Conv2d, ``AvgPool2d`` ->
``nir.AvgPool2d``, ``Flatten`` -> ``nir.Flatten``, ``Dropout``/``Identity`` dropped, ``LIF`` and
``ParametricLIF`` -> ``nir.LIF``. ``RevLIF`` is refused: no NIR primitive expresses its coupled
channel groups. ``MaxPool2d`` and anything else are refused by name.

LIF mapping (edgesnn's LIF is SpikingJelly's ``LIFNode``, discrete time, ``tau`` in steps)::

    edgesnn, decay_input=True :  h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) / tau
    edgesnn, decay_input=False:  h[t] = v[t-1] - (v[t-1] - v_reset) / tau + x[t]
    spike s[t] = (h[t] >= v_threshold);  v[t] = v_reset if s[t] else h[t]      (hard reset)

    NIR LIF:  tau_N dv/dt = (v_leak - v) + R I;  spike when v > v_threshold; v -> v_reset

    One forward-Euler step of length dt gives  v += (dt / tau_N) ((v_leak - v) + R I), so with

        tau_N = tau * dt,   v_leak = v_reset,   R = 1 (decay_input=True) or R = tau (decay_input=False)

    NIR's LIF reproduces edgesnn's update exactly, with I = the output of the preceding layer.

``dt`` (seconds per time step) is free in edgesnn; the default 1e-4 s is SpikingJelly's and most
NIR tools' default, and the graph records it (``metadata["dt"]``) so :func:`load` inverts the
mapping exactly. The same convention is SpikingJelly's ``nir_exchange``, so its importer reads
these graphs with the same ``dt``. Not representable in NIR and therefore refused: a soft reset
(``v_reset=None``: subtract the threshold), RevLIF. Training-only settings (surrogate gradient,
``detach_reset``, backend) are not part of NIR; :func:`load` uses edgesnn's defaults.
Two fine points: NIR writes the firing condition as ``v > v_threshold``, edgesnn (like
SpikingJelly) fires at ``>=``; they differ only when a potential equals the threshold exactly.
And NIR graphs carry no readout: the graph's output is the last layer's value at every time
step; edgesnn's classifier averages it over the T steps (``metadata["readout"] = "mean over
time"``) and repeats a static input over T steps (direct encoding).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from .errors import DependencyError, UsageError

__all__ = ["NIRError", "to_nir", "write", "load", "DEFAULT_DT"]

#: Seconds per time step unless told otherwise (SpikingJelly's and most NIR tools' default).
DEFAULT_DT = 1e-4


class NIRError(UsageError):
    """The model or graph cannot be converted faithfully (the message says which layer and why)."""


def _nir():
    try:
        import nir
    except ImportError:
        raise DependencyError("NIR interchange needs the nir package: pip install 'edgesnn[nir]' (nir 1.0.8)") from None
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


# ------------------------------------------------------------------------------------------ export


def _leaves(body: nn.Module, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """The layers of a multi-step body in forward order: SeqToANN / nn.Sequential unwrapped."""
    from .nn import SeqToANN

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
    from .nn import LIF, ParametricLIF, RevLIF

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
        return m.tau, v_th, m.v_reset, m.decay_input
    raise AssertionError(type(m))


def to_nir(model: nn.Module, dt: float = DEFAULT_DT, in_shape: Optional[Tuple[int, ...]] = None):
    """Convert an edgesnn LIF model to a ``nir.NIRGraph`` (see the module docstring for the mapping).

    Args:
        model: a :class:`~edgesnn.models.SpikingClassifier` (its ``body`` is converted) or a
            multi-step ``nn.Sequential`` of ``SeqToANN`` layers and spiking nodes.
        dt: seconds per time step (> 0), used for NIR's time constants.
        in_shape: one sample's shape; taken from a ``SpikingClassifier`` when omitted.

    Raises :class:`NIRError` (one line, names the layer) for what NIR cannot represent.
    """
    nir = _nir()
    from .nn import LIF, ParametricLIF, RevLIF

    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise NIRError(f"dt: expected seconds per time step > 0, got {dt!r}")
    body = getattr(model, "body", model)
    in_shape = tuple(in_shape or getattr(model, "in_shape", ()) or ())
    if not in_shape:
        raise NIRError("to_nir: pass in_shape (one sample's shape) for a model without .in_shape")
    layers = _leaves(body)
    nodes: Dict[str, Any] = {"input": nir.Input(input_type=np.array(in_shape))}
    order: List[str] = ["input"]
    x = torch.zeros(1, *in_shape)  # one sample, one time step: tracks the shapes
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
            node = nir.Affine(weight=_np(w), bias=_np(b)) if b is not None else nir.Linear(weight=_np(w))
        else:
            bias = _np(b) if b is not None else np.zeros(w.shape[0], dtype=np.float32)
            node = nir.Conv2d(input_shape=tuple(int(s) for s in pending_in[-2:]), weight=_np(w), stride=tuple(m.stride),
                              padding=tuple(m.padding), dilation=tuple(m.dilation), groups=m.groups, bias=bias)
        emit(key, node)
        pending = None

    pending_in: Tuple[int, ...] = ()
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
                w, b = _fold_bn(w, b, m)
                pending = (k, lin, w, b)
                continue
            flush()
            if isinstance(m, nn.Linear):
                pending = (key, m, m.weight, m.bias)
                x = m(x)
            elif isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    raise NIRError(f"layer {where}: only zero-padded Conv2d with numeric padding maps to nir.Conv2d")
                pending_in = tuple(x.shape[1:])
                pending = (key, m, m.weight, m.bias)
                x = m(x)
            elif isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or m.divisor_override is not None or (m.padding and not m.count_include_pad):
                    raise NIRError(f"layer {where}: this AvgPool2d configuration (ceil_mode / divisor_override / "
                                   "count_include_pad=False) has no NIR equivalent")
                pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
                emit(key, nir.AvgPool2d(kernel_size=pair(m.kernel_size), stride=pair(m.stride), padding=pair(m.padding)))
                x = m(x)
            elif isinstance(m, nn.Flatten):
                start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim  # NIR shapes have no batch dim
                end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
                emit(key, nir.Flatten(input_type=np.array(x.shape[1:]), start_dim=start, end_dim=end))
                x = m(x)
            elif isinstance(m, (LIF, ParametricLIF, RevLIF)):
                tau, v_th, v_reset, decay_input = _lif_params(where, m)
                if v_reset is None:
                    raise NIRError(f"layer {where}: a soft reset (v_reset=None: subtract the threshold) has no NIR "
                                   "equivalent (NIR neurons reset to v_reset); train with a hard reset")
                shape = tuple(x.shape[1:])
                full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731  (float64: tau * dt / dt == tau)
                emit(key, nir.LIF(tau=full(tau * dt), r=full(1.0 if decay_input else tau), v_leak=full(v_reset),
                                  v_threshold=full(v_th), v_reset=full(v_reset)))
            else:
                raise NIRError(f"layer {where}: {type(m).__name__} has no NIR mapping in edgesnn "
                               "(supported: Linear, Conv2d, BatchNorm folded, AvgPool2d, Flatten, LIF, ParametricLIF)")
        flush()
    nodes["output"] = nir.Output(output_type=np.array(x.shape[1:]))
    order.append("output")
    edges = list(zip(order[:-1], order[1:]))
    meta = {"producer": "edgesnn", "dt": float(dt), "readout": "mean over time",
            "timesteps": int(getattr(model, "timesteps", 0) or 0),
            "model_config": json.dumps(_plain(getattr(model, "config", {})))}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _plain(obj):
    from .checkpoint import encode_config

    try:
        return encode_config(obj)
    except Exception:  # pragma: no cover - a config we cannot encode: keep what JSON takes
        return json.loads(json.dumps(obj, default=str))


def write(model: nn.Module, path: Union[str, Path], dt: float = DEFAULT_DT) -> Path:
    """Convert ``model`` with :func:`to_nir` and write it to ``path`` (HDF5 ``.nir``, atomically)."""
    nir = _nir()
    from .atomic import atomic_write

    graph = to_nir(model, dt=dt)
    return atomic_write(path, lambda fh: nir.write(fh, graph), mode="w+b")  # h5py reads back while writing


# ------------------------------------------------------------------------------------------ import


def _uniform(value, what: str) -> float:
    arr = np.asarray(value, dtype=np.float64)
    u = np.unique(arr)
    if u.size != 1:
        raise NIRError(f"{what}: edgesnn nodes take one value per layer, the graph has {u.size} different ones")
    return float(u[0])


def _close(a: float, b: float) -> bool:
    return bool(np.isclose(a, b, rtol=1e-6, atol=1e-12))


def _meta(graph, key: str, default=None):
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


def _lif_from_nir(key: str, node, dt: float) -> nn.Module:
    from .nn import LIF

    nir = _nir()
    if isinstance(node, nir.CubaLIF):
        tau_syn = _uniform(node.tau_syn, f"node {key}: tau_syn")
        if not _close(tau_syn, dt):
            raise NIRError(f"node {key}: CubaLIF with a synaptic time constant ({tau_syn:g} s) longer than one step "
                           f"(dt={dt:g} s) has a synaptic current state that edgesnn's LIF does not have")
        tau = _uniform(node.tau_mem, f"node {key}: tau_mem") / dt
        w_in = _uniform(node.w_in, f"node {key}: w_in")
        r = _uniform(node.r, f"node {key}: r") * w_in
    else:
        tau = _uniform(node.tau, f"node {key}: tau") / dt
        r = _uniform(node.r, f"node {key}: r")
    snapped = round(tau, 9)  # tau_N / dt in floating point: 4.000000000000001 -> 4.0
    if math.isfinite(tau) and abs(snapped - tau) <= 1e-12 * abs(tau):
        tau = snapped
    if not (math.isfinite(tau) and tau > 1.0):
        raise NIRError(f"node {key}: tau / dt = {tau:g} steps; edgesnn's LIF needs a finite tau > 1 step "
                       f"(is dt={dt:g} s right? pass load(graph, dt=...))")
    if _close(r, 1.0):
        decay_input = True
    elif _close(r, tau):
        decay_input = False
    else:
        raise NIRError(f"node {key}: r = {r:g}; edgesnn's LIF has r = 1 (decay_input=True) or r = tau/dt = {tau:g} "
                       "(decay_input=False)")
    v_reset = _uniform(node.v_reset, f"node {key}: v_reset")
    v_leak = _uniform(node.v_leak, f"node {key}: v_leak")
    if not _close(v_leak, v_reset):
        raise NIRError(f"node {key}: v_leak ({v_leak:g}) != v_reset ({v_reset:g}); edgesnn's LIF leaks towards v_reset")
    v_th = _uniform(node.v_threshold, f"node {key}: v_threshold")
    return LIF(tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=decay_input)


def _chain(graph) -> List[str]:
    """Node names from the Input to the Output; refuses anything but a simple chain."""
    nir = _nir()
    succ: Dict[str, List[str]] = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise NIRError(f"graph: edgesnn loads feed-forward chains with one input node, found {len(inputs)}")
    chain, seen = [inputs[0]], {inputs[0]}
    while True:
        nxt = succ.get(chain[-1], [])
        if not nxt:
            break
        if len(nxt) > 1:
            raise NIRError(f"graph: node {chain[-1]} feeds {len(nxt)} nodes; edgesnn loads feed-forward chains only")
        if nxt[0] in seen:
            raise NIRError(f"graph: recurrent edge {chain[-1]} -> {nxt[0]}; edgesnn loads feed-forward chains only")
        chain.append(nxt[0])
        seen.add(nxt[0])
    if len(seen) != len(graph.nodes):
        raise NIRError(f"graph: nodes not on the input-output chain: {sorted(set(graph.nodes) - seen)}")
    if not isinstance(graph.nodes[chain[-1]], nir.Output):
        raise NIRError(f"graph: the chain ends in {chain[-1]}, not an output node")
    return chain


def load(graph, dt: Optional[float] = None, timesteps: Optional[int] = None, backend: str = "auto"):
    """A ``nir.NIRGraph`` (or the path of a ``.nir`` file) as an edgesnn :class:`SpikingClassifier`.

    Args:
        graph: the graph or its file.
        dt: seconds per time step; default the graph's ``metadata["dt"]``, else :data:`DEFAULT_DT`.
        timesteps: T for static inputs (direct encoding); default the graph's ``metadata["timesteps"]``, else 4.
        backend: the LIF nodes' backend.

    The model's ``body`` runs ``[T, B, *in_shape] -> [T, B, *out_shape]``; the classifier
    averages over T. Raises :class:`NIRError` for nodes edgesnn cannot represent exactly.
    """
    nir = _nir()
    from .models import SpikingClassifier
    from .nn import LIF, SeqToANN

    if isinstance(graph, (str, Path)):
        if not Path(graph).is_file():
            raise FileNotFoundError(f"nir: no such file: {graph}")
        graph = nir.read(str(graph))
    dt = float(dt if dt is not None else _meta(graph, "dt", DEFAULT_DT))
    T = int(timesteps if timesteps is not None else (_meta(graph, "timesteps", 0) or 4))
    chain = _chain(graph)
    in_shape = tuple(int(s) for s in np.asarray(graph.nodes[chain[0]].input_type["input"]).reshape(-1))
    layers: List[nn.Module] = []
    for key in chain[1:-1]:
        node = graph.nodes[key]
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
            if w.dim() != 2:
                raise NIRError(f"node {key}: weight of shape {tuple(w.shape)}; expected [out, in]")
            lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            with torch.no_grad():
                lin.weight.copy_(w)
                if isinstance(node, nir.Affine):
                    lin.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
            layers.append(SeqToANN(lin))
        elif isinstance(node, nir.Conv2d):
            w = torch.as_tensor(np.asarray(node.weight, dtype=np.float32))
            pad = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in np.ravel(node.padding))
            conv = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                             stride=tuple(int(s) for s in np.ravel(node.stride)), padding=pad,
                             dilation=tuple(int(d) for d in np.ravel(node.dilation)), groups=int(node.groups), bias=True)
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float32)))
            layers.append(SeqToANN(conv))
        elif isinstance(node, nir.AvgPool2d):
            pool = nn.AvgPool2d(tuple(int(k) for k in np.ravel(node.kernel_size)), tuple(int(s) for s in np.ravel(node.stride)),
                                tuple(int(p) for p in np.ravel(node.padding)))
            layers.append(SeqToANN(pool))
        elif isinstance(node, nir.Flatten):
            start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
            end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
            layers.append(SeqToANN(nn.Flatten(start, end)))
        elif isinstance(node, (nir.LIF, nir.CubaLIF)):
            lif = _lif_from_nir(key, node, dt)
            lif.backend = backend
            layers.append(lif)
        else:
            raise NIRError(f"node {key}: nir.{type(node).__name__} has no edgesnn equivalent "
                           "(loaded: Affine, Linear, Conv2d, AvgPool2d, Flatten, LIF, CubaLIF with tau_syn = dt)")
    body = nn.Sequential(*layers)
    out_shape = tuple(int(s) for s in np.asarray(graph.nodes[chain[-1]].output_type["output"]).reshape(-1))
    config = {"name": "nir", "in_shape": list(in_shape), "num_classes": int(np.prod(out_shape)) if out_shape else 0,
              "timesteps": T, "dt": dt, "source_config": _meta(graph, "model_config")}
    n_lif = sum(isinstance(m, LIF) for m in layers)
    if n_lif == 0:
        raise NIRError("graph: no LIF node; nothing spiking to load")
    model = SpikingClassifier(body, T, in_shape, config)
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
    from .checkpoint import decode_config
    from .models import build_model
    from .nn import LIF

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
            if (pa.tau, pa.v_threshold, pa.v_reset, pa.decay_input) != (pb.tau, pb.v_threshold, pb.v_reset, pb.decay_input):
                return None
        elif _signature(a) != _signature(b):
            return None
    sa, sb = model.state_dict(), ref.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return None
    ref.load_state_dict(sa)
    return ref
