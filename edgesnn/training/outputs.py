"""What a training run writes: its outputs checked before training, and its settings as stored.

* :func:`check_outputs`: ``--checkpoint`` / ``--json`` refused before any training when they would
  silently overwrite something (``--force``) or when ``--resume`` has nothing to continue.
* :func:`stored_config`: the :class:`~edgesnn.training.loop.TrainConfig` as checkpoints and
  reports store it. Settings added after the first release are stored only when they differ from
  their default (``lr_schedule`` other than ``constant``, ``pool`` other than ``avg``, a
  ``micro_batch`` below the batch size), so a run with the defaults writes exactly what older versions wrote, and
  older versions refuse to resume a run they cannot reproduce.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

from ..atomic import check_output
from ..errors import UsageError
from ..models import POOLS
from .micro_batch import effective_micro_batch

__all__ = ["POOLS", "check_outputs", "stored_config"]

#: Settings stored only when they differ from these defaults.
_OMITTED_DEFAULTS = {"lr_schedule": "constant", "pool": "avg", "micro_batch": None}


def stored_config(cfg: Any) -> Dict[str, Any]:
    """``asdict(cfg)`` without the settings that hold their default (:data:`_OMITTED_DEFAULTS`)."""
    out = asdict(cfg)
    if "micro_batch" in out:  # at or above the batch it splits nothing: stored as no setting
        out["micro_batch"] = effective_micro_batch(out["micro_batch"], out["batch_size"])
    for key, default in _OMITTED_DEFAULTS.items():
        if out.get(key) == default:
            del out[key]
    return out


def check_outputs(checkpoint: Optional[str], resume: bool = False, force: bool = False,
                  report: Optional[str] = None) -> None:
    """Refuse, before any training, outputs that would silently overwrite something.

    ``checkpoint`` must not be a directory; without ``resume`` an existing one needs ``force``,
    with ``resume`` it must exist. An existing ``report`` needs ``force`` or ``resume``.
    """
    if resume:
        if not checkpoint:
            raise UsageError("--resume: needs --checkpoint PATH to resume from")
        if Path(checkpoint).is_dir():
            raise IsADirectoryError(f"--checkpoint: {checkpoint} is a directory; expected a checkpoint file")
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint} to continue from (drop --resume to start one)")
        check_output(checkpoint, "--checkpoint", force=True)  # its folder must still take the next one
    elif checkpoint:
        check_output(checkpoint, "--checkpoint", force, allow="--resume to continue it, or --force")
    if report:
        check_output(report, "--json", force or resume, allow="--force (or --resume)")
        if checkpoint and Path(report).resolve() == Path(checkpoint).resolve():
            raise UsageError(f"--json: {report} is also the --checkpoint path; the report would replace the checkpoint")
