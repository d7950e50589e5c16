"""``edgesnn train``'s model flags against the dataset, checked before any data is read.

The sample shape a built-in dataset gives each model is known ahead (the planner's
:data:`~edgesnn.planner.datasets.DATASET_SPECS`; image folders are read at 32x32 RGB), so a model
that cannot take it (``--model convnet --dataset shd``) or neuron specs that do not fit the model
(``--neuron revlif:3`` on 128-wide layers, three specs for two spiking layers) are refused in one
line naming ``--model`` / ``--neuron`` before minutes of loading or binning, not after.

The same goes for ``--timesteps`` and ``--batch-size`` / ``--micro-batch`` so large that one
training batch's input over T (or its logits over T) would not fit in this machine's physical
memory: refused in one line instead of a traceback or an OOM kill (:func:`check_batch_fits_memory`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Tuple

from ..errors import UsageError
from ..memory_guard import check_fits_in_memory, shape_bytes
from .distributed import env_world

if TYPE_CHECKING:  # pragma: no cover
    from .loop import TrainConfig

__all__ = ["known_input", "check_model_fits_dataset", "check_batch_fits_memory"]

#: what ``load_image_folder`` makes of every image (``edgesnn train`` uses its default size)
FOLDER_SAMPLE = (3, 32, 32)


def known_input(dataset: str, model: str) -> Optional[Tuple[Tuple[int, ...], int]]:
    """``(sample shape fed to model, classes)`` for ``dataset`` when known before reading it, else
    None. An image folder's class count is not known: 2 stands in (it sizes only the last layer)."""
    from ..planner.datasets import DATASET_SPECS, model_input_shape

    if dataset in DATASET_SPECS:
        return model_input_shape(dataset, model), DATASET_SPECS[dataset].num_classes
    if dataset == "folder":
        return ((FOLDER_SAMPLE[0] * FOLDER_SAMPLE[1] * FOLDER_SAMPLE[2],) if model == "mlp" else FOLDER_SAMPLE), 2
    return None


def _flag_error(cfg: "TrainConfig", in_shape: Tuple[int, ...], exc: ValueError) -> UsageError:
    """The model builder's message, prefixed with the flag it is about."""
    field, _, rest = str(exc).partition(": ")
    if field == "neuron":
        return UsageError(f"--neuron: {rest} (--model {cfg.model})")
    if field == "in_shape":
        return UsageError(f"--model {cfg.model}: needs C, H, W samples, but --dataset {cfg.dataset} gives "
                          f"{'x'.join(map(str, in_shape))}; use --model mlp")
    return UsageError(f"--model {cfg.model}: {exc} (--dataset {cfg.dataset})")


def check_model_fits_dataset(cfg: "TrainConfig") -> None:
    """Build ``cfg``'s model on the meta device (no memory, a few ms) for the sample shape and
    classes ``cfg.dataset`` will give; a builder error becomes one line naming ``--model`` or
    ``--neuron``. Datasets whose shape is not known ahead are left to the load."""
    known = known_input(cfg.dataset, cfg.model)
    if known is None:
        return
    import torch

    from ..models import build_model

    in_shape, classes = known
    try:
        with torch.device("meta"):
            build_model(cfg.model, in_shape, classes, cfg.timesteps, cfg.neuron, hidden=cfg.hidden,
                        channels=cfg.channels, batchnorm=cfg.batchnorm)
    except ValueError as exc:
        raise _flag_error(cfg, in_shape, exc) from None
    check_batch_fits_memory(cfg, in_shape, classes)


def check_batch_fits_memory(cfg: "TrainConfig", in_shape: Tuple[int, ...], classes: int) -> None:
    """Refuse (one line naming ``--timesteps`` and the batch) a training step whose first buffers
    cannot fit in physical memory: the samples computed at once (``--micro-batch``, else
    ``--batch-size``, at most the dataset's training samples per rank) hold their input over T,
    ``[T, B, *in_shape]`` float32 (the first layer copies the repeated input), and their logits over
    T, ``[T, B, classes]``, which ``--memopt`` (chunked over time) keeps too. Anything that fits
    passes: ``edgesnn plan`` predicts the whole peak."""
    from ..planner.datasets import DATASET_SPECS

    spec = DATASET_SPECS.get(cfg.dataset)
    world = env_world().world  # a malformed WORLD_SIZE is refused here, as when the run starts
    samples = math.ceil(spec.train_samples / world) if spec is not None else 1  # a folder: at least one sample
    batch = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    b = min(batch, samples)
    T = cfg.timesteps
    events = spec is not None and spec.events
    shape = in_shape if events or not cfg.memopt else (classes,)  # memopt does not copy a repeated input
    flag = "--micro-batch" if cfg.micro_batch and cfg.micro_batch < cfg.batch_size else "--batch-size"
    capped = f" ({cfg.dataset} has {samples} training samples{' per rank' if world > 1 else ''})" if b < batch else ""
    what = "input" if shape == in_shape else "logits"
    check_fits_in_memory(
        shape_bytes((T, b, *shape)),
        f"--timesteps {T} with {flag} {batch}: one training batch's {what} over T ([T, B, "
        f"{', '.join(map(str, shape))}] float32, B = {b}{capped})",
        f"lower --timesteps or {flag} (edgesnn plan predicts a run's peak memory and the largest batch that fits)")
