"""Supervised training of a spiking classifier: epochs, evaluation, checkpoints and resume."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from ..models import SpikingClassifier, build_model
from .data import Dataset, Split, load_dataset

__all__ = ["TrainConfig", "train", "evaluate", "model_from_checkpoint"]


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
    hidden: List[int] = field(default_factory=lambda: [128, 128])

    def validate(self) -> None:
        for name in ("timesteps", "epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if not (isinstance(self.lr, float) and self.lr > 0):
            raise ValueError(f"lr: expected a positive float, got {self.lr!r}")


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy (0..1) of ``model`` on ``split``."""
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        logits = model(split.x[i:i + batch_size])
        correct += int((logits.argmax(1) == split.y[i:i + batch_size]).sum())
    return correct / max(1, len(split))


def _build(cfg: TrainConfig, data: Dataset) -> SpikingClassifier:
    return build_model(cfg.model, data.in_shape, data.num_classes, cfg.timesteps, cfg.neuron,
                       hidden=cfg.hidden, node={"backend": cfg.backend})


def model_from_checkpoint(path: str) -> SpikingClassifier:
    """Rebuild a model from a checkpoint's config and load its weights."""
    ck = load_checkpoint(path)
    try:
        model = build_model(**ck["model_config"])
        model.load_state_dict(ck["model_state"])
    except (TypeError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint: {path} does not match its model config ({exc})") from None
    return model


def train(
    cfg: TrainConfig,
    checkpoint: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Dict:
    """Train, evaluate every epoch and return a report dict (config, per-epoch metrics, final accuracy).

    With ``checkpoint`` the state is written atomically after every epoch; ``resume`` continues
    from it (same config required) with the same data order as an uninterrupted run.
    """
    cfg.validate()
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, cfg.data_path, flat=(cfg.model == "mlp"), seed=cfg.seed)
    model = _build(cfg, data)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: List[Dict] = []
    start = 0
    if resume:
        if not checkpoint:
            raise ValueError("resume: needs --checkpoint PATH to resume from")
        ck = load_checkpoint(checkpoint)
        saved_cfg = ck.get("train_config", {})
        if {k: v for k, v in saved_cfg.items() if k != "epochs"} != {k: v for k, v in asdict(cfg).items() if k != "epochs"}:
            raise ValueError(f"resume: {checkpoint} was written by a different configuration: {saved_cfg}")
        model.load_state_dict(ck["model_state"])
        opt.load_state_dict(ck["optimizer_state"])
        start = int(ck["epoch"])
        history = list(ck.get("metrics", {}).get("history", []))
        log(f"resumed from {checkpoint} after epoch {start}")
    loss_fn = nn.CrossEntropyLoss()
    bar_factory = _progress_bar if progress else None
    for epoch in range(start, cfg.epochs):
        model.train()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(data.train), generator=g)
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        batches = range(0, len(order), cfg.batch_size)
        bar = bar_factory(len(batches), f"epoch {epoch + 1}/{cfg.epochs}") if bar_factory else None
        for i in batches:
            idx = order[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            loss = loss_fn(model(data.train.x[idx]), data.train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}")
        if bar:
            bar.close()
        acc = evaluate(model, data.test)
        row = {"epoch": epoch + 1, "loss": total / max(1, seen), "test_accuracy": acc, "seconds": time.perf_counter() - t0}
        history.append(row)
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['loss']:.4f}  test accuracy {acc * 100:.2f}%  ({row['seconds']:.1f} s)")
        if checkpoint:
            save_checkpoint(checkpoint, model.config, model.state_dict(), optimizer_state=opt.state_dict(),
                            epoch=epoch + 1, metrics={"history": history}, train_config=asdict(cfg))
    final = history[-1]["test_accuracy"] if history else evaluate(model, data.test)
    return {"config": asdict(cfg), "history": history, "test_accuracy": final,
            "train_samples": len(data.train), "test_samples": len(data.test)}


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def write_report(path: str, report: Dict) -> None:
    """Write the report JSON atomically."""
    atomic_write(path, lambda fh: fh.write(json.dumps(report, indent=2)), mode="w")
