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

The training loop feeds the ``mlp`` flat samples (``[features]``) and the conv models ``C, H, W``
ones (:func:`model_input_shape`); a plan's ``--input`` must be that shape, and its class count the
dataset's (:func:`dataset_classes`).

The class counts come from the loaders' own constants (``edgesnn.training.data.DIGITS_CLASSES`` /
``CIFAR10_CLASSES`` and ``edgesnn.training.events.EVENT_SPECS``), so the plan and the loaders cannot
disagree; importing them adds no heavy dependency (tonic, h5py and scikit-learn are imported only
when a loader runs). Sample counts and shapes are the datasets' published sizes, kept here and checked
against the loaders on small files in each real format (``tests/test_dataset_specs.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..training.data import CIFAR10_CLASSES, DIGITS_CLASSES
from ..training.events import EVENT_SPECS

__all__ = ["DatasetSpec", "DATASET_SPECS", "DEFAULT_CLASSES", "dataset_memory", "dataset_classes",
           "model_input_shape"]

#: ``edgesnn plan --classes`` without a built-in ``--dataset``
DEFAULT_CLASSES = 10


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
        num_classes: the labels' classes (the model's outputs).
    """

    name: str
    train_samples: int
    test_samples: int
    sample_shape: Tuple[int, ...]
    dtype_bytes: int = 4
    held: str = "memory"
    events: bool = False
    num_classes: int = 10

    @property
    def samples(self) -> int:
        """Samples of both splits (train + test), all held by the training process."""
        return self.train_samples + self.test_samples

    def input_bytes(self, T: int) -> int:
        """Bytes of all inputs (both splits) at ``T`` time steps, wherever they are held."""
        per = math.prod(self.sample_shape) * self.dtype_bytes * (T if self.events else 1)
        return self.samples * per

    def resident_bytes(self, T: int) -> int:
        """Bytes counted in the plan: the inputs when held in memory, and the int64 labels."""
        return (self.input_bytes(T) if self.held == "memory" else 0) + 8 * self.samples


DATASET_SPECS: Dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", 1348, 449, (1, 8, 8), num_classes=DIGITS_CLASSES),
    "cifar10": DatasetSpec("cifar10", 50000, 10000, (3, 32, 32), num_classes=CIFAR10_CLASSES),
    "nmnist": DatasetSpec("nmnist", 60000, 10000, (2, 34, 34), 1, "mmap", True, EVENT_SPECS["nmnist"].num_classes),
    "dvsgesture": DatasetSpec("dvsgesture", 1077, 264, (2, 32, 32), 1, "mmap", True, EVENT_SPECS["dvsgesture"].num_classes),
    "shd": DatasetSpec("shd", 8156, 2264, (1, 700), 1, "mmap", True, EVENT_SPECS["shd"].num_classes),
}


def _x(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def model_input_shape(name: str, model: str) -> Tuple[int, ...]:
    """The sample shape ``edgesnn train`` feeds ``model`` from built-in dataset ``name``: flat
    (``[features]``) for the ``mlp``, the dataset's ``C, H, W`` otherwise (``load_dataset(flat=...)``)."""
    spec = DATASET_SPECS[name]
    return (math.prod(spec.sample_shape),) if model == "mlp" else tuple(spec.sample_shape)


def dataset_classes(name: Optional[str], classes: Optional[int] = None) -> int:
    """The class count to plan for: a built-in dataset's own (``classes`` None), else ``classes``
    or :data:`DEFAULT_CLASSES`.

    Raises:
        ValueError: ``classes`` contradicts the built-in dataset ``name`` (one line naming ``--classes``).
    """
    spec = DATASET_SPECS.get(name) if name is not None else None
    if spec is None:
        return DEFAULT_CLASSES if classes is None else classes
    if classes is not None and (isinstance(classes, bool) or classes != spec.num_classes):
        raise ValueError(f"--classes: {name} has {spec.num_classes} classes, got {classes!r}; "
                         f"pass --classes {spec.num_classes}")
    return spec.num_classes


def dataset_memory(name: Optional[str], T: int, in_shape: Tuple[int, ...], dataset_bytes: Optional[int] = None,
                   model: Optional[str] = None, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """The plan's ``dataset`` entry: ``name``, ``held``, ``bytes`` (counted), ``mapped_bytes``, ``test_samples``.

    Args:
        name: a key of :data:`DATASET_SPECS`, or None for custom data.
        T: time steps (event frames scale with T). in_shape: the planned sample shape; with a
            named dataset it must be the shape training feeds ``model`` (:func:`model_input_shape`;
            ``model`` None: the flat or the ``C, H, W`` shape).
        dataset_bytes: resident bytes of custom data (0: streamed or not counted); not with ``name``.
        num_classes: the planned class count; with a named dataset it must be the dataset's (None: not checked).

    Raises:
        ValueError: one line naming ``--dataset``, ``--dataset-bytes``, ``--input`` or ``--classes``.
    """
    if name is not None and dataset_bytes is not None:
        raise ValueError("--dataset-bytes: give --dataset (a built-in dataset, its size is known) or "
                         "--dataset-bytes (custom data), not both")
    if name is None:
        n = 0 if dataset_bytes is None else dataset_bytes  # ("", [], False: errors, not 0)
        if isinstance(n, float) and math.isfinite(n) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:  # "1MiB", 1.5, nan: not a whole number of bytes
            raise ValueError(f"--dataset-bytes: expected a size >= 0 (a whole number of bytes), got {dataset_bytes!r}")
        return dict(name=None, held="memory" if n else "none", bytes=n, mapped_bytes=0, test_samples=None)
    spec = DATASET_SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        hint = "; its size depends on the folder: give --dataset-bytes instead" if name == "folder" else ""
        raise ValueError(f"--dataset: expected one of {', '.join(DATASET_SPECS)}, got {name!r}{hint}")
    fed = [model_input_shape(name, m) for m in ((model,) if model is not None else ("mlp", "convnet"))]
    if tuple(in_shape) not in fed:
        want = fed[0] if model is not None else fed[-1]
        how = f"; training feeds {model} {_x(want)}" if model is not None else ""
        raise ValueError(f"--dataset: {name} gives samples of {_x(spec.sample_shape)} ({math.prod(spec.sample_shape)} "
                         f"values){how}, but --input is {_x(in_shape)}: use --input {','.join(map(str, want))}")
    if num_classes is not None:
        dataset_classes(name, num_classes)
    mapped = spec.input_bytes(T) if spec.held == "mmap" else 0
    return dict(name=name, held=spec.held, bytes=spec.resident_bytes(T), mapped_bytes=mapped,
                test_samples=spec.test_samples)
