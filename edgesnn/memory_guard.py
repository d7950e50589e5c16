"""Refuse, in one line, a buffer larger than this machine's physical memory before allocating it.

Imports nothing heavy (no torch, no numpy): the command lines call it while checking flags. On
Linux an allocation larger than RAM + swap fails at once with a traceback, and a smaller but still
too large one gets the process OOM-killed without a word; a size known ahead (``T x batch x
sample``) is checked here instead. Only sizes above the physical memory are refused: anything
that fits is left to run (the planner, ``edgesnn plan``, predicts the whole peak).
"""

from __future__ import annotations

import math
import os
from decimal import Decimal
from typing import Iterable, Optional

from .errors import UsageError

__all__ = ["physical_memory", "shape_bytes", "human_bytes", "show_bytes", "check_fits_in_memory", "is_out_of_memory",
           "is_size_overflow", "OUT_OF_MEMORY_HINT", "META_PROBE_BYTES"]

#: how torch says a size does not fit its 64-bit integers (a shape's product, one dimension)
_OVERFLOW_TEXTS = ("Overflow when unpacking long", "Storage size calculation overflowed",
                   "too large to convert to C", "into an index-sized integer")

#: a layer's sample above this many bytes has its output shape taken on PyTorch's ``meta`` device
#: (nothing allocated) by the planner and the NIR import; smaller ones run for real, as the first
#: meta call loads machinery worth ~150 MiB of RSS on a CUDA build of PyTorch (2.15+cu132)
META_PROBE_BYTES = 64 * 2**20

#: what the command line's one line for an allocation failure suggests
OUT_OF_MEMORY_HINT = "lower --batch-size/--timesteps or see edgesnn plan"


def physical_memory() -> Optional[int]:
    """This machine's physical memory in bytes (``SC_PHYS_PAGES x SC_PAGE_SIZE``), or ``None`` when
    the system does not say (then nothing is refused)."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def shape_bytes(shape: Iterable[int], itemsize: int = 4) -> int:
    """Bytes of a dense tensor of ``shape`` (Python integers: never overflows, unlike a NumPy product)."""
    return math.prod(int(d) for d in shape) * int(itemsize)


def human_bytes(n: float) -> str:
    """Bytes for people: ``1.50 GiB``, ``512 B``; up to EiB, beyond that in exponent notation."""
    for unit, k in (("EiB", 2**60), ("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= k:
            v = Decimal(n) / k if isinstance(n, int) else n / k  # an int beyond float range stays exact
            return f"{v:.2f} {unit}" if abs(v) < 10000 else f"{v:.3g} {unit}"
    return f"{int(n)} B"


def show_bytes(n: int) -> str:
    """``n`` bytes for a message: ``"16384000000000 bytes (14.90 TiB)"`` (``"512 bytes"`` below 1 KiB)."""
    return f"{n} bytes" + ("" if abs(n) < 2**10 else f" ({human_bytes(n)})")


def check_fits_in_memory(nbytes: int, what: str, hint: str = "", error: type = UsageError) -> None:
    """Raise ``error`` (one line: ``"WHAT needs N bytes (..), but this machine has M bytes (..) of
    memory; HINT"``) when ``nbytes`` exceeds :func:`physical_memory`; anything that fits passes.

    ``what`` names the parameter and the buffer (``"--timesteps 1000000000 with batch 64: one
    batch's input over T [T, B, 64] float32"``); ``hint`` says what to lower (or ``edgesnn plan``).
    """
    have = physical_memory()
    if have is None or nbytes <= have:
        return
    raise error(f"{what} needs {show_bytes(nbytes)}, but this machine has {show_bytes(have)} of memory"
                + (f"; {hint}" if hint else ""))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: ``MemoryError``, or torch's CPU allocator's
    ``RuntimeError`` (``DefaultCPUAllocator: can't allocate memory``). Nothing else is."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc)


def is_size_overflow(exc: BaseException) -> bool:
    """Whether ``exc`` says a size passed the 64-bit integers of a tensor shape: torch's ``TypeError``
    / ``RuntimeError`` naming the overflow, or Python's ``OverflowError`` for an integer too large for
    C (:data:`_OVERFLOW_TEXTS`; an ``OverflowError`` of float math is not one)."""
    return isinstance(exc, (TypeError, RuntimeError, OverflowError)) and any(t in str(exc) for t in _OVERFLOW_TEXTS)
