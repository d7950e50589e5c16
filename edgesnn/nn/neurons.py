"""``nn.Module`` wrappers of the LIF and RevLIF nodes: thin shells over the functional core.

Both take multi-step input ``[T, B, ...]`` and return the same shape. Each call starts from a
fresh state (``v_reset``), so there is no state to reset between batches.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..functional.checks import check_finite as _check_finite
from ..functional.lif import LIFParams
from ..functional.revlif import RevLIFParams
from ..functional.surrogate import SurrogateLike
from ..kernels import dispatch

__all__ = ["LIF", "RevLIF"]


class LIF(nn.Module):
    """Multi-step LIF node with SpikingJelly ``LIFNode`` semantics.

    Args:
        tau: membrane time constant (time steps, > 1).
        v_threshold: firing threshold.
        v_reset: hard-reset potential, or ``None`` for a soft reset.
        decay_input: divide the input by ``tau`` as well.
        surrogate: ``"sigmoid"`` (alpha 4), ``"atan"`` (alpha 2) or a ``Surrogate``.
        detach_reset: no gradient through the spike in the reset.
        backend: ``"auto"``, ``"torch"``, ``"numba"``, ``"cuda"`` or ``"reference"``
            (see :mod:`edgesnn.kernels.dispatch`).
        check_finite: scan the input for NaN/Inf and raise (costs one pass over the input).

    Shape: ``[T, B, ...] -> [T, B, ...]`` (spikes, 0/1 in the input's dtype).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        decay_input: bool = True,
        surrogate: SurrogateLike = "sigmoid",
        detach_reset: bool = False,
        backend: str = "auto",
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.params = LIFParams(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate)
        dispatch.resolve_backend(backend, torch.empty(0))
        self.backend = backend
        self.check_finite = check_finite

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.check_finite:
            _check_finite(x_seq)
        s_seq, _ = dispatch.lif_multistep(x_seq, self.params, None, self.backend)
        return s_seq

    def extra_repr(self) -> str:
        p = self.params
        return (
            f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, decay_input={p.decay_input}, "
            f"surrogate={p.surrogate.name}(alpha={p.surrogate.alpha}), detach_reset={p.detach_reset}, backend={self.backend!r}"
        )


class RevLIF(nn.Module):
    """Multi-step reversible LIF node: autograd memory independent of T (see ``edgesnn.functional.revlif``).

    Args:
        tau, v_threshold, v_reset, decay_input, surrogate, detach_reset: the per-group LIF step,
            as in :class:`LIF`.
        groups: channel groups ``n >= 2`` (must divide dim 2 of the input).
        alpha: output mixing ``y = alpha x + s`` (a power of two ``2^-k`` in exact mode).
        beta: state leak ``v' = beta v + gamma u`` (1/2 in exact mode).
        gamma: weight of the coupled post-reset potential, in (0, 1].
        mode: ``"exact"`` (bit-exact inverse at any T; inputs clamped to +-64 and rounded to 2^-16)
            or ``"float"`` (plain float inverse, verified in backward).
        backend, check_finite: as in :class:`LIF`.

    Shape: ``[T, B, C, ...]`` or ``[T, B, N] -> same`` (real-valued outputs ``y``).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        decay_input: bool = True,
        surrogate: SurrogateLike = "sigmoid",
        detach_reset: bool = False,
        groups: int = 2,
        alpha: float = 0.125,
        beta: float = 0.5,
        gamma: float = 0.5,
        mode: str = "exact",
        backend: str = "auto",
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        lif = LIFParams(tau, v_threshold, v_reset, decay_input, detach_reset, surrogate)
        self.params = RevLIFParams(lif, groups, alpha, beta, gamma, mode)
        dispatch.resolve_backend(backend, torch.empty(0))
        self.backend = backend
        self.check_finite = check_finite

    @property
    def groups(self) -> int:
        return self.params.groups

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if self.check_finite:
            _check_finite(x_seq)
        y_seq, _ = dispatch.revlif_multistep(x_seq, self.params, None, self.backend)
        return y_seq

    def extra_repr(self) -> str:
        p, lif = self.params, self.params.lif
        return (
            f"groups={p.groups}, mode={p.mode!r}, alpha={p.alpha}, beta={p.beta}, gamma={p.gamma}, tau={lif.tau}, "
            f"v_threshold={lif.v_threshold}, v_reset={lif.v_reset}, surrogate={lif.surrogate.name}, backend={self.backend!r}"
        )
