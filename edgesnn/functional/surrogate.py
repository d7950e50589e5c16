"""Surrogate gradients for the Heaviside spike.

The spike ``s = H(u)`` (``u = h - v_th``, ``H(u) = 1 if u >= 0``) has zero derivative almost
everywhere; training replaces ``dH/du`` with the derivative ``sg'(u)`` of a smooth surrogate.

Surrogates, with SpikingJelly's formulas and defaults (two shown; see the classes for the rest:
``PiecewiseQuadratic``, ``PiecewiseExp``, ``SoftSign``, ``SuperSpike``, ``Erf``, ``NonzeroSignLogAbs``):

* ``Sigmoid(alpha=4)``: ``sg(u) = sigmoid(alpha u)``, ``sg'(u) = alpha sigmoid(alpha u)(1 - sigmoid(alpha u))``
* ``ATan(alpha=2)``: ``sg'(u) = (alpha / 2) / (1 + (pi/2 alpha u)^2)``

:func:`spike`: in eager autograd a Heaviside whose backward evaluates ``sg'(u)`` with
differentiable ops, so a second-order gradient includes the surrogate's curvature ``sg''(u)``, as
SpikingJelly's does. Finite differences of the first-order gradient give the same with
``detach_reset=True``; with the reset attached, the spike in the reset term is differentiated
through ``sg'`` again here (and in SpikingJelly), where finite differences see a step. While tracing or
exporting to ONNX it writes the spike with standard tensor operations only,
``H(u) + (u - stop(u)) * stop(sg'(u))``, which TorchScript and ONNX Runtime's gradient builder
(no gradient for ``Atan``; it silently drops ``.detach()``, see :func:`stop_gradient`) carry to
the same first-order gradient. In the forward pass ``u - stop(u)`` is exactly ``0.0``, so the
spike is exactly 0 or 1.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Iterator, Union

import torch

from .checks import is_real_number, shown_number

__all__ = [
    "Surrogate", "Sigmoid", "ATan", "PiecewiseQuadratic", "PiecewiseExp", "SoftSign", "SuperSpike", "Erf",
    "NonzeroSignLogAbs", "SurrogateLike", "get_surrogate", "spike", "stop_gradient", "detach_kept_in_export",
]


MAX_ALPHA = 1e6
"""Largest sharpness accepted: past it the gradient formulas overflow float32 (``alpha^2`` in
PiecewiseQuadratic near 1.8e19, ``pi/2 alpha`` in ATan near 2e38) long before; sharpness 1e6 already
makes the surrogate a spike 1e-6 wide."""


@dataclass(frozen=True)
class Surrogate:
    """Base class: a named surrogate with a sharpness ``alpha``."""

    alpha: float

    name = "surrogate"

    def __post_init__(self) -> None:
        if not (is_real_number(self.alpha) and 0 < self.alpha <= MAX_ALPHA):
            raise ValueError(f"surrogate alpha: expected a number in (0, {MAX_ALPHA:g}], got {shown_number(self.alpha)}")
        object.__setattr__(self, "alpha", float(self.alpha))  # a NumPy scalar times a tensor would be an array

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)``, same shape as ``u``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Sigmoid(Surrogate):
    """``sg(u) = sigmoid(alpha u)``; SpikingJelly's default (alpha = 4)."""

    alpha: float = 4.0
    name = "sigmoid"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        z = self.alpha * u  # sg (1 - sg) as sigmoid(z) sigmoid(-z): no cancellation once sg rounds to 1
        return self.alpha * torch.sigmoid(z) * torch.sigmoid(-z)


@dataclass(frozen=True)
class ATan(Surrogate):
    """``sg(u) = atan(pi/2 alpha u) / pi + 1/2``; SpikingJelly's ATan (alpha = 2)."""

    alpha: float = 2.0
    name = "atan"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        z = (math.pi / 2.0 * self.alpha) * u
        return (self.alpha / 2.0) / (1.0 + z * z)


# SpikingJelly's other single-parameter surrogates (``spikingjelly.activation_based.surrogate``), with
# its gradient formulas and default alphas. The fused kernels implement Sigmoid and ATan only; nodes
# with any other surrogate run the PyTorch path, which calls ``grad`` below.


@dataclass(frozen=True)
class PiecewiseQuadratic(Surrogate):
    """``sg'(u) = alpha - alpha^2 |u|`` for ``|u| <= 1/alpha``, else 0; SpikingJelly's default alpha = 1."""

    alpha: float = 1.0
    name = "piecewise_quadratic"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        a = u.abs()
        return torch.where(a > 1.0 / self.alpha, torch.zeros_like(u), self.alpha - self.alpha * self.alpha * a)


@dataclass(frozen=True)
class PiecewiseExp(Surrogate):
    """``sg'(u) = alpha / 2 * exp(-alpha |u|)``; SpikingJelly's default alpha = 1."""

    alpha: float = 1.0
    name = "piecewise_exp"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        return (self.alpha / 2.0) * torch.exp(-self.alpha * u.abs())


@dataclass(frozen=True)
class SoftSign(Surrogate):
    """``sg'(u) = alpha / (2 (1 + |alpha u|)^2)``; SpikingJelly's default alpha = 2."""

    alpha: float = 2.0
    name = "softsign"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        d = 1.0 / self.alpha + u.abs()
        return 1.0 / (2.0 * self.alpha * d * d)


@dataclass(frozen=True)
class SuperSpike(Surrogate):
    """``sg'(u) = alpha / (|u| + 1)^2``; SpikingJelly's default alpha = 1."""

    alpha: float = 1.0
    name = "superspike"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        d = u.abs() + 1.0
        return self.alpha / (d * d)


@dataclass(frozen=True)
class Erf(Surrogate):
    """``sg'(u) = alpha / sqrt(pi) * exp(-(alpha u)^2)``; SpikingJelly's default alpha = 2."""

    alpha: float = 2.0
    name = "erf"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        z = self.alpha * u
        return (self.alpha / math.sqrt(math.pi)) * torch.exp(-(z * z))


@dataclass(frozen=True)
class NonzeroSignLogAbs(Surrogate):
    """``sg'(u) = 1 / (1/alpha + |u|)``; SpikingJelly's default alpha = 1."""

    alpha: float = 1.0
    name = "nonzero_sign_log_abs"

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        """Surrogate derivative ``sg'(u)`` (formula in the class docstring), same shape as ``u``."""
        return 1.0 / (1.0 / self.alpha + u.abs())


SurrogateLike = Union[str, Surrogate]

_BY_NAME = {"sigmoid": Sigmoid, "atan": ATan}
# names added after the first two; get_surrogate accepts them as well
for _cls in (PiecewiseQuadratic, PiecewiseExp, SoftSign, SuperSpike, Erf, NonzeroSignLogAbs):
    _BY_NAME[_cls.name] = _cls
del _cls


def get_surrogate(spec: SurrogateLike, name: str = "surrogate") -> Surrogate:
    """Return a :class:`Surrogate` from a name (``"sigmoid"``, ``"atan"``) or an instance; errors
    name the parameter ``name`` (``surrogate``, or SpikingJelly's ``surrogate_function``)."""
    if isinstance(spec, Surrogate):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in _BY_NAME:
            return _BY_NAME[key]()
        raise ValueError(f"{name}: unknown name {spec!r}; expected one of {sorted(_BY_NAME)} or a Surrogate instance")
    if isinstance(spec, type):  # a class (edgesnn's or SpikingJelly's Sigmoid): say how to make the instance
        raise TypeError(f"{name}: expected a name {sorted(_BY_NAME)} or a Surrogate instance, got the class "
                        f"{spec.__name__} itself; pass an instance, e.g. {spec.__name__}()")
    raise TypeError(f"{name}: expected a name {sorted(_BY_NAME)} or a Surrogate instance, got {type(spec).__name__}")


_DETACH_KEPT = contextvars.ContextVar("edgesnn_detach_kept_in_export", default=False)


@contextlib.contextmanager
def detach_kept_in_export() -> Iterator[None]:
    """Within the block (this thread or task only), :func:`stop_gradient` takes its eager ``detach``
    branch even inside an ONNX export, which then drops it: for graphs whose gradients are written out
    by hand as ordinary outputs (the ONNX step graph), where no gradient builder ever differentiates
    them, and the integer-cast round trip would only add rounding."""
    token = _DETACH_KEPT.set(True)
    try:
        yield
    finally:
        _DETACH_KEPT.reset(token)


def stop_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` (any shape; same shape and dtype) with no gradient flowing back through it, in every
    backend edgesnn exports to.

    Eager and TorchScript use ``detach``. Inside an ONNX export ``detach`` would be silently
    dropped, so the value takes an integer-cast round trip there (no gradient crosses an integer
    cast in ONNX Runtime's gradient builder). That round trip keeps 2^-24 absolute resolution; the
    spike stays exactly 0/1 in eager mode and TorchScript, and is within 1e-7 of it in ONNX.
    Under :func:`detach_kept_in_export` an export keeps ``detach`` too.
    """
    if torch.onnx.is_in_onnx_export() and not _DETACH_KEPT.get():
        scale = 16777216.0  # 2**24
        return torch.round(x * scale).to(torch.int64).to(x.dtype) / scale
    return x.detach()


class _SurrogateSpike(torch.autograd.Function):
    """Heaviside forward, ``grad * sg'(u)`` backward. Saves ``u`` (one tensor, as many bytes as the
    slope it replaces) and evaluates the slope in the backward with differentiable ops, so a
    ``create_graph=True`` backward (second-order gradients) includes the surrogate's curvature
    ``sg''(u)``, as SpikingJelly's surrogate functions do (a slope computed in the forward without a
    graph silently dropped it). ``forward`` and ``setup_context`` apart: the form ``torch.func``
    transforms accept."""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: torch.Tensor, surrogate: "Surrogate") -> torch.Tensor:
        return (u >= 0).to(u.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        u, surrogate = inputs
        ctx.save_for_backward(u)
        ctx.surrogate = surrogate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (u,) = ctx.saved_tensors
        slope = _finite_slope(u, ctx.surrogate)
        # 0 where the slope is 0, whatever ``grad``: there autograd's product grad_u * (v_reset - h) of a hard reset
        # may have overflowed to +-Inf (float16, or a state near the dtype's limit), and Inf * 0 was a NaN
        # gradient where the hand-written backwards, multiplying by the slope first, give 0
        return torch.where(slope == 0, torch.zeros_like(slope), grad * slope), None


def _finite_slope(u: torch.Tensor, surrogate: "Surrogate") -> torch.Tensor:
    """``sg'(u)`` with an overflowed ``u = +-inf`` taken at the dtype's largest value and 0 where ``u`` is
    not finite (a NaN or an overflowed state spikes 0 / 1 with no gradient, as in the kernels)."""
    big = torch.finfo(u.dtype).max
    return surrogate.grad(u.nan_to_num(0.0, posinf=big, neginf=-big)).masked_fill(~torch.isfinite(u), 0.0)


def spike(u: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside spike ``(u >= 0)`` as ``u.dtype`` whose gradient is ``surrogate.grad(u)``.

    ``u`` is the distance to threshold ``h - v_th`` of any shape. An overflowed ``u = +-inf``
    (``h - v_th`` past the dtype's range) spikes 1 / 0 and a NaN ``u`` (a state that overflowed
    earlier) 0, as the kernels' comparison does; their gradient is 0 (the surrogate's slope at
    ``+-inf``). Without autograd the spike is the comparison alone; in eager autograd a small
    ``autograd.Function`` carries the slope; traced graphs (ONNX export, ``torch.jit.trace``) get
    the same gradient from a straight-through product on ``u`` made finite, except where an output
    gradient that overflowed to +-Inf meets a zero slope: NaN there, 0 in eager autograd.
    """
    if not isinstance(surrogate, Surrogate):  # (a name such as "sigmoid" ran forward, then failed in backward)
        raise TypeError(f"surrogate: expected a Surrogate (Sigmoid(), ATan(), ... or get_surrogate(name)), got "
                        f"{surrogate!r:.60}")
    heaviside = (u >= 0).to(u.dtype)
    if not (u.requires_grad and torch.is_grad_enabled()):
        return heaviside
    big = torch.finfo(u.dtype).max
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        uf = u.nan_to_num(0.0, posinf=big, neginf=-big)
        return heaviside + (uf - stop_gradient(uf)) * stop_gradient(surrogate.grad(uf))
    return _SurrogateSpike.apply(u, surrogate)
