"""The NIR semantics the NIR tests compare edgesnn's imports and exports with (float64)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def nir_simulate(graph, x: torch.Tensor, dt: float) -> torch.Tensor:
    """Step-by-step NIR semantics of a chain Input -> (Affine | Linear | Conv2d | AvgPool2d | Flatten
    | LIF)* -> Output: float64 forward Euler with ``dt`` seconds per step, fire when
    ``v > v_threshold``, reset to ``v_reset``, start at ``v_reset``. ``x`` is ``[T, B, ...]``;
    returns the last node's output per step, ``[T, B, ...]``."""
    import nir

    succ = dict(graph.edges)
    key = next(k for k, n in graph.nodes.items() if isinstance(n, nir.Input))
    chain = []
    while key in succ:
        key = succ[key]
        chain.append(key)
    P = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    state, outs = {}, []
    for t in range(x.shape[0]):
        h = x[t].double()
        for k in chain[:-1]:
            n = graph.nodes[k]
            if isinstance(n, nir.Affine):
                h = h @ P(n.weight).T + P(n.bias)
            elif isinstance(n, nir.Linear):
                h = h @ P(n.weight).T
            elif isinstance(n, nir.Conv2d):
                h = F.conv2d(h, P(n.weight), P(n.bias), stride=tuple(n.stride), padding=tuple(n.padding))
            elif isinstance(n, nir.AvgPool2d):
                h = F.avg_pool2d(h, tuple(n.kernel_size), tuple(n.stride), tuple(n.padding))
            elif isinstance(n, nir.Flatten):  # NIR dims exclude the batch dim
                h = h.flatten(n.start_dim + 1 if n.start_dim >= 0 else n.start_dim,
                              n.end_dim + 1 if n.end_dim >= 0 else n.end_dim)
            else:
                v = state.get(k, P(n.v_reset).expand_as(h))
                v = v + dt / P(n.tau) * (P(n.v_leak) - v + P(n.r) * h)
                h = (v > P(n.v_threshold)).double()
                state[k] = torch.where(h > 0, P(n.v_reset).expand_as(v), v)
        outs.append(h)
    return torch.stack(outs)
