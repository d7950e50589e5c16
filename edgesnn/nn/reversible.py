"""``RevLIF``: the reversible LIF node (autograd memory independent of T; see ``edgesnn.functional.revlif``).

Kept apart from :mod:`edgesnn.nn.neurons` (which re-exports it) to keep each module short. Its own
hyper-parameters (``groups``, ``alpha``, ``beta``, ``gamma``, ``mode``) read and set the node's
:class:`~edgesnn.functional.revlif.RevLIFParams`, re-validated on assignment as the constructor
validates them (an unknown attribute would otherwise be a plain attribute the node never reads).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import torch

from ..functional.lif import LIFParams
from ..functional.revlif import RevLIFParams, check_groups
from ..functional.revlif_autograd import float_state_growth
from ..kernels import dispatch
from ._compat import LIFAttributes, resolve_surrogate
from .neurons import _SpikingNode

__all__ = ["RevLIF"]


def _revlif_attribute(field: str, doc: str) -> property:
    """``node.<field>``: the ``RevLIFParams`` field in use; assigning rebuilds (and re-validates) the parameters."""

    def get(self):
        return getattr(self.params, field)

    def set(self, value) -> None:
        self.params = dataclasses.replace(self.params, **{field: value})

    return property(get, set, doc=doc)


class RevLIF(LIFAttributes, _SpikingNode):
    """Reversible LIF node: autograd memory independent of T (see ``edgesnn.functional.revlif``).

    Args:
        tau, v_threshold, v_reset, decay_input, surrogate, detach_reset: the per-group LIF step,
            as in :class:`LIF`.
        groups: channel groups ``n >= 2`` (must divide the channel dim: dim 2 of ``[T, B, C, ...]``,
            dim 1 of a single step ``[B, C, ...]``).
        alpha: output mixing ``y = alpha x + s`` (a power of two ``2^-k`` in exact mode).
        beta: state leak ``v' = beta v + gamma u`` (1/2 in exact mode).
        gamma: weight of the coupled post-reset potential, in (0, 1].
        mode: ``"exact"`` (bit-exact inverse at any T; inputs clamped to +-64 and rounded to 2^-16)
            or ``"float"`` (plain float inverse, verified in backward).
        backend, check_finite, step_mode, stateful, surrogate_function: as in :class:`LIF` (including
            how a held state carries over a change of step mode or ``stateful``).

    The attributes ``groups``, ``alpha``, ``beta``, ``gamma`` and ``mode`` (and, as in :class:`LIF`,
    ``tau``, ``v_threshold``, ...) read and set the node's parameters; assigning re-validates them as
    constructing would (e.g. ``mode='exact'`` with ``alpha=0.3`` raises).

    In step_mode ``"s"`` every call is a sequence of length 1, so the O(1)-in-T memory of the
    reversible backward is not obtained across calls (each call keeps its output and final state).

    Shape: ``[T, B, C, ...]`` or ``[T, B, N] -> same`` (``"m"``); ``[B, C, ...] -> same`` (``"s"``);
    real-valued outputs ``y``.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        decay_input: bool = True,
        surrogate: Optional[Any] = None,
        detach_reset: bool = False,
        groups: int = 2,
        alpha: float = 0.125,
        beta: float = 0.5,
        gamma: float = 0.5,
        mode: str = "exact",
        backend: str = "auto",
        check_finite: bool = False,
        *,
        step_mode: Optional[str] = None,
        stateful: Optional[bool] = None,
        surrogate_function: Optional[Any] = None,
        store_v_seq: bool = False,
    ) -> None:
        super().__init__()
        sg = resolve_surrogate(surrogate, surrogate_function)
        lif = LIFParams(tau, v_threshold, v_reset, decay_input, detach_reset, sg)
        self.params = RevLIFParams(lif, groups, alpha, beta, gamma, mode)
        self.backend = backend
        self._init_node(step_mode, stateful, check_finite, store_v_seq)

    groups = _revlif_attribute("groups", "Channel groups (>= 2, dividing the channel dim); assigning re-validates.")
    alpha = _revlif_attribute("alpha", "Output mixing ``y = alpha x + s``; assigning re-validates (a power of two in exact mode).")
    beta = _revlif_attribute("beta", "State leak ``v' = beta v + gamma u``; assigning re-validates (1/2 in exact mode).")
    gamma = _revlif_attribute("gamma", "Weight of the coupled post-reset potential, in (0, 1]; assigning re-validates.")
    mode = _revlif_attribute("mode", "``'exact'`` or ``'float'``; assigning re-validates the coefficients for that mode.")

    def _lif_params(self) -> LIFParams:
        return self.params.lif

    def _set_lif_params(self, lif: LIFParams) -> None:
        self.params = dataclasses.replace(self.params, lif=lif)

    def _run(self, x_seq: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        if self._step_mode == "s":  # name the caller's [B, C, ...], not the [1, B, C, ...] sequence built from it
            check_groups(x_seq[0], self.params.groups, 1, "the single-step input [B, C, ...]")
        return dispatch.revlif_multistep(x_seq, self.params, v0, self.backend)

    def _overflow_advice(self) -> str:
        p = self.params
        growth = float_state_growth(p)
        if p.exact or growth < 1.0:
            return super()._overflow_advice()
        return (f"with mode='float', beta={p.beta:g}, gamma={p.gamma:g} and tau={p.lif.tau:g} a neuron's state can grow "
                f"{growth:.3g}x per step (|beta| + gamma (1 - 1/tau) >= 1: no bound, whatever the input's scale or dtype); "
                f"use parameters with |beta| + gamma (1 - 1/tau) < 1, or mode='exact' (which refuses unbounded ones)")

    def extra_repr(self) -> str:
        """The node's RevLIF and LIF parameters, backend and state for ``repr``."""
        p, lif = self.params, self.params.lif
        return (
            f"groups={p.groups}, mode={p.mode!r}, alpha={p.alpha}, beta={p.beta}, gamma={p.gamma}, tau={lif.tau}, "
            f"v_threshold={lif.v_threshold}, v_reset={lif.v_reset}, decay_input={lif.decay_input}, "
            f"surrogate={lif.surrogate.name}(alpha={lif.surrogate.alpha}), detach_reset={lif.detach_reset}, backend={self.backend!r}, "
            + self._state_repr()
        )
