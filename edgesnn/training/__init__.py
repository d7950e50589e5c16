"""Training: datasets, the training loop and the ``edgesnn train`` command."""

from .data import Dataset, Split, load_dataset
from .loop import TrainConfig, evaluate, model_from_checkpoint, train

__all__ = ["Dataset", "Split", "load_dataset", "TrainConfig", "evaluate", "model_from_checkpoint", "train"]
