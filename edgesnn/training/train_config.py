"""The settings of one training run (:class:`TrainConfig`), checked field by field."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from ..errors import UsageError
from ..lr_schedules import ADAM_RATE_MAX, ADAM_RATE_RANGE, is_float32_rate
from ..models import int_list
from .lr_schedule import check_schedule_name
from .micro_batch import check_micro_batch
from .outputs import POOLS

__all__ = ["TrainConfig", "MAX_SEED"]

MAX_SEED = 2**32 - 1  # NumPy's seed range; the epoch orders use seed * 1000 + epoch (within int64)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and the JSON report)."""

    dataset: str = "digits"
    model: str = "mlp"
    neuron: object = "lif"  # a neuron spec or a list with one per spiking layer
    timesteps: int = 4
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    data_path: Optional[str] = None
    backend: str = "auto"
    hidden: List[int] = field(default_factory=lambda: [128, 128])  # mlp widths
    channels: List[int] = field(default_factory=lambda: [16, 32])  # convnet widths
    batchnorm: bool = True  # False: no BatchNorm (per-sample models: DDP on CPU matches one process exactly)
    memopt: bool = False  # edgesnn.optimize_memory: chunked blocks, packed inputs (same gradients, less memory)
    revlif_alpha: Optional[float] = None  # RevLIF output mixing y = alpha x + s (None: the node's default, 1/8)
    lr_schedule: str = "constant"  # or "cosine": per-step decay to 0 (see .lr_schedule; stored if not constant)
    pool: str = "avg"  # or "max": the conv models' 2x2 pools (stored if not avg)
    micro_batch: Optional[int] = None  # compute each batch this many samples at a time (see .micro_batch; stored if set)

    def validate(self) -> None:
        """Refuse a bad field with a one-line :class:`~edgesnn.errors.UsageError` naming it."""
        for name in ("dataset", "model", "backend"):  # (a list was an 'unhashable type' TypeError later)
            if not isinstance(getattr(self, name), str):
                raise UsageError(f"{name}: expected a name (str), got {getattr(self, name)!r:.80}")
        for name in ("timesteps", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"{name}: expected an integer >= 1, got {v!r}")
        check_schedule_name(self.lr_schedule)
        if self.pool not in POOLS:
            raise UsageError(f"pool: expected one of {', '.join(POOLS)}, got {self.pool!r}")
        for name in ("batchnorm", "memopt"):  # a string such as "no" would count as true
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if self.data_path is not None and not isinstance(self.data_path, (str, os.PathLike)):
            raise UsageError(f"data_path: expected None or a path (str or os.PathLike), got {self.data_path!r}")
        for name in ("hidden", "channels"):  # as plain ints: the checkpoint stores them (a NumPy integer was
            try:                             # refused only there, after the first epoch's work)
                setattr(self, name, list(int_list(getattr(self, name), name)))
            except ValueError as e:
                raise UsageError(str(e)) from None
        if isinstance(self.lr, int) and not isinstance(self.lr, bool):
            self.lr = float(self.lr)  # lr=1 is 1.0 (the checkpoint stores a float)
        if not (isinstance(self.lr, float) and is_float32_rate(self.lr, ADAM_RATE_MAX)):
            raise UsageError(f"lr: expected {ADAM_RATE_RANGE}, got {self.lr!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed: expected an integer in [0, {MAX_SEED}], got {self.seed!r}")
        if self.batchnorm and self.batch_size < 2:
            raise UsageError("batch_size: BatchNorm needs at least 2 samples per batch, got 1; train without "
                             "BatchNorm (batchnorm=False, --no-batchnorm) for batch 1")
        check_micro_batch(self.micro_batch, self.batchnorm)
        a = self.revlif_alpha
        if a is not None and not (isinstance(a, float) and math.isfinite(a) and a > 0):
            raise UsageError(f"revlif_alpha: expected None or a finite number > 0 (a power of two 2^-k in exact mode), got {a!r}")
