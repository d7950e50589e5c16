"""``nir.NIRGraph`` or ``.nir`` file -> edgesnn ``SpikingClassifier`` (:func:`load`); the mapping is in :mod:`edgesnn.nir`."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from .common import DEFAULT_DT, NIRError, nir_module

if TYPE_CHECKING:  # pragma: no cover
    import nir

    from ..models import SpikingClassifier

__all__ = ["load"]


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
    from ..nn import LIF

    nir = nir_module()
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
    nir = nir_module()
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


def load(graph: Union["nir.NIRGraph", str, os.PathLike], dt: Optional[float] = None,
         timesteps: Optional[int] = None, backend: str = "auto") -> "SpikingClassifier":
    """A ``nir.NIRGraph`` (or the path of a ``.nir`` file) as an edgesnn :class:`SpikingClassifier`.

    Args:
        graph: the graph or its file.
        dt: seconds per time step; default the graph's ``metadata["dt"]``, else :data:`DEFAULT_DT`.
        timesteps: T for static inputs (direct encoding); default the graph's ``metadata["timesteps"]``, else 4.
        backend: the LIF nodes' backend.

    The model's ``body`` runs ``[T, B, *in_shape] -> [T, B, *out_shape]``; the classifier
    averages over T. Raises :class:`NIRError` for nodes edgesnn cannot represent exactly.
    """
    nir = nir_module()
    from ..models import SpikingClassifier
    from ..nn import LIF, SeqToANN

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
            if (pa.tau, pa.v_threshold, pa.v_reset, pa.decay_input) != (pb.tau, pb.v_threshold, pb.v_reset, pb.decay_input):
                return None
        elif _signature(a) != _signature(b):
            return None
    sa, sb = model.state_dict(), ref.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return None
    ref.load_state_dict(sa)
    return ref
