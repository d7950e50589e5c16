"""The float32 range edgesnn computes in, as a standard-library constant.

The kernels, the exported graphs and the device runner all compute in float32, so a setting or a
learning rate beyond this range would overflow there. Standard library only: the torch-free device
runner and ``edgesnn``'s argument checks import it without torch or NumPy.
"""

from __future__ import annotations

__all__ = ["FLOAT32_MAX"]

#: Largest finite float32 (``numpy.finfo(numpy.float32).max``, ``torch.finfo(torch.float32).max``).
FLOAT32_MAX = 3.4028234663852886e38
