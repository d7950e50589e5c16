"""Data-parallel training on PyTorch's engine: ``torchrun --nproc-per-node N -m edgesnn train ...``.

What this module takes care of (each point was measured on this stack):

* **Process group**: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) :func:`setup`
  joins the group: ``gloo`` on CPU, ``nccl`` with ``--device cuda`` (one GPU per local rank).
  The model is not wrapped in ``DistributedDataParallel``: :func:`broadcast_parameters` gives every
  rank rank 0's weights and :func:`average_gradients` averages the gradients after each step's
  backward, in one flat all-reduce in the parameters' order. DDP regroups its gradient buckets after
  its first step, so from 3 ranks on gloo adds some gradients up in another order than in a run
  resumed from a checkpoint (whose first step has the initial buckets): the resumed run drifted by
  rounding. The flat all-reduce is the same in every step, and it also follows optimize_memory's
  chunked backward, which DDP's per-parameter hooks cannot.
* **Threads**: ``torchrun`` sets ``OMP_NUM_THREADS=1`` but Numba starts one thread per core in
  *every* rank, so N ranks oversubscribe the cores N times. :func:`rank_threads` gives each rank
  ``cores // local ranks`` threads (or ``--threads``); :func:`configure_threads` exports it as
  ``NUMBA_NUM_THREADS`` before Numba is imported and sets PyTorch's intra-op pool to the same.
* **Kernel cache**: Numba's on-disk cache is not safe to fill from several processes at once
  (and N ranks compiling the same kernels wastes N times the compile time). :func:`warm_kernels` lets local
  rank 0 compile (or load) them while the others wait at a barrier, then load them from the cache.
* **Data loader workers**: the training loop indexes in-memory tensors and starts no workers.
  A child forked after Numba's OpenMP threads started cannot run Numba's parallel kernels (GNU
  OpenMP is not fork-safe): edgesnn's kernels then take their PyTorch paths in that child (see
  :func:`edgesnn.kernels.config.configure_threading_layer`); a worker pool added later should use
  the ``spawn`` start method to keep the fused kernels.

* **Shutdown**: :func:`setup` imports ``torch._dynamo`` before it creates the group
  (:func:`import_before_group`), so ``destroy_process_group()`` really ends gloo's threads; the
  CLI waits at a barrier after rank 0 wrote its report, then every rank leaves the group.

Rank 0 alone writes checkpoints, reports and progress (atomically, as a single process does).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["DistInfo", "env_world", "rank_threads", "configure_threads", "setup", "warm_kernels", "barrier",
           "all_sum", "cpu_cores", "import_before_group", "epoch_order", "padding_weights"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: global rank and world size, rank and size on this node, device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, reports and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True with more than one process (``world > 1``)."""
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"distributed: environment variable {name}={value!r} is not an integer") from None


def env_world() -> DistInfo:
    """Rank and world size from the variables ``torchrun`` sets (a plain run: rank 0 of 1).

    With an initialised default process group (e.g. processes started by a test), the group's
    rank and size win over the environment.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    local_rank = _env_int("LOCAL_RANK", rank)
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            world, rank = dist.get_world_size(), dist.get_rank()
            local_world = _env_int("LOCAL_WORLD_SIZE", world)
            local_rank = _env_int("LOCAL_RANK", rank)
    except ImportError:  # pragma: no cover
        pass
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"distributed: bad RANK={rank} / WORLD_SIZE={world}")
    return DistInfo(rank, world, local_rank, max(1, local_world))


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def rank_threads(threads: Optional[int] = None, local_world: int = 1, cores: Optional[int] = None) -> int:
    """Threads for one rank: ``threads`` if given, else ``cores // local_world`` (at least 1)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {threads!r}")
        return threads
    cores = cpu_cores() if cores is None else cores
    return max(1, cores // max(1, local_world))


def configure_threads(n: int) -> Dict[str, int]:
    """Give this process ``n`` Numba threads and ``n`` PyTorch intra-op threads; returns the counts in use.

    Numba sizes its pool from ``NUMBA_NUM_THREADS`` when it is imported, so the variable is
    exported first (unless Numba is already loaded; then the pool keeps its size and only ``n`` of
    its threads are used). An explicit ``NUMBA_NUM_THREADS`` in the environment is kept as the
    pool size.
    """
    if "numba" not in sys.modules and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = str(n)
    from ..kernels.config import get_num_threads, set_num_threads

    set_num_threads(n)
    return get_num_threads()


def setup(device: str = "cpu", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); returns :class:`DistInfo`.

    ``device="cpu"`` uses ``gloo``; ``"cuda"`` uses ``nccl`` and binds this rank to GPU
    ``LOCAL_RANK``. A group that is already initialised is used as is. A single process starts
    no group.
    """
    import datetime

    import torch
    import torch.distributed as dist

    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {device!r}")
    info = env_world()
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device visible to PyTorch")
        if info.local_rank >= torch.cuda.device_count():
            raise ValueError(f"--device cuda: local rank {info.local_rank} has no GPU "
                             f"({torch.cuda.device_count()} visible); start at most that many processes per node")
        torch.cuda.set_device(info.local_rank)
    if info.world > 1 and not dist.is_initialized():
        import_before_group()
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        info = env_world()
    dev = f"cuda:{info.local_rank}" if device == "cuda" else "cpu"
    return DistInfo(info.rank, info.world, info.local_rank, info.local_world, dev)


def import_before_group() -> None:
    """Import ``torch._dynamo`` before the process group is created (:func:`setup` does).

    Measured on PyTorch 2.13 (gloo, CPU): importing it while a group exists (``DistributedDataParallel``
    and ``optimize_memory``'s fake-tensor pass do) adds 10 references to the group that
    ``destroy_process_group()`` never drops, so gloo's threads (``pt_gloo_runloop``, ``gloo_tcp_loop``)
    outlive it and run into the interpreter's shutdown: a rank then ended now and then with SIGABRT
    ("terminate called without an active exception") after a successful run. Imported first, it holds
    no group and ``destroy_process_group()`` joins those threads. The import is the one DDP makes anyway.
    """
    import importlib

    try:
        importlib.import_module("torch._dynamo")
    except Exception:  # pragma: no cover - a build without it: nothing then holds the group
        pass


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        import torch.distributed as dist

        if info.device.startswith("cuda"):
            dist.barrier(device_ids=[int(info.device.split(":")[1])])
        else:
            dist.barrier()


def all_sum(info: DistInfo, *values: float) -> Tuple[float, ...]:
    """Sum float values over all ranks (returns them unchanged in a single process)."""
    if not info.distributed:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return tuple(float(v) for v in t.tolist())


def warm_kernels(info: DistInfo, backend: str = "auto", notice: Optional[Callable[[], None]] = None,
                 memopt: bool = False) -> None:
    """Fill the Numba cache from local rank 0 before the other ranks compile; then a barrier.

    Only for the CPU kernels on a CPU device with Numba installed: the neurons' (``backend``
    ``auto`` or ``numba``) and, with ``memopt`` (``optimize_memory``'s kernels compile whatever the
    backend), the memory-optimised blocks'. ``notice`` (the first-run compile notice) is called on
    local rank 0 first.
    """
    global _WARMED
    from ..kernels.dispatch import numba_available

    use_numba = (backend in ("auto", "numba") or memopt) and info.device == "cpu" and numba_available()
    if not info.distributed or _WARMED:
        return
    if use_numba and info.local_rank == 0:
        if notice is not None:
            notice()
        from ..kernels.cli import warmup

        warmup(verbose=False)
    barrier(info)
    _WARMED = True


_WARMED = False  # warm_kernels ran in this process (the CLI calls it before train(), which calls it again)


def broadcast_parameters(model: "nn.Module", info: DistInfo) -> None:
    """Give every rank rank 0's parameters and buffers (what ``DistributedDataParallel`` does when it wraps a model)."""
    if not info.distributed:
        return
    import torch.distributed as dist

    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, 0)


def average_gradients(model: "nn.Module", info: DistInfo) -> None:
    """Average every parameter's ``.grad`` over the ranks, in one flat all-reduce.

    What ``edgesnn train`` uses under torchrun (see the module docstring); it also takes models
    ``DistributedDataParallel`` cannot wrap: optimize_memory's chunked backward runs
    ``torch.autograd.backward`` inside the step's backward, so DDP's per-parameter hooks would fire
    once per chunk ("marked as ready twice"). The result is DDP's: the mean of the ranks' gradients.
    Nothing happens in a single process.
    A parameter without a gradient on this rank counts as zero; one that no rank gave a gradient
    keeps ``grad = None`` (as a single process would: optimizers then skip it, so Adam's step count
    and moments stay untouched), decided in the same all-reduce (one flag per parameter).
    """
    if not info.distributed:
        return
    import torch
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    used = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=params[0].device)
    grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
             for p in params]
    flat = torch.cat(grads + [used])
    dist.all_reduce(flat)
    used_by = flat[-len(params):].tolist()
    flat = flat[:-len(params)] / info.world
    i = 0
    for p, users in zip(params, used_by):
        n = p.numel()
        if users == 0:
            p.grad = None
        elif p.grad is None:
            p.grad = flat[i:i + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[i:i + n].view_as(p.grad))
        i += n


def epoch_order(n: int, seed: int, epoch: int, dist: DistInfo) -> "torch.Tensor":
    """This rank's sample order for ``epoch``: :class:`torch.utils.data.DistributedSampler`'s, an int64
    index tensor ``[ceil(n / world)]``.

    One permutation per epoch (seed ``seed * 1000 + epoch``), padded to a multiple of the
    world size by repeating its first samples and dealt out round-robin, so rank ``r`` gets
    positions ``r, r + world, ...``. Batch ``k`` of all ranks together is then batch ``k`` of one
    process with ``world`` times the batch size, plus the repeats in the last batch; those weigh 0
    in the loss (:func:`padding_weights`), so every sample counts once per epoch. With one rank
    this is exactly the single-process order.
    """
    import torch
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=seed * 1000, drop_last=False)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long)


def padding_weights(start: int, size: int, n: int, dist: DistInfo) -> Optional[Tuple["torch.Tensor", int]]:
    """Per-sample loss weights ``[size]`` for this rank's batch at positions ``start .. start + size - 1``
    of its :func:`epoch_order` share of an epoch of ``n`` samples, and the samples all ranks' batches
    hold without the padding; ``None`` when no rank's batch holds padding (every batch but an epoch's
    last, and every batch when ``world`` divides ``n``: the plain mean loss, bit for bit).

    Rank ``r``'s position ``j`` is position ``r + world * j`` of the padded permutation, a repeat when
    that is ``>= n``. A real sample weighs ``world / real`` and a repeat 0: averaged over the ranks (as
    ``DistributedDataParallel`` does), the gradient is that of the mean loss over the ``real`` samples,
    one process's on the same batch.
    """
    import torch

    world = dist.world
    if (start + size) * world <= n:
        return None
    real = min(n, (start + size) * world) - start * world  # >= 1: fewer than world repeats, >= world positions
    keep = (dist.rank + world * torch.arange(start, start + size)) < n
    return keep.to(torch.float32) * (world / real), real
