"""edgesnn: memory-lean training of spiking neural networks on edge devices."""

__version__ = "0.1.0"
