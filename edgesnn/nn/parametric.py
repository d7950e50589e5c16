"""``ParametricLIF``: SpikingJelly's ``ParametricLIFNode`` (learnable time constant, PLIF).

Kept apart from :mod:`edgesnn.nn.neurons` (which re-exports it) because its learned ``tau`` /
``v_threshold`` need their own storage behind the shared SpikingJelly attributes
(:class:`~edgesnn.nn._compat.LIFAttributes`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..functional.checks import check_flag
from ..functional.lif import LIFParams, ResetRule, plif_multistep
from ..functional.surrogate import Surrogate
from ..kernels.dispatch import refuse_transforms
from ._compat import LIFAttributes, resolve_surrogate
from .neurons import _SpikingNode

__all__ = ["ParametricLIF"]


@dataclass(frozen=True)
class _TensorLIFParams(ResetRule):
    """The attributes of :class:`LIFParams` that :func:`~edgesnn.functional.lif.plif_multistep` reads
    besides the decay, with ``v_threshold`` allowed to be a (learnable) 0-dim tensor; no validation."""

    v_threshold: Union[float, torch.Tensor]
    v_reset: Optional[float]
    decay_input: bool
    detach_reset: bool
    surrogate: Surrogate


def _value_in_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` with the value it has rounded to ``dtype`` (and back), its gradient flowing to ``t``
    unrounded: ``t + (t.to(dtype) - t).detach()``, which in ``t``'s wider dtype is exactly the rounded
    value. The forward computes what a node whose parameters are in ``dtype`` computes (SpikingJelly's
    float16 ``sigmoid(w)``), and the backward stays in ``t``'s dtype."""
    if t.dtype == dtype:
        return t
    return t + (t.detach().to(dtype).to(t.dtype) - t.detach())


class ParametricLIF(LIFAttributes, _SpikingNode):
    """LIF with a learnable time constant: SpikingJelly's ``ParametricLIFNode`` (PLIF).

    ``tau = 1 / sigmoid(w)`` with the parameter ``w`` initialised to ``-log(init_tau - 1)``, shared by
    all neurons of the layer; optionally a learnable threshold (``learn_threshold=True``, a 0-dim
    parameter ``v_threshold``). Both are in ``state_dict``.

    The fused kernels and the ``torch`` backend take scalar parameters and do not produce gradients
    for them, so this node always runs the ``reference`` path (the step functions of
    :mod:`edgesnn.functional.lif` under plain autograd). Cost: autograd keeps a handful of
    ``[B, ...]`` tensors per time step (4x the input's bytes with the defaults, 3x with
    ``detach_reset=True``, 2x with ``v_reset=None``, versus 1x for ``LIF(backend="torch")``;
    measured with :class:`edgesnn.memory.SavedTensorCounter` on ``[T, 16, 1024]``) and runs step by
    step in Python. The planner and memory optimiser treat only :class:`LIF` and :class:`RevLIF`
    nodes.

    Args:
        init_tau: initial time constant (time steps, > 1).
        decay_input, v_threshold, v_reset, surrogate, detach_reset, check_finite, step_mode, stateful,
            surrogate_function: as in :class:`LIF`.
        learn_threshold: make ``v_threshold`` a learnable parameter.
        backend: ``"auto"`` or ``"reference"`` (both run the reference path).

    Attributes, as in :class:`LIF` (assigning re-validates, as the constructor would): ``v_reset``,
    ``decay_input``, ``detach_reset``, ``surrogate_function`` (alias ``surrogate``; SpikingJelly
    surrogates are mapped). ``tau`` reads ``1 / sigmoid(w)`` (a float); assigning it writes ``w`` in
    place. ``v_threshold`` reads a float, or the learnable parameter with ``learn_threshold=True``;
    assigning a number sets it (in place into that parameter).

    Shape: ``[T, B, ...] -> [T, B, ...]`` (``"m"``) or ``[B, ...] -> [B, ...]`` (``"s"``); spikes.
    """

    def __init__(
        self,
        init_tau: float = 2.0,
        *,
        decay_input: bool = True,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        surrogate: Optional[Any] = None,
        detach_reset: bool = False,
        learn_threshold: bool = False,
        backend: str = "auto",
        check_finite: bool = False,
        step_mode: Optional[str] = None,
        stateful: Optional[bool] = None,
        surrogate_function: Optional[Any] = None,
        store_v_seq: bool = False,
    ) -> None:
        super().__init__()
        sg = resolve_surrogate(surrogate, surrogate_function)
        # validates init_tau, the threshold and the reset like the plain node (errors name init_tau, the name passed)
        try:
            base = LIFParams(init_tau, v_threshold, v_reset, decay_input, detach_reset, sg)
        except ValueError as e:
            if str(e).startswith("tau:"):
                raise ValueError("init_tau:" + str(e)[len("tau:"):]) from None
            raise
        learn_threshold = check_flag(learn_threshold, "learn_threshold")
        self.backend = backend
        self.w = nn.Parameter(torch.tensor(-math.log(base.tau - 1.0)))
        if learn_threshold:  # before _fixed exists, so the v_threshold property does not yet shadow the name
            self.register_parameter("v_threshold", nn.Parameter(torch.tensor(base.v_threshold)))
        # The validated non-learned parameters. Its tau (and, with learn_threshold, v_threshold) are the
        # values at construction or the last assignment: the node reads w and the parameter instead.
        self._fixed = base
        self._init_node(step_mode, stateful, check_finite, store_v_seq)

    def __setstate__(self, state: dict) -> None:
        """Unpickling (``torch.load`` of a whole module): a node pickled by an edgesnn that kept its
        settings as plain attributes (``v_reset``, ``decay_input``, ``detach_reset``, ``surrogate``
        and a fixed ``v_threshold``) gets them back as the validated settings the node reads now."""
        super().__setstate__(state)
        if "_fixed" in self.__dict__:
            return
        d = self.__dict__
        learned = self._parameters.get("v_threshold")
        v_th = d.pop("v_threshold", 1.0) if learned is None else float(learned.detach())
        tau = max(self._get_tau(), 1.0 + 1e-6)  # (validated; w trained to within rounding of 1 still loads)
        self._fixed = LIFParams(tau, v_th, d.pop("v_reset", 0.0), d.pop("decay_input", True),
                                d.pop("detach_reset", False), resolve_surrogate(d.pop("surrogate", None), None))

    # ------------------------------------------------------------------ SpikingJelly attributes

    def _get_tau(self) -> float:
        # in float64: in float32 sigmoid(w) rounds to 1 from w ~ 16.6 (tau - 1 < 6e-8), so tau read 1.0
        return float(1.0 / torch.sigmoid(self.w.detach().double()))

    def _get_v_threshold(self) -> Union[float, torch.Tensor]:
        learned = self._parameters.get("v_threshold")
        return self._fixed.v_threshold if learned is None else learned

    tau = property(_get_tau, LIFAttributes.tau.fset,
                   doc="The current time constant ``1 / sigmoid(w)`` (a float, no gradient); assigning writes ``w``.")
    v_threshold = property(_get_v_threshold, LIFAttributes.v_threshold.fset,
                           doc="The threshold: a float, or the 0-dim parameter with ``learn_threshold=True``.")

    @property
    def learn_threshold(self) -> bool:
        """Whether ``v_threshold`` is a learnable parameter (fixed at construction)."""
        return "v_threshold" in self._parameters

    @learn_threshold.setter
    def learn_threshold(self, value: bool) -> None:
        # checked like the constructor's flag; a change would add or drop a parameter an optimizer built
        # earlier does not see, so it is refused instead of being a silent no-op
        if check_flag(value, "learn_threshold") != self.learn_threshold:
            raise ValueError(
                f"learn_threshold: fixed at construction (this node has learn_threshold={self.learn_threshold}); build a new "
                f"ParametricLIF(learn_threshold={bool(value)}) and load this one's state_dict with strict=False")

    def _check_backend(self, value: str) -> None:
        if value not in ("auto", "reference"):
            raise ValueError(
                f"backend: ParametricLIF runs the 'reference' path (the fused kernels and 'torch' take scalar parameters "
                f"and give no gradient for tau or v_threshold); expected 'auto' or 'reference', got {value!r}"
            )

    def _lif_params(self) -> LIFParams:
        return self._fixed

    def _set_lif_params(self, lif: LIFParams) -> None:
        self._fixed = lif

    def _update_lif_params(self, **changes: Any) -> None:
        """Validate ``changes`` against the current (learned) tau and threshold, then apply them;
        a new tau or learnable threshold is written into its parameter in place. Where training (or a
        loaded ``w``) left the learned values outside what the constructor accepts, ``changes`` are
        validated against the last accepted settings instead: the assignment is checked, not the training."""
        if isinstance(changes.get("tau"), torch.Tensor) or isinstance(changes.get("v_threshold"), torch.Tensor):
            name = "tau" if "tau" in changes else "v_threshold"
            raise TypeError(f"{name}: expected a number (it is written into the node's parameter), got a tensor")
        accepted = {f.name: getattr(self._fixed, f.name) for f in dataclasses.fields(self._fixed)}
        v_th = self._get_v_threshold()
        current = {**accepted, "tau": self.tau,
                   "v_threshold": float(v_th.detach()) if isinstance(v_th, torch.Tensor) else v_th}
        try:
            LIFParams(**current)
        except (ValueError, TypeError):  # (a tau trained to within rounding of 1, a threshold below v_reset, ...)
            current = accepted
        lif = LIFParams(**{**current, **changes})
        learned = self._parameters.get("v_threshold")
        with torch.no_grad():
            if "tau" in changes:
                w = -math.log(lif.tau - 1.0)
                if parametrize.is_parametrized(self, "w"):  # self.w is computed: assign through right_inverse
                    self.w = torch.full_like(self.w, w)
                else:
                    self.w.fill_(w)
            if "v_threshold" in changes and learned is not None:
                learned.fill_(lif.v_threshold)
        self._fixed = lif

    def _fresh_value(self) -> float:
        return self._fixed.charge_reset

    # ------------------------------------------------------------------ forward

    def _run(self, x_seq: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        # sigmoid(w) multiplied in, as SpikingJelly does (see plif_charge). The decay and a learnable
        # threshold enter the loop as 0-dim tensors of at least float32 (a 0-dim operand does not
        # promote the input: each step still computes in the input's dtype), so their gradients add
        # up over T in float32. In float16 the T steps' sum of the decay's gradient (w's gradient
        # before sigmoid's derivative, ~4x it) overflowed to inf where w's own gradient fits.
        # sigmoid(w) is SpikingJelly's: on a float32 input its fused op computes it from w in float32,
        # unrounded, whatever w's dtype; on other inputs its reference formula computes it in w's dtype.
        # as LIF and RevLIF do, before any value check; w and a learnable threshold may carry a tangent too
        refuse_transforms(x_seq, "ParametricLIF", "reference", v0, (self.w, self._get_v_threshold()))
        acc = torch.promote_types(self.w.dtype, torch.float32)
        decay = torch.sigmoid(self.w.to(acc))
        if x_seq.dtype != torch.float32:
            decay = _value_in_dtype(decay, self.w.dtype)
        v_th = self._get_v_threshold()
        v_th = v_th.to(acc) if isinstance(v_th, torch.Tensor) else v_th  # (exact: a wider dtype)
        f = self._fixed
        p = _TensorLIFParams(v_th, f.v_reset, f.decay_input, f.detach_reset, f.surrogate)
        return plif_multistep(x_seq, decay, p, v0)

    def extra_repr(self) -> str:
        """The node's parameters (``tau``, the threshold and whether it is learnable) and state for ``repr``."""
        v_th, f = self._get_v_threshold(), self._fixed
        v_th_repr = f"{float(v_th.detach()):.4g} (learnable)" if isinstance(v_th, torch.Tensor) else f"{v_th}"
        return (
            f"tau={self.tau:.4g}, v_threshold={v_th_repr}, v_reset={f.v_reset}, decay_input={f.decay_input}, "
            f"surrogate={f.surrogate.name}(alpha={f.surrogate.alpha}), detach_reset={f.detach_reset}, " + self._state_repr()
        )
