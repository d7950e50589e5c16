"""What the NIR exporter and importer share: the ``nir`` import, the error type, the default ``dt``."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DependencyError, UsageError


__all__ = ["DEFAULT_DT", "NIRError", "nir_module", "to_numpy"]

#: Seconds per time step unless told otherwise (SpikingJelly's and most NIR tools' default).
DEFAULT_DT = 1e-4


class NIRError(UsageError):
    """The model or graph cannot be converted faithfully (the message says which layer and why)."""


def nir_module():
    """The ``nir`` package, or a one-line error naming the extra that installs it."""
    try:
        import nir
    except ImportError:
        raise DependencyError("NIR interchange needs the nir package: pip install 'edgesnn[nir]' (nir 1.0.8)") from None
    return nir


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 NumPy copy of ``t`` (what NIR nodes store)."""
    return t.detach().cpu().to(torch.float32).numpy().copy()
