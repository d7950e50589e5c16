"""Exact BatchNorm over time chunks: statistics combined across chunks, one normalisation formula.

A block that recomputes its interior in chunks of ``K`` steps cannot let BatchNorm see one chunk
at a time (training mode normalises over all ``T x B`` samples). These helpers compute the batch
statistics chunk by chunk, update the running statistics once, and apply the normalisation with
one formula everywhere, so a recomputed chunk is bit-identical to its forward.

Two ways to get the statistics:

* :class:`ChunkStats`: one pass, per-chunk ``var_mean`` combined in float64 (Chan et al.). Exact to
  ~1e-13 in float64, but in float32 the statistics can differ from PyTorch's in the last bit.
* :class:`ExactStats`: two passes (sums, then squared deviations from the float32 mean), each a
  sequential float64 accumulation in PyTorch's order (Numba kernel, the chunk read in place): the
  mean, ``invstd``, running statistics and, with :func:`bn_normalize`, the output are
  *bit-identical* to ``F.batch_norm`` on the whole ``[T*B, C, ...]`` tensor (CPU, contiguous,
  ``H*W > 1``: see :func:`exact_supported`). Both passes must see the same chunks in the same
  order, and each chunk must equal the matching slice of the whole tensor bit for bit (true of
  CPU ``conv2d`` chunked along the batch, checked for VGG-11 shapes with oneDNN).

PyTorch's CPU training BatchNorm (``batch_norm_cpu_collect_stats_contiguous_impl`` and
``batch_norm_cpu_update_stats_template``), which :class:`ExactStats` reproduces, per channel over
the ``N`` values in memory order (sample-major): ``double sum += x``; ``mean = float(sum / N)``;
``double vsum += float((x - mean) * (x - mean))``; ``var_sum = float(vsum)``;
``invstd = float(1 / sqrt(double(var_sum / float(N)) + eps))``; output ``x * alpha + beta`` with
``alpha = invstd * weight`` and ``beta = bias - mean * alpha``, both fused multiply-adds in the
AVX-512 kernel (probed once at run time, :func:`affine_uses_fma`). Running statistics: see
:func:`update_running_exact`. Verified empirically against torch 2.13 (CPU, x86-64, AVX-512);
the probe (:func:`reproduces_torch`) also passes on torch 2.5.1, 2.8.0 and 2.15.
"""

from __future__ import annotations

import copy
import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["batch_stats_mode", "channel_view", "reduce_dims", "update_running", "ChunkStats", "bn_static",
           "bn_normalize", "ExactStats", "exact_supported", "update_running_exact", "bn_output",
           "affine_uses_fma", "grad_sums", "input_grad_", "compute_dtype"]


def batch_stats_mode(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalizes with the batch's statistics (training, or no running statistics)."""
    return bn.training or not bn.track_running_stats


def channel_view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``v [C]`` as ``[1, C, 1, ...]``, broadcastable against ``like [N, C, ...]``."""
    return v.view(1, -1, *([1] * (like.dim() - 2)))


def reduce_dims(x: torch.Tensor) -> List[int]:
    """The dims BatchNorm reduces over for ``x [N, C, ...]``: all but the channel dim 1."""
    return [0] + list(range(2, x.dim()))


#: dtypes whose BatchNorm arithmetic runs in float32 (as PyTorch's CPU kernels run it), rounded once
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype BatchNorm's per-element arithmetic runs in for tensors of ``dtype``: float32 for
    float16 / bfloat16, else ``dtype`` itself."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _numba_ok(*ts: torch.Tensor) -> bool:
    """The Numba BatchNorm kernels serve contiguous CPU float tensors of one dtype."""
    from ..kernels.dispatch import numba_available

    t0 = ts[0]
    return (t0.device.type == "cpu" and t0.dtype in (torch.float32, torch.float64) and t0.dim() >= 2
            and all(t.dtype == t0.dtype and t.device == t0.device and t.is_contiguous() for t in ts)
            and numba_available())


def _as3(t: torch.Tensor):
    return t.detach().reshape(t.shape[0], t.shape[1], -1).numpy()


def grad_sums(dy: torch.Tensor, xhat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm backward's per-channel float64 sums of ``dy`` and ``dy * xhat`` (``[n, C, ...]``,
    summed over every dim but 1); neither input changes."""
    if _numba_ok(dy, xhat) and dy.shape == xhat.shape:
        from ..kernels.numba_bn import grad_sums as kernel

        s1 = torch.zeros(dy.shape[1], dtype=torch.float64)
        s2 = torch.zeros(dy.shape[1], dtype=torch.float64)
        kernel(_as3(dy), _as3(xhat), s1.numpy(), s2.numpy())
        return s1, s2
    dims = reduce_dims(dy)
    return dy.sum(dims, dtype=torch.float64), (xhat * dy).sum(dims, dtype=torch.float64)


def input_grad_(da: torch.Tensor, xhat: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """BatchNorm's input gradient in place of ``da [n, C, ...]``: ``((da - c1) - xhat * c2) * scale``
    per channel, each operation rounded in ``da``'s dtype (``xhat`` may be overwritten); for float16 /
    bfloat16 ``da`` computed in float32 and rounded once, as PyTorch's kernel does."""
    ct = compute_dtype(da.dtype)
    if ct != da.dtype:
        g = (da.to(ct) - channel_view(c1.to(ct), da)).sub_(xhat.to(ct) * channel_view(c2.to(ct), da))
        return da.copy_(g.mul_(channel_view(scale.to(ct), da)))
    if _numba_ok(da, xhat, c1, c2, scale) and da.shape == xhat.shape:
        from ..kernels.numba_bn import input_grad_ as kernel

        kernel(_as3(da), _as3(xhat), c1.numpy(), c2.numpy(), scale.numpy())
        return da
    return da.sub_(channel_view(c1, da)).sub_(xhat.mul_(channel_view(c2, da))).mul_(channel_view(scale, da))


def update_running(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """BatchNorm's running-statistics update from one batch's per-channel ``mean [C]`` and biased ``var
    [C]`` over ``count`` values per channel (samples x positions x copies; ``var`` is made unbiased)."""
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        bn.running_mean.mul_(1 - m).add_(mean.to(bn.running_mean.dtype), alpha=m)
        bn.running_var.mul_(1 - m).add_(unbiased.to(bn.running_var.dtype), alpha=m)


class ChunkStats:
    """Per-channel mean/variance over many chunks, combined exactly (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def add(self, a: torch.Tensor) -> None:
        """Add a chunk ``a [N, C, ...]`` (channels in dim 1) to the per-channel statistics."""
        dims = reduce_dims(a)
        n = a.numel() // a.shape[1]
        # float16 / bfloat16 chunks reduced in float32: var_mean's result in their dtype would round
        # each chunk's statistics before they are combined
        var, mean = torch.var_mean(a.to(compute_dtype(a.dtype)), dim=dims, unbiased=False)
        mean, m2 = mean.double(), var.double() * n
        if self.mean is None:
            self.n, self.mean, self.m2 = n, mean, m2
            return
        tot = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / tot)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / tot)
        self.n = tot

    def mean_var(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(mean [C], biased variance [C])`` (float64) over every value added so far."""
        return self.mean, self.m2 / self.n


def bn_static(bn: nn.modules.batchnorm._BatchNorm, a: torch.Tensor, T: int, update: bool) -> torch.Tensor:
    """BatchNorm (batch statistics) of ``T`` identical copies of ``a [B, C, ...]``, computed on one copy.

    Without autograd and where :func:`exact_supported`, the statistics are PyTorch's over the
    ``T`` copies (:class:`ExactStats` reads ``a`` ``T`` times; the float rounding of a sum over
    ``T`` copies is not that of one copy) and the result is bit-identical to ``F.batch_norm`` on
    the ``[T*B, C, ...]`` tensor. With autograd (a backward recomputation, whose values are not
    used) it is ``F.batch_norm`` on one copy: the same statistics up to rounding."""
    if not torch.is_grad_enabled() and exact_supported(a):
        st = ExactStats()
        st.add_sum(a, repeat=T)
        mean = st.mean()
        st.add_var(a, repeat=T)
        invstd = st.invstd(bn.eps)
        if update:
            st.update_running(bn)
        return bn_output(bn, a.detach(), mean, invstd)
    if update:
        with torch.no_grad():
            var, mean = torch.var_mean(a.detach(), dim=reduce_dims(a), unbiased=False)
        update_running(bn, mean, var, T * (a.numel() // a.shape[1]))
    # ``torch.batch_norm``, not ``F.batch_norm``: one copy may hold one value per channel (B = 1,
    # [B, C] or [B, C, 1, 1]) though the T copies it stands for hold T; F.batch_norm refuses that.
    return torch.batch_norm(a, bn.weight, bn.bias, None, None, True, 0.0, bn.eps, torch.backends.cudnn.enabled)


def bn_normalize(bn: Optional[nn.modules.batchnorm._BatchNorm], a: torch.Tensor, mean: torch.Tensor,
                 invstd: torch.Tensor, inplace: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, xhat)``, both ``a``'s shape ``[N, C, ...]``: BatchNorm of ``a`` with given per-channel
    statistics ``mean [C]``, ``invstd [C]``; one formula (same rounding) for the
    forward and every recomputation. ``z`` is rounded as PyTorch's CPU kernel rounds it
    (:func:`bn_output`): with ``mean``/``invstd`` from :class:`ExactStats` it is bit-identical to
    ``F.batch_norm``. ``xhat = (a - mean) * invstd`` is for the backward (float32 for a float16 /
    bfloat16 ``a``, whose BatchNorm backward PyTorch computes in float32). ``inplace`` overwrites
    ``a`` with ``xhat`` (no autograd; not for float16 / bfloat16)."""
    z = bn_output(bn, a, mean, invstd)
    ct = compute_dtype(a.dtype)
    if ct != a.dtype:
        xhat = a.to(ct) - channel_view(mean.to(a.dtype).to(ct), a)
        return z, xhat.mul_(channel_view(invstd.to(a.dtype).to(ct), a))
    xhat = a.sub_(channel_view(mean, a)) if inplace else a - channel_view(mean, a)
    xhat.mul_(channel_view(invstd, a))
    return z, xhat


# ----------------------------------------------------------------------------------------------
# bit-exact statistics and output (PyTorch's CPU kernel, float32 and float64)


@functools.lru_cache(maxsize=None)
def affine_uses_fma() -> bool:
    """Whether PyTorch's CPU BatchNorm output ``x * alpha + beta`` (and ``beta = bias - mean *
    alpha``) is a fused multiply-add on this build/CPU (the AVX-512 kernel of torch 2.13 on x86-64:
    yes; a kernel compiled without FMA: no). Probed once with values where one rounding and two
    differ."""
    u = 1.0 + 2.0 ** -12  # u * u = 1 + 2^-11 + 2^-24: a tie in float32, broken by the tiny bias
    x = torch.full((2, 1, 2, 2), u)
    y = F.batch_norm(x, torch.zeros(1), torch.ones(1), torch.full((1,), u), torch.full((1,), 2.0 ** -60),
                     False, 0.0, 0.0)
    return bool((y == 1.0 + 2.0 ** -11 + 2.0 ** -23).all())


def _fma(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """``c + sign * a * b`` with one rounding when PyTorch's kernel fuses it, two otherwise."""
    if affine_uses_fma():
        return torch.addcmul(c, a, b, value=sign)  # CPU addcmul is a fused multiply-add
    return c + (a * b) * sign


def bn_output(
    bn: Optional[nn.modules.batchnorm._BatchNorm], a: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor
) -> torch.Tensor:
    """BatchNorm output of ``a [N, C, ...]`` (same shape, ``a.dtype``) for the per-channel statistics
    ``mean [C]`` / ``invstd [C]``, rounded like
    PyTorch's CPU kernel: ``alpha = invstd * weight``, ``beta = bias - mean * alpha``,
    ``y = a * alpha + beta``."""
    w = bn.weight.detach() if bn is not None and bn.weight is not None else None
    b = bn.bias.detach() if bn is not None and bn.bias is not None else None
    mean, invstd = mean.to(a.dtype), invstd.to(a.dtype)
    ct = compute_dtype(a.dtype)
    if ct != a.dtype:
        # float16 / bfloat16: as PyTorch's kernel, alpha, beta and the affine in float32 from the
        # statistics in ``a``'s dtype, rounded once (alpha and beta rounded to bfloat16 shifted a
        # whole channel's output by up to 2^-9 of its scale)
        mean, invstd = mean.to(ct), invstd.to(ct)
    alpha = invstd if w is None else invstd * w.to(ct)
    beta = _fma(torch.zeros_like(mean) if b is None else b.to(ct), mean, alpha, -1.0)
    if ct != a.dtype:
        return _fma(channel_view(beta, a), a.to(ct), channel_view(alpha, a)).to(a.dtype)
    return _fma(channel_view(beta, a), a, channel_view(alpha, a))


def _layout_ok(a: torch.Tensor) -> bool:
    return (a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and a.dim() >= 3
            and a.numel() > 0 and a.numel() // (a.shape[0] * a.shape[1]) > 1 and a.is_contiguous())


def exact_supported(a: torch.Tensor) -> bool:
    """Whether :class:`ExactStats` reproduces PyTorch for chunks like ``a``: CPU, float32/float64,
    NCHW-contiguous, more than one element per sample and channel (PyTorch reduces ``[N, C]``,
    ``[N, C, 1, 1]`` and channels-last tensors with a thread-partitioned float32 kernel instead),
    and this PyTorch build rounds as :class:`ExactStats` does (:func:`reproduces_torch`)."""
    return _layout_ok(a) and reproduces_torch(a.dtype)


@functools.lru_cache(maxsize=None)
def reproduces_torch(dtype: torch.dtype) -> bool:
    """Probe, once per dtype, that :class:`ExactStats` and :func:`bn_output` give this PyTorch
    build's ``F.batch_norm`` bit for bit (statistics, output, running statistics) on a small
    tensor in two chunks. The formulas were read off torch 2.13 on x86-64; another version or
    CPU that rounds elsewhere falls back to the float64 Chan statistics (:class:`ChunkStats`)."""
    try:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(6, 3, 5, 7, generator=g, dtype=dtype) * 3 + 0.7).contiguous()
        bn = nn.BatchNorm2d(3).to(dtype)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(3, generator=g, dtype=dtype) + 0.5)
            bn.bias.copy_(torch.randn(3, generator=g, dtype=dtype))
        ref = copy.deepcopy(bn)
        with torch.no_grad():
            want, save_mean, save_invstd = torch.ops.aten.native_batch_norm(
                x, ref.weight, ref.bias, ref.running_mean, ref.running_var, True, 0.1, ref.eps)
            st = ExactStats()
            for part in (x[:4], x[4:]):
                st.add_sum(part)
            mean = st.mean()
            for part in (x[:4], x[4:]):
                st.add_var(part)
            invstd = st.invstd(bn.eps)
            st.update_running(bn)
            got = torch.cat([bn_output(bn, part, mean, invstd) for part in (x[:4], x[4:])])
        return bool(torch.equal(mean, save_mean) and torch.equal(invstd, save_invstd) and torch.equal(got, want)
                    and torch.equal(bn.running_mean, ref.running_mean) and torch.equal(bn.running_var, ref.running_var))
    except Exception:  # pragma: no cover - any failure: not reproducible here
        return False


def _kernels():
    """Numba kernels (:mod:`edgesnn.kernels.numba_bn`): per channel, the sequential float64
    accumulation of PyTorch's loop; ``None`` without usable Numba (no package, or a child forked
    after Numba's OpenMP threads started): torch fallback (cumsum, slower)."""
    from ..kernels.dispatch import numba_available

    if not numba_available():
        return None
    try:
        from ..kernels.launch import launch
        from ..kernels.numba_bn import seq_sqdev, seq_sum
    except Exception:  # pragma: no cover - Numba present but its kernels do not load: torch fallback
        return None
    return launch(seq_sum), launch(seq_sqdev)  # (one launch at a time on the workqueue layer: kernels.launch)


def _flat3(a: torch.Tensor) -> torch.Tensor:
    a = a.detach()
    if not a.is_contiguous():
        a = a.contiguous()
    return a.reshape(a.shape[0], a.shape[1], -1)


def _seq_sum_torch(rows: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    """Fallback without Numba: sequential float64 sums through ``cumsum`` (``rows [C, L]``)."""
    return torch.cumsum(torch.cat([acc[:, None], rows.double()], 1), 1)[:, -1]


class ExactStats:
    """Training-mode BatchNorm statistics over chunks along dim 0, bit-identical to PyTorch's CPU
    ``F.batch_norm`` on the concatenation of the chunks (in order).

    Two passes over the same chunks, in the same order::

        st = ExactStats()
        for a in chunks: st.add_sum(a)      # pass 1: sequential float64 sums
        mean = st.mean()                    # float: PyTorch's save_mean
        for a in chunks: st.add_var(a)      # pass 2: sum of (a - mean)^2 (float), in float64
        invstd = st.invstd(bn.eps)          # PyTorch's save_invstd
        st.update_running(bn)               # running_mean/var/num_batches_tracked, as PyTorch
        z = bn_output(bn, a, mean, invstd)  # per chunk: PyTorch's output, bit for bit

    ``n`` is the number of values per channel (``N`` in PyTorch's formulas). Chunks must satisfy
    :func:`exact_supported`; the reduction runs in place on the chunk (no copy when contiguous).
    """

    def __init__(self) -> None:
        self.n = 0
        self.n_var = 0
        self.dtype: Optional[torch.dtype] = None
        self._sum: Optional[torch.Tensor] = None
        self._sq: Optional[torch.Tensor] = None
        self._mean: Optional[torch.Tensor] = None

    def _check(self, a: torch.Tensor) -> None:
        if not _layout_ok(a):
            raise ValueError(f"ExactStats: unsupported chunk {tuple(a.shape)} {a.dtype} on {a.device}")
        if self.dtype is None:
            self.dtype = a.dtype
        elif a.dtype != self.dtype:
            raise ValueError("ExactStats: chunks of different dtypes")

    def add_sum(self, a: torch.Tensor, repeat: int = 1) -> None:
        """Pass 1: add a chunk ``[n, C, ...]`` (``repeat`` times over: ``T`` copies of one step) to
        the per-channel sums."""
        if self._mean is not None:
            raise RuntimeError("ExactStats.add_sum after mean()")
        self._check(a)
        a3 = _flat3(a)
        if self._sum is None:
            self._sum = torch.zeros(a3.shape[1], dtype=torch.float64)
        k = _kernels()
        if k is not None:
            k[0](a3.numpy(), self._sum.numpy(), repeat)
        else:
            rows = a3.transpose(0, 1).reshape(a3.shape[1], -1)
            self._sum = _seq_sum_torch(rows.repeat(1, repeat), self._sum)
        self.n += repeat * a3.shape[0] * a3.shape[2]

    def mean(self) -> torch.Tensor:
        """The per-channel batch mean ``[C]`` in the chunks' dtype (PyTorch's ``save_mean``); ends pass 1."""
        if self._mean is None:
            if self._sum is None:
                raise RuntimeError("ExactStats.mean before add_sum")
            self._mean = (self._sum / self.n).to(self.dtype)  # double quotient, rounded once
        return self._mean

    def add_var(self, a: torch.Tensor, repeat: int = 1) -> None:
        """Pass 2: add a chunk's (``[n, C, ...]``) squared deviations from :meth:`mean` (``repeat`` as in
        :meth:`add_sum`)."""
        mean = self.mean()
        self._check(a)
        a3 = _flat3(a)
        if self._sq is None:
            self._sq = torch.zeros(a3.shape[1], dtype=torch.float64)
        k = _kernels()
        if k is not None:
            k[1](a3.numpy(), mean.numpy(), self._sq.numpy(), repeat)
        else:
            d = a3 - mean.view(1, -1, 1)
            rows = (d * d).transpose(0, 1).reshape(a3.shape[1], -1)
            self._sq = _seq_sum_torch(rows.repeat(1, repeat), self._sq)
        self.n_var += repeat * a3.shape[0] * a3.shape[2]

    def var_sum(self) -> torch.Tensor:
        """Per-channel sum of squared deviations ``[C]``, rounded to the chunks' dtype (PyTorch's ``var_sum``)."""
        if self._sq is None or self.n_var != self.n:
            raise RuntimeError("ExactStats: pass 2 (add_var) incomplete")
        return self._sq.to(self.dtype)

    def var(self, unbiased: bool = False) -> torch.Tensor:
        """Per-channel batch variance ``[C]`` as PyTorch rounds it: ``var_sum / N`` (or ``N - 1``) in the
        chunks' dtype."""
        n = self.n - 1 if unbiased else self.n
        return self.var_sum() / torch.tensor(n, dtype=self.dtype)

    def invstd(self, eps: float) -> torch.Tensor:
        """``1 / sqrt(var + eps)`` ``[C]`` in float64 from the rounded ``var``, then rounded to the chunks'
        dtype (``save_invstd``)."""
        v = self.var().double()
        inv = 1.0 / torch.sqrt(v + eps)
        if eps == 0:
            inv = torch.where(v == 0, torch.zeros_like(inv), inv)
        return inv.to(self.dtype)

    def update_running(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """``bn``'s running statistics and ``num_batches_tracked``, as ``F.batch_norm`` would update them."""
        update_running_exact(bn, self.mean(), self.var_sum(), self.n)


def update_running_exact(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var_sum: torch.Tensor,
                         count: int) -> None:
    """PyTorch's running-statistics update, bit for bit (``batch_norm_cpu_update_stats_template``):
    ``m = param_t(momentum)``; ``running_mean = m * mean + (1 - m) * running_mean`` in the
    parameter dtype; ``running_var = double(m) * double(var_sum / (N - 1)) + (1 - m) * running_var``
    (the last product in the parameter dtype), rounded once. ``mean [C]`` / ``var_sum [C]``: as
    :meth:`ExactStats.mean` / :meth:`ExactStats.var_sum`; ``count``: values per channel (``N``)."""
    if not (bn.training and bn.track_running_stats):
        return
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    with torch.no_grad():
        if bn.running_mean is not None:
            dt = bn.running_mean.dtype
            m = torch.tensor(momentum, dtype=dt)
            bn.running_mean.copy_(m * mean.to(dt) + (1 - m) * bn.running_mean)
        if bn.running_var is not None:
            dt = bn.running_var.dtype
            m = torch.tensor(momentum, dtype=dt)
            unbiased = (var_sum.to(dt) / torch.tensor(count - 1, dtype=dt)).double()
            bn.running_var.copy_((m.double() * unbiased + ((1 - m) * bn.running_var).double()).to(dt))
