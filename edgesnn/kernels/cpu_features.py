"""Opt-in 512-bit vectors for the Numba kernels (``EDGESNN_WIDE_VECTORS``), decided once per process
before Numba's CPU target is created."""

from __future__ import annotations

import os
import sys
from typing import Optional

from .numba_env import _export_numba_setting, _warn_once

__all__ = ["configure_cpu_features"]

_CPU_FEATURES: Optional[str] = None  # the feature string chosen by configure_cpu_features

_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("", "0", "false", "no", "off")


def _wide_vectors_requested() -> bool:
    """``EDGESNN_WIDE_VECTORS`` as a switch (1/0, true/false, yes/no, on/off, any case; unset: off);
    any other value is warned about once and counts as off."""
    raw = os.environ.get("EDGESNN_WIDE_VECTORS")
    if raw is None:
        return False
    word = raw.strip().lower()
    if word not in _TRUE_WORDS + _FALSE_WORDS:
        _warn_once(("env", "EDGESNN_WIDE_VECTORS", raw),
                   f"EDGESNN_WIDE_VECTORS={raw!r}: expected 1/0, true/false, yes/no or on/off; wide vectors stay off")
    return word in _TRUE_WORDS


def _cpu_target_created() -> bool:
    """Numba's CPU target (which fixes the CPU features) was already created (by the first ``@njit``)."""
    registry = sys.modules.get("numba.core.registry")
    target = getattr(registry, "cpu_target", None)
    return "_toplevel_target_context" in getattr(target, "__dict__", {})


def _wide_features() -> str:
    """The host's features plus ``-prefer-256-bit`` on an AVX-512 host, else ``""``."""
    try:
        import llvmlite.binding as ll

        feats = ll.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - llvmlite without host feature detection
        return ""
    return feats + ",-prefer-256-bit" if "+avx512f" in feats.split(",") else ""


def configure_cpu_features() -> str:
    """Opt-in 512-bit vectors for the Numba kernels: ``EDGESNN_WIDE_VECTORS=1`` (or true/yes/on).

    LLVM tunes some AVX-512 cores (Intel server cores) for 256-bit vectors (a flag meant for CPUs
    that clock down under 512-bit load) and others (AMD Zen 4 / 5) for 512-bit ones. On a Xeon
    (Emerald Rapids) test VM the opt-in made the kernels 1.2-1.6x faster; on the AMD EPYC VM Numba
    already emits 512-bit vectors and it changes nothing (docs/design.md §3). With the switch on,
    on an AVX-512 host, and with ``NUMBA_CPU_FEATURES`` unset, this sets ``NUMBA_CPU_FEATURES``
    (and ``numba.config.CPU_FEATURES``) to the host's features plus ``-prefer-256-bit``.
    Process-wide; it takes effect only before Numba's CPU target is created (the first ``@njit``
    anywhere in the process: :func:`configure` runs it before the kernels'), and is warned about
    once when it comes too late. Decided once per process; returns the feature string in effect
    (``""``: Numba's default).
    """
    global _CPU_FEATURES
    if _CPU_FEATURES is None:
        _CPU_FEATURES = _choose_cpu_features()
    return _CPU_FEATURES


def _choose_cpu_features() -> str:
    if os.environ.get("NUMBA_CPU_FEATURES"):
        return os.environ["NUMBA_CPU_FEATURES"]
    if not _wide_vectors_requested():
        return ""
    feats = _wide_features()
    if not feats:
        return ""
    if _cpu_target_created():
        _warn_once(("wide-late",), "EDGESNN_WIDE_VECTORS: has no effect, Numba compiled or defined a function before "
                                   "the edgesnn kernels were loaded; load them first or set NUMBA_CPU_FEATURES")
        return ""
    _export_numba_setting("NUMBA_CPU_FEATURES", "CPU_FEATURES", feats)
    return feats
