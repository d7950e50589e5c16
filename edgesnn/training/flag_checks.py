"""``edgesnn train``'s model flags against the dataset, checked before any data is read.

The sample shape a built-in dataset gives each model is known ahead (the planner's
:data:`~edgesnn.planner.datasets.DATASET_SPECS`; image folders are read at 32x32 RGB), so a model
that cannot take it (``--model convnet --dataset shd``) or neuron specs that do not fit the model
(``--neuron revlif:3`` on 128-wide layers, three specs for two spiking layers) are refused in one
line naming ``--model`` / ``--neuron`` before minutes of loading or binning, not after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

from ..errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    from .loop import TrainConfig

__all__ = ["known_input", "check_model_fits_dataset"]

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
