"""Measure what autograd keeps for backward, and the process's peak resident memory.

:class:`SavedTensorCounter` counts the *unique storages* that autograd saves while it is active
(via ``torch.autograd.graph.saved_tensors_hooks``), optionally excluding given tensors (a node's
own input and output, which the neighbouring layers keep anyway). ``tracemalloc`` does not see
tensors; RSS is read from ``/proc/self/status``.
"""

from __future__ import annotations

from typing import Iterable, Tuple

import torch

__all__ = ["SavedTensorCounter", "peak_rss_bytes", "rss_bytes", "reset_peak_rss"]


def _storage_key(t: torch.Tensor) -> Tuple[int, str]:
    st = t.untyped_storage()
    return st.data_ptr(), str(t.device)


class SavedTensorCounter:
    """Context manager recording the unique storages autograd saves inside it.

    Attributes after exit: ``storages`` (dict key -> bytes). ``bytes(exclude=...)`` sums them,
    leaving out the storages of the given tensors.
    """

    def __init__(self) -> None:
        self.storages: dict = {}
        self._keep: list = []  # keep saved tensors alive so storage pointers are not reused
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if isinstance(t, torch.Tensor) and t.untyped_storage().nbytes() > 0:
            self.storages[_storage_key(t)] = t.untyped_storage().nbytes()
            self._keep.append(t)
        return t

    def __enter__(self) -> "SavedTensorCounter":
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def bytes(self, exclude: Iterable[torch.Tensor] = ()) -> int:
        """Bytes of the saved storages, leaving out those of the tensors in ``exclude``."""
        skip = {_storage_key(t) for t in exclude if isinstance(t, torch.Tensor)}
        return sum(n for k, n in self.storages.items() if k not in skip)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status (Linux only)")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``), in bytes (Linux)."""
    return _status_bytes("VmHWM")


def rss_bytes() -> int:
    """Resident set size of this process now (``VmRSS``), in bytes (Linux)."""
    return _status_bytes("VmRSS")


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (writes 5 to ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
