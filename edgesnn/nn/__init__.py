"""Neural-network modules: spiking nodes and helpers for multi-step models."""

from .neurons import LIF, RevLIF
from .layers import SeqToANN

__all__ = ["LIF", "RevLIF", "SeqToANN"]
