"""Bytes the training process holds for its dataset, per built-in dataset of ``edgesnn train``.

How each loader in :mod:`edgesnn.training` holds its data (train and test splits together):

==============  ============  ========================================================================
dataset         held          resident bytes
==============  ============  ========================================================================
``digits``      memory        1,797 x 64 float32 inputs + int64 labels (``load_digits_dataset``)
``cifar10``     memory        60,000 x 3x32x32 float32 + int64 labels (``load_cifar10``: 737 MB)
``folder``      memory        N x 3x32x32 float32 + int64 labels; N depends on the folder: give
                              ``--dataset-bytes`` (N x 12,296 bytes at 32x32)
``nmnist``      mmap          uint8 frames ``[N, T, 2, 34, 34]`` memory-mapped from the frame
``dvsgesture``  mmap          cache (``edgesnn.training.events``): file-backed pages the kernel can
``shd``         mmap          drop, so only the int64 labels count; ``mapped_bytes`` says how much
                              the map spans (it shows in RSS as ``RssFile`` once read)
==============  ============  ========================================================================

Nothing is streamed from disk sample by sample; a custom loader that streams counts 0 bytes
(``--dataset-bytes 0``). The batches themselves are counted in the step and the evaluation pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

__all__ = ["DatasetSpec", "DATASET_SPECS", "dataset_memory"]


@dataclass(frozen=True)
class DatasetSpec:
    """One built-in dataset as the training process holds it.

    Attributes:
        name: ``edgesnn train --dataset`` value.
        train_samples, test_samples: samples per split (both are loaded).
        sample_shape: one sample's input shape (per time step for event data).
        dtype_bytes: bytes per input value (4: float32; 1: uint8 frames).
        held: ``"memory"`` (counted) or ``"mmap"`` (file-backed frames, not counted).
        events: the inputs have a time dim (``T`` frames per sample).
    """

    name: str
    train_samples: int
    test_samples: int
    sample_shape: Tuple[int, ...]
    dtype_bytes: int = 4
    held: str = "memory"
    events: bool = False

    @property
    def samples(self) -> int:
        return self.train_samples + self.test_samples

    def input_bytes(self, T: int) -> int:
        """Bytes of all inputs (both splits) at ``T`` time steps, wherever they are held."""
        per = math.prod(self.sample_shape) * self.dtype_bytes * (T if self.events else 1)
        return self.samples * per

    def resident_bytes(self, T: int) -> int:
        """Bytes counted in the plan: the inputs when held in memory, and the int64 labels."""
        return (self.input_bytes(T) if self.held == "memory" else 0) + 8 * self.samples


DATASET_SPECS: Dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 1348, 449, (64,)),
    "cifar10": DatasetSpec("cifar10", 50000, 10000, (3, 32, 32)),
    "nmnist": DatasetSpec("nmnist", 60000, 10000, (2, 34, 34), 1, "mmap", True),
    "dvsgesture": DatasetSpec("dvsgesture", 1077, 264, (2, 32, 32), 1, "mmap", True),
    "shd": DatasetSpec("shd", 8156, 2264, (1, 700), 1, "mmap", True),
}


def dataset_memory(name: Optional[str], T: int, in_shape: Tuple[int, ...],
                   dataset_bytes: Optional[int] = None) -> Dict[str, Any]:
    """The plan's ``dataset`` entry: ``name``, ``held``, ``bytes`` (counted), ``mapped_bytes``, ``test_samples``.

    Args:
        name: a key of :data:`DATASET_SPECS`, or None for custom data.
        T: time steps (event frames scale with T). in_shape: the planned sample shape; a named
            dataset must have as many values per sample.
        dataset_bytes: resident bytes of custom data (0: streamed or not counted); not with ``name``.

    Raises:
        ValueError: one line naming ``--dataset`` or ``--dataset-bytes``.
    """
    if name is not None and dataset_bytes is not None:
        raise ValueError("--dataset-bytes: give --dataset (a built-in dataset, its size is known) or "
                         "--dataset-bytes (custom data), not both")
    if name is None:
        n = 0 if dataset_bytes is None else int(dataset_bytes)
        if n < 0:
            raise ValueError(f"--dataset-bytes: expected a size >= 0, got {dataset_bytes!r}")
        return dict(name=None, held="memory" if n else "none", bytes=n, mapped_bytes=0, test_samples=None)
    spec = DATASET_SPECS.get(name)
    if spec is None:
        hint = "; its size depends on the folder: give --dataset-bytes instead" if name == "folder" else ""
        raise ValueError(f"--dataset: expected one of {', '.join(DATASET_SPECS)}, got {name!r}{hint}")
    if math.prod(spec.sample_shape) != math.prod(in_shape):
        raise ValueError(f"--dataset: {name} gives samples of {'x'.join(map(str, spec.sample_shape))} "
                         f"({math.prod(spec.sample_shape)} values), but --input is {'x'.join(map(str, in_shape))}")
    mapped = spec.input_bytes(T) if spec.held == "mmap" else 0
    return dict(name=name, held=spec.held, bytes=spec.resident_bytes(T), mapped_bytes=mapped,
                test_samples=spec.test_samples)
