"""Kernels for the LIF and RevLIF time loops, behind one dispatch (:mod:`edgesnn.kernels.dispatch`).

* :mod:`.neuron_math`: the per-neuron math, one source for CPU and CUDA;
* :mod:`.numba_cpu`: fused CPU kernels (Numba), :mod:`.cuda_kernels`: fused CUDA kernels (numba-cuda);
* :mod:`.custom_ops`: both registered as ``torch.library`` custom ops (``torch.compile`` friendly);
* :mod:`.config`: thread counts and the JIT cache folder; ``edgesnn warmup`` precompiles;
* :mod:`.buffers`: reused output buffers of the CPU kernels (no page-faulting fresh memory per step);
* :mod:`.launch`: every parallel CPU kernel launch (one at a time on Numba's non-thread-safe
  ``workqueue`` layer).
"""

from .config import cache_dir, configure_cache, get_num_threads, set_num_threads
from .dispatch import BACKENDS, lif_multistep, resolve_backend, revlif_multistep

__all__ = ["BACKENDS", "lif_multistep", "resolve_backend", "revlif_multistep",
           "cache_dir", "configure_cache", "get_num_threads", "set_num_threads"]
