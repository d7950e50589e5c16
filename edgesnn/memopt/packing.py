"""Compact storage of a block's saved input: 1 bit per spike, small integers for pooled spikes.

What a tensor holds is known from the graph (which layer produced it), never from its values:
the optimizer only packs a tensor that a LIF node produced, optionally followed by max-pooling
or flattening (still bits) or by average pooling (``levels:n``: the window's spike count, n a power
of two up to 128, one byte per element; :func:`edgesnn.memopt.layers.output_codec`). All
functions work per time step, so a chunk ``[t0:t1]`` unpacks alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["SavedInput", "save_input", "PackedOutput"]

_SHIFTS = torch.arange(8, dtype=torch.uint8)
_WEIGHTS = (1 << _SHIFTS).to(torch.uint8)


def _cpu_kernels(device: torch.device, dtype: torch.dtype) -> bool:
    """The Numba kernels (:mod:`edgesnn.kernels.numba_bits`) serve CPU float tensors."""
    from ..kernels.dispatch import numba_available

    return device.type == "cpu" and dtype in (torch.float32, torch.float64) and numba_available()


def pack_bits(x: torch.Tensor, step_chunk: int = 8, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pack a binary ``[T, ...]`` tensor (``M`` elements per step) into ``uint8 [T, ceil(M / 8)]`` (bit ``j``
    of byte ``i`` is element ``8 i + j``), into ``out`` when given (a contiguous ``uint8 [T, ceil(M / 8)]``)."""
    T = x.shape[0]
    flat = x.reshape(T, -1)
    M = flat.shape[1]
    nbytes = (M + 7) // 8
    if out is None:
        out = torch.empty(T, nbytes, dtype=torch.uint8, device=x.device)
    if _cpu_kernels(x.device, x.dtype) and out.is_contiguous():
        from ..kernels.numba_bits import pack_rows

        return pack_rows(flat.contiguous(), out)
    w = _WEIGHTS.to(x.device)
    for t0 in range(0, T, step_chunk):
        t1 = min(t0 + step_chunk, T)
        b = flat[t0:t1] != 0
        if M % 8:
            b = torch.cat([b, b.new_zeros(t1 - t0, nbytes * 8 - M)], dim=1)
        torch.sum(b.view(t1 - t0, nbytes, 8).to(torch.uint8) * w, dim=2, dtype=torch.uint8, out=out[t0:t1])
    return out


_TABLES: dict = {}


def _byte_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[256, 8]``: the 8 bits of every byte value as 0/1 in ``dtype`` (one gather unpacks a byte)."""
    key = (dtype, str(device))
    if key not in _TABLES:
        values = torch.arange(256, dtype=torch.int64).unsqueeze(1)
        _TABLES[key] = ((values >> torch.arange(8)) & 1).to(dtype=dtype, device=device)
    return _TABLES[key]


def unpack_bits(packed: torch.Tensor, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_bits` for ``packed [k, nbytes]`` -> ``[k, *shape]`` of 0/1 in ``dtype``."""
    k = packed.shape[0]
    M = 1
    for s in shape:
        M *= s
    if _cpu_kernels(packed.device, dtype):
        from ..kernels.numba_bits import unpack_rows

        return unpack_rows(packed.reshape(k, -1), M, dtype).view(k, *shape)
    bits = _byte_table(dtype, packed.device)[packed.reshape(-1).long()]  # [k * nbytes, 8]
    bits = bits.view(k, -1)
    return (bits if bits.shape[1] == M else bits[:, :M].contiguous()).view(k, *shape)


@dataclass
class SavedInput:
    """A block's input ``[T, B, ...]`` as the block keeps it for backward.

    ``codec``: ``"once"`` (time-invariant input stored as ``[B, ...]``), ``"bits"`` (binary,
    1 bit per element), ``"levels:n"`` (a mean of ``n`` binary values, ``n`` a power of two:
    1 byte per element) or ``"dense"`` (the tensor itself).
    ``version``: for ``once`` and ``dense`` (the caller's tensor, not a copy), its version counter
    when it was saved (:meth:`check_unmodified`); ``None`` for the packed copies.
    """

    codec: str
    data: torch.Tensor
    shape: Tuple[int, ...]
    dtype: torch.dtype
    version: Optional[int] = None

    @property
    def nbytes(self) -> int:
        """Bytes of the stored (possibly packed) data."""
        return self.data.numel() * self.data.element_size()

    def chunk(self, t0: int, t1: int) -> torch.Tensor:
        """Steps ``t0:t1`` as a dense ``[t1 - t0, B, ...]`` tensor (a fresh tensor, or a view for ``dense``)."""
        if self.codec == "once":
            return self.data.unsqueeze(0).expand(t1 - t0, *self.data.shape)
        if self.codec == "bits":
            return unpack_bits(self.data[t0:t1], self.shape[1:], self.dtype)
        if self.codec.startswith("levels:"):
            n = int(self.codec.split(":")[1])
            return (self.data[t0:t1].to(self.dtype) / n)
        return self.data[t0:t1]

    def check_unmodified(self) -> None:
        """Raise as PyTorch does for a saved tensor when the input kept as it is (``once``,
        ``dense``) was modified in place after the forward: its gradient would be wrong."""
        if self.version is not None and self.data._version != self.version:
            raise RuntimeError(
                "one of the variables needed for gradient computation has been modified by an inplace operation: "
                f"the input {list(self.shape)} of an optimize_memory block is at version {self.data._version}; "
                f"expected version {self.version} instead")


def is_time_invariant(x: torch.Tensor) -> bool:
    """``x [T, B, ...]`` repeats one ``[B, ...]`` tensor over T as a zero-stride view (``expand``)."""
    return x.dim() >= 2 and x.shape[0] > 1 and x.stride(0) == 0


def save_input(x: torch.Tensor, codec: str) -> SavedInput:
    """Keep ``x [T, B, ...]`` compactly: ``codec`` is what the graph says ``x`` holds (``bits``,
    ``levels:n`` or ``dense``); a zero-stride time dim is kept once whatever the codec."""
    shape, dtype = tuple(x.shape), x.dtype
    if is_time_invariant(x):
        return SavedInput("once", x[0].detach(), shape, dtype, _version(x))
    x = x.detach()
    if codec == "bits":
        return SavedInput("bits", pack_bits(x), shape, dtype)
    if codec.startswith("levels:"):
        n = int(codec.split(":")[1])
        return SavedInput(codec, (x * n).round_().to(torch.uint8), shape, dtype)
    return SavedInput("dense", x, shape, dtype, _version(x))


def _version(x: torch.Tensor) -> Optional[int]:
    """``x``'s version counter (``None`` for an inference tensor, which has none)."""
    return None if x.is_inference() else x._version


class PackedOutput:
    """A block's output ``[T, B, ...]`` written chunk by chunk straight into the next block's compact
    input (``codec``: ``bits`` or ``levels:n``; no dense ``[T, ...]`` tensor)."""

    def __init__(self, codec: str, T: int) -> None:
        self.codec, self.T = codec, T
        self.saved: Optional[SavedInput] = None

    def write(self, t0: int, t1: int, o: torch.Tensor) -> None:
        """Steps ``t0:t1`` of the output, ``o [t1 - t0, B, ...]`` (0/1 spikes, or multiples of ``1/n``
        for ``levels:n``), packed into :attr:`saved` (allocated at the first write)."""
        codec = self.codec
        if self.saved is None:
            shape = (self.T,) + tuple(o.shape[1:])
            per_step = 1
            for d in shape[1:]:
                per_step *= d
            if codec == "bits":
                data = torch.empty(self.T, (per_step + 7) // 8, dtype=torch.uint8, device=o.device)
            else:
                data = torch.empty(shape, dtype=torch.uint8, device=o.device)
            self.saved = SavedInput(codec, data, shape, o.dtype)
        if codec == "bits":
            pack_bits(o, out=self.saved.data[t0:t1])
        else:
            n = int(codec.split(":")[1])
            self.saved.data[t0:t1] = (o * n).round_().to(torch.uint8)
