"""Kernels for the LIF and RevLIF time loops, behind one dispatch (:mod:`edgesnn.kernels.dispatch`)."""

from .dispatch import BACKENDS, lif_multistep, resolve_backend, revlif_multistep

__all__ = ["BACKENDS", "lif_multistep", "resolve_backend", "revlif_multistep"]
