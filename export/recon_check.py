"""The ``recon_tolerance`` an ``onnx-step`` export writes, or its refusal of a float-mode RevLIF model
whose float32 reconstruction is predicted to exceed it (the device runner stops at the first step
whose ``recon_error`` exceeds the tolerance and cannot recover).

Both the tolerance and the prediction come from :mod:`edgesnn.functional.revlif_autograd`
(:func:`~edgesnn.functional.revlif_autograd.float_mode_tolerance`,
:func:`~edgesnn.functional.revlif_autograd.float_mode_refusal`), the definitions the PyTorch
backward's check uses.
"""

from __future__ import annotations

from typing import Sequence

from ..functional.revlif_autograd import float_mode_refusal, float_mode_tolerance
from .prepare import ExportError

__all__ = ["step_recon_tolerance"]


def step_recon_tolerance(stages: Sequence, timesteps: int) -> float:
    """The manifest's ``recon_tolerance`` (state units) for ``stages`` (``Stage`` records with ``kind``
    ``"lif"``/``"revlif"`` and ``params``) run over ``timesteps`` steps: 0.0 when every RevLIF layer
    is exact (or there is none), else the largest float-mode layer's :func:`float_mode_tolerance`.

    Raises :class:`ExportError` (one line, naming the layer and ``beta``) when a float-mode layer's
    float32 reconstruction over ``timesteps`` is predicted beyond that tolerance."""
    floats = [st for st in stages if st.kind == "revlif" and not st.params.exact]
    for st in floats:
        why = float_mode_refusal(st.params, timesteps)
        if why:
            raise ExportError(f"onnx-step: layer {st.name}: {why}")
    return max((float_mode_tolerance(st.params) for st in floats), default=0.0)
