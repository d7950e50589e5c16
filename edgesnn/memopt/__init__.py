"""Whole-network training memory: packed block inputs, chunked recomputation, exact BatchNorm.

Entry point: :func:`optimize_memory` (also ``edgesnn.optimize_memory``).
"""

from .optimize import optimize_memory
from .sequential import MemoryOptimizedSequential, uninstall

__all__ = ["optimize_memory", "MemoryOptimizedSequential", "uninstall"]
