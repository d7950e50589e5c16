"""Whole-network training memory: packed block inputs, chunked recomputation, exact BatchNorm.

Entry point: :func:`optimize_memory` (also ``edgesnn.optimize_memory``); for a model's own
per-time-step code between its layers, :func:`checkpoint_over_time` (also
``edgesnn.checkpoint_over_time``).
"""

from .optimize import optimize_memory
from .over_time import checkpoint_over_time
from .sequential import MemoryOptimizedSequential, uninstall

__all__ = ["optimize_memory", "checkpoint_over_time", "MemoryOptimizedSequential", "uninstall"]
