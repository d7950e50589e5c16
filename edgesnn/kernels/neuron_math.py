"""The per-neuron math of LIF and RevLIF as scalar float32 functions: ONE source for every kernel.

These are plain Python functions. :mod:`edgesnn.kernels.numba_cpu` compiles them with
``numba.njit`` and :mod:`edgesnn.kernels.cuda_kernels` with ``numba.cuda.jit(device=True)``; the
PyTorch functional core (:mod:`edgesnn.functional.lif`, :mod:`edgesnn.functional.grid`,
:mod:`edgesnn.functional.revlif`) is the oracle they are tested against.

Bit-exactness rules (the forward must equal the PyTorch reference bit for bit):

* every argument is float32 (callers pass ``np.float32`` scalars; a Python float would become
  float64 in compiled code) and every constant below is an ``np.float32``;
* the operations are written in exactly the order of the PyTorch code, one rounding per operation
  (no fastmath, no algebraic shortcuts: ``(x - (v - v_reset)) / tau`` is a division);
* round-half-to-even (``torch.round``) is built from float adds (``+ 2**23 - 2**23``) so that CPU
  and CUDA share it and the CPU loops vectorize.

Flags (``hard``, ``decay_input``, ``detach``, ``exact``) are ints/bools; surrogate kinds are
:data:`SG_SIGMOID` and :data:`SG_ATAN`, with constants from :func:`surrogate_constants`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from types import SimpleNamespace

    from ..functional.lif import LIFParams
    from ..functional.revlif import RevLIFParams
    from ..functional.surrogate import Surrogate

__all__ = [
    "SG_SIGMOID",
    "SG_ATAN",
    "surrogate_constants",
    "charge_args",
    "vjp_args",
    "mix_args",
    "charge",
    "fire",
    "reset",
    "exp32",
    "surrogate_grad",
    "step_vjp",
    "step_vjp_from_grad",
    "mul",
    "rint_grid",
    "floor_grid",
    "to_grid",
    "quantize_input",
    "halve",
    "unhalve",
]

SG_SIGMOID = 0
SG_ATAN = 1

ZERO = np.float32(0.0)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
TWO = np.float32(2.0)
GRID = np.float32(65536.0)  # 2**16, edgesnn.functional.grid.GRID_SCALE
#: x / 2**16 and x * 2**-16 are the same real number, so both round to the same float32 (subnormals
#: included): the multiplication is bit-identical to torch's division and much cheaper.
INV_GRID = np.float32(1.0 / 65536.0)
INPUT_RANGE = np.float32(64.0)  # edgesnn.functional.grid.INPUT_RANGE
NEG_INPUT_RANGE = np.float32(-64.0)


def surrogate_constants(surrogate: "Surrogate") -> Tuple[int, np.float32, np.float32]:
    """``(kind, a, b)`` float32 constants of a :class:`~edgesnn.functional.surrogate.Surrogate`.

    Sigmoid: ``a = alpha``; ATan: ``a = pi/2 * alpha``, ``b = alpha / 2``.
    """
    from ..functional.surrogate import ATan, Sigmoid  # by exact type: a subclass may override grad

    alpha = float(surrogate.alpha)
    if type(surrogate) is Sigmoid:
        return SG_SIGMOID, np.float32(alpha), np.float32(0.0)
    if type(surrogate) is ATan:
        return SG_ATAN, np.float32(math.pi / 2.0 * alpha), np.float32(alpha / 2.0)
    raise TypeError(f"surrogate: the fused kernels implement exactly Sigmoid and ATan, got {type(surrogate).__name__}")


# ----------------------------------------------------------------------------- host-side arguments
#
# The kernels take the node parameters as positional scalars; these build them, in the kernels'
# order and types, for both the CPU and the CUDA wrappers.


#: At most this many parameter objects have their arguments kept by :func:`_once_per_object`.
_ARGS_KEPT = 64
_args: dict = {}


def _once_per_object(build, p):
    """``build(p)``, computed once per parameter object (frozen dataclasses) and then reused: the
    wrappers ask on every call (a few us each, with the surrogate's constants). Keyed by identity,
    not equality (``-0.0 == 0.0``); the entry holds ``p``, so its ``id`` is not reused meanwhile."""
    key = (build, id(p))
    hit = _args.get(key)
    if hit is not None and hit[0] is p:
        return hit[1]
    out = build(p)
    if len(_args) >= _ARGS_KEPT:
        _args.clear()
    _args[key] = (p, out)
    return out


def _charge_args(lif):
    return (np.float32(lif.tau), np.float32(lif.v_threshold), np.float32(lif.charge_reset), bool(lif.hard_reset),
            bool(lif.decay_input))


def _vjp_args(lif):
    kind, a, b = surrogate_constants(lif.surrogate)
    return (np.float32(lif.input_gain), np.float32(lif.state_decay), np.int32(kind), a, b)


def _mix_args(p):
    return (bool(p.exact), np.float32(p.alpha), np.float32(p.beta), np.float32(p.gamma))


def charge_args(lif: "LIFParams") -> Tuple[np.float32, np.float32, np.float32, bool, bool]:
    """``(tau, v_th, v_reset, hard, decay_input)`` of a ``LIFParams`` (``v_reset`` 0 for soft reset)."""
    return _once_per_object(_charge_args, lif)


def vjp_args(lif: "LIFParams") -> Tuple[np.float32, np.float32, np.int32, np.float32, np.float32]:
    """``(in_gain, state_decay, kind, a, b)``: the backward's gains and surrogate constants."""
    return _once_per_object(_vjp_args, lif)


def mix_args(p: "RevLIFParams") -> Tuple[bool, np.float32, np.float32, np.float32]:
    """``(exact, alpha, beta, gamma)`` of a ``RevLIFParams``."""
    return _once_per_object(_mix_args, p)


# ----------------------------------------------------------------------------- LIF


def mul(a: float, b: float) -> float:
    """``a * b`` rounded on its own, never fused with a following add into an FMA.

    The CPU kernels never contract (no fastmath); the CUDA build replaces this with
    ``libdevice.fmul_rn`` because NVVM contracts ``a * b + c`` by default. Needed wherever the
    product is not exact (float-mode RevLIF: ``alpha * x + s``, ``beta * v + gamma * u``).
    """
    return a * b


def charge(x: float, v: float, tau: float, v_reset: float, decay_input: bool) -> float:
    """``h`` from input ``x`` and state ``v`` (``v_reset`` is 0 for a soft reset)."""
    if decay_input:
        return v + (x - (v - v_reset)) / tau
    return v - (v - v_reset) / tau + x


def fire(h: float, v_th: float) -> float:
    """Spike 0/1 (float32): ``h - v_th >= 0``."""
    return ONE if (h - v_th) >= ZERO else ZERO


def reset(h: float, s: float, v_th: float, v_reset: float, hard: bool) -> float:
    """Post-reset potential ``u``: ``s*v_reset + (1-s)*h`` (hard) or ``h - s*v_th`` (soft)."""
    if hard:
        return s * v_reset + (ONE - s) * h
    return h - s * v_th


#: ``exp32``'s argument range: the widest whose ``2**n`` (``|n| <= 126``) stays a normal float32, so the
#: CPU build's exponent-bit scale is exact too (its ``e^+-87`` are 6.1e37 and 1.6e-38).
_EXP_HI = np.float32(87.0)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)


def exp32(x: float) -> float:
    """``exp(x)`` in float32 (Cephes ``expf`` polynomial, ~1 ulp), arguments clamped to +-87.

    Float arithmetic and selects only (no libm call, no integer conversion), so the CPU loops
    that call it vectorize; the CUDA build uses the same code. Backward passes only (surrogate).
    """
    if x > _EXP_HI:
        x = _EXP_HI
    if x < -_EXP_HI:
        x = -_EXP_HI
    fn = rint_grid(x * _LOG2E)  # nearest integer n, |n| <= 126
    r = x - fn * _LN2_HI
    r = r - fn * _LN2_LO
    rr = r * r
    q = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    q = q * rr + r + ONE
    # 2**n from the binary digits of |n|: products of exact powers of two
    up = fn >= ZERO
    k = fn if up else -fn
    scale = ONE
    hit = k >= np.float32(64.0)
    k = k - np.float32(64.0) if hit else k
    scale = scale * (np.float32(1.8446744073709552e+19) if up else np.float32(5.421010862427522e-20)) if hit else scale
    hit = k >= np.float32(32.0)
    k = k - np.float32(32.0) if hit else k
    scale = scale * (np.float32(4294967296.0) if up else np.float32(2.3283064365386963e-10)) if hit else scale
    hit = k >= np.float32(16.0)
    k = k - np.float32(16.0) if hit else k
    scale = scale * (np.float32(65536.0) if up else np.float32(1.52587890625e-05)) if hit else scale
    hit = k >= np.float32(8.0)
    k = k - np.float32(8.0) if hit else k
    scale = scale * (np.float32(256.0) if up else np.float32(0.00390625)) if hit else scale
    hit = k >= np.float32(4.0)
    k = k - np.float32(4.0) if hit else k
    scale = scale * (np.float32(16.0) if up else np.float32(0.0625)) if hit else scale
    hit = k >= np.float32(2.0)
    k = k - np.float32(2.0) if hit else k
    scale = scale * (np.float32(4.0) if up else np.float32(0.25)) if hit else scale
    hit = k >= np.float32(1.0)
    k = k - np.float32(1.0) if hit else k
    scale = scale * (np.float32(2.0) if up else np.float32(0.5)) if hit else scale
    return q * scale


#: Beyond |a u| = 87 (where ``exp32`` clamps its argument) the kernels' Sigmoid surrogate is 0: a
#: clamped ``exp`` there would leave the constant a * 1.6e-38 (times a huge ``v_reset - h`` in the
#: hard-reset term, a visible gradient). PyTorch's float32 value is below a * 1.7e-38 there and exactly
#: 0 from |a u| = 88.73 on (its ``exp(|a u|)`` overflows). The clamp used to be 80 with this cut at 88,
#: which left a * 7.2e-35 for every 80 < |a u| <= 88, up to 3000x PyTorch's value.
_SG_FLAT = _EXP_HI


def surrogate_grad(u: float, kind: int, a: float, b: float) -> float:
    """Surrogate derivative at ``u = h - v_th``."""
    if kind == SG_SIGMOID:
        # a * sg * (1 - sg) with sg = 1 / (1 + e), e = exp(-a u), as (a * r) * (e * r), r = sg:
        # the same value within rounding, one subtraction less, and no overflow for any a
        # (e * r = e / (1 + e) <= 1)
        z = a * u
        e = exp32(-z)
        r = ONE / (ONE + e)
        g = (a * r) * (e * r)
        return ZERO if (z > _SG_FLAT or z < -_SG_FLAT) else g
    z = a * u
    return b / (ONE + z * z)


def step_vjp(
    h: float, grad_s: float, grad_u: float, v_th: float, v_reset: float, hard: bool, detach: bool,
    in_gain: float, state_decay: float, kind: int, a: float, b: float,
) -> Tuple[float, float]:
    """VJP of one LIF step ``(x, v) -> (s, u)`` from ``h`` alone: ``(grad_x, grad_v)``."""
    g = surrogate_grad(h - v_th, kind, a, b)
    return step_vjp_from_grad(h, g, grad_s, grad_u, v_th, v_reset, hard, detach, in_gain, state_decay)


def step_vjp_from_grad(
    h: float, g: float, grad_s: float, grad_u: float, v_th: float, v_reset: float, hard: bool, detach: bool,
    in_gain: float, state_decay: float,
) -> Tuple[float, float]:
    """:func:`step_vjp` with the surrogate derivative ``g = surrogate_grad(h - v_th, ...)`` given
    (a kernel can then compute ``g`` for a whole row first: its ``exp`` and division are a long
    chain of dependent operations, which out-of-order cores overlap better in a loop of its own)."""
    u = h - v_th
    s = ONE if u >= ZERO else ZERO
    if hard:
        du_dh = ONE - s
        if not detach:
            du_dh = du_dh + (v_reset - h) * g
    else:
        if detach:
            du_dh = ONE
        else:
            du_dh = ONE - v_th * g
    grad_h = grad_s * g + grad_u * du_dh
    return grad_h * in_gain, grad_h * state_decay


# ----------------------------------------------------------------------------- exact-mode grid


_MAGIC = np.float32(8388608.0)  # 2**23: adding it rounds |k| < 2**23 to an integer, ties to even


def rint_grid(k: float) -> float:
    """Round a float32 to the nearest integer, ties to even (``torch.round``), for any float32.

    ``(|k| + 2**23) - 2**23`` rounds in the current (nearest-even) mode; ``|k| >= 2**23`` is
    already an integer. Float adds and selects only, identical on CPU and CUDA.
    """
    ak = k if k >= ZERO else -k
    r = (ak + _MAGIC) - _MAGIC
    r = ak if ak >= _MAGIC else r
    return r if k >= ZERO else -r


def floor_grid(y: float) -> float:
    """``floor(y)`` of a float32 via :func:`rint_grid` (float ops only)."""
    r = rint_grid(y)
    return r - ONE if r > y else r


def to_grid(a: float) -> float:
    """``torch.round(a * 2**16) / 2**16``."""
    return rint_grid(a * GRID) * INV_GRID


def quantize_input(x: float) -> float:
    """``to_grid(clamp(x, -64, 64))``."""
    c = x
    if c < NEG_INPUT_RANGE:
        c = NEG_INPUT_RANGE
    if c > INPUT_RANGE:
        c = INPUT_RANGE
    return to_grid(c)


def halve(v: float) -> Tuple[float, float]:
    """``(floor_grid(v / 2), bit)`` of a grid value (``edgesnn.functional.grid.halve_on_grid``); bit as 0./1. float32."""
    k = v * GRID
    half = floor_grid(k * HALF)
    bit = k - TWO * half
    return half * INV_GRID, bit


def unhalve(half: float, bit: float) -> float:
    """``bit`` is a float32 0./1.; ``(2 * (half * 2**16) + bit) / 2**16`` (``edgesnn.functional.grid.unhalve_on_grid``)."""
    return (TWO * (half * GRID) + bit) * INV_GRID


#: Compile order: every function after the ones it calls.
_ORDER = ("mul", "charge", "fire", "reset", "rint_grid", "floor_grid", "exp32", "surrogate_grad", "step_vjp_from_grad", "step_vjp", "to_grid", "quantize_input", "halve", "unhalve")


def compile_all(jit: Callable[[Callable], Any], overrides: Optional[Dict[str, Any]] = None) -> "SimpleNamespace":
    """Compile every function above with ``jit`` (e.g. ``numba.njit(inline="always")`` or
    ``numba.cuda.jit(device=True)``), wiring the calls between them to the compiled versions.

    ``overrides`` maps a name to an already compiled replacement (the CUDA build's ``mul``).
    Returns a ``types.SimpleNamespace`` of compiled functions with the names above.
    """
    import types

    ns = dict(globals())
    out = {}
    overrides = overrides or {}
    for name in _ORDER:
        if name in overrides:
            out[name] = overrides[name]
            ns[name] = out[name]
            continue
        src = ns[name]
        fn = types.FunctionType(src.__code__, ns, name, src.__defaults__, src.__closure__)
        fn.__module__ = src.__module__
        fn.__qualname__ = src.__qualname__
        out[name] = jit(fn)
        ns[name] = out[name]  # later functions call the compiled version
    return types.SimpleNamespace(**out)
