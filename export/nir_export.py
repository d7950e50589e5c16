"""``edgesnn export --format nir``: a LIF model as a NIR graph (``.nir``, HDF5; nir 1.0.8).

The conversion and the LIF <-> NIR parameter mapping (``tau_N = tau * dt``, ``v_leak = v_reset``,
``R = 1`` or ``tau``; the threshold one float32 below edgesnn's, since NIR fires at ``v > thr``
and edgesnn at ``v >= thr``; BatchNorm folded; RevLIF refused) live in :mod:`edgesnn.nir`; this
module only writes the file (atomically). Read it back with ``edgesnn.nir.load(path)``, which
restores the threshold exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from torch import nn

from ..user_state import evaluating

__all__ = ["export_nir"]


def export_nir(model: nn.Module, out: Union[str, Path], dt: Optional[float] = None) -> Path:
    """Write ``model`` (eval statistics) as a NIR graph to ``out``; returns the path. The model is
    converted in eval mode and handed back with every submodule in the mode it came in. ``dt``
    (seconds per step, a finite number > 0; default :data:`edgesnn.nir.DEFAULT_DT`) is checked by
    :func:`edgesnn.nir.to_nir`. A NaN or Inf in the model's parameters or buffers is refused
    (:func:`~.prepare.check_finite`)."""
    from ..nir import DEFAULT_DT, write
    from .prepare import check_finite, check_out_path

    out = check_out_path(out, "out")
    check_finite(model)
    with evaluating(model):
        return write(model, out, dt=DEFAULT_DT if dt is None else dt)
