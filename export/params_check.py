"""``edgesnn export --format checkpoint``: the checks a device runner's ``params.npz`` passes before
its arrays become the weights of a new edgesnn checkpoint.

The runners write every trainable parameter and the frozen BatchNorm statistics
(``running_mean`` / ``running_var``) as float32, by their PyTorch ``state_dict`` names. So the file
must hold **every trainable parameter** of the checkpoint's model; a buffer it lacks (such as
BatchNorm's ``num_batches_tracked``, which no graph reads) keeps the checkpoint's value. A name the
model does not have, another shape, a dtype that is not real floating point (integer for an
integer buffer), or a NaN / Inf value is refused in one line naming the array and the file.

Where the file lies as the runner leaves it by default (``ARTIFACTS/finetuned/params.npz``, beside its
``state.npz``, whose ``runner.artifact`` names the export's ``step.onnx``), the export's manifest tells
which model was fine-tuned: an export of another model (a RevLIF export folded into a LIF checkpoint of
the same widths) is refused (:func:`check_same_model`). Elsewhere there is nothing to compare with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from ..errors import UsageError

__all__ = ["merged_state", "check_same_model"]


def _names(names: List[str], limit: int = 4) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _refuse_unknown(arrays: Iterable[str], state: Dict[str, torch.Tensor], source: str) -> None:
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise UsageError(f"{source}: holds arrays the model does not have: {_names(unknown)}")


def _refuse_missing(arrays: Iterable[str], trainable: List[str], source: str) -> None:
    given = set(arrays)
    missing = [n for n in trainable if n not in given]
    if missing:
        raise UsageError(f"{source}: lacks {len(missing)} of the model's {len(trainable)} trainable parameters "
                         f"({_names(missing)}); expected the params.npz the device runner writes (it holds them all)")


def _check_kind(arr: np.ndarray, ref: torch.Tensor, where: str) -> None:
    """Real floating point for a floating tensor, integer for an integer buffer."""
    if ref.is_floating_point():
        if arr.dtype.kind != "f":
            raise UsageError(f"{where}: expected real floating-point values (the model holds {ref.dtype}), "
                             f"got dtype {arr.dtype}")
    elif arr.dtype.kind not in "iu":
        raise UsageError(f"{where}: expected integer values (the model holds {ref.dtype}), got dtype {arr.dtype}")


def _tensor(arr: np.ndarray, ref: torch.Tensor, where: str) -> torch.Tensor:
    """``arr`` as a tensor of ``ref``'s dtype, after the kind, shape and finiteness checks."""
    _check_kind(arr, ref, where)
    if tuple(arr.shape) != tuple(ref.shape):
        raise UsageError(f"{where}: shape {tuple(arr.shape)}, the model expects {tuple(ref.shape)}")
    native = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))  # torch reads native byte order only
    value = torch.from_numpy(native).to(ref.dtype)
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise UsageError(f"{where}: holds {bad} NaN or Inf value{'s' * (bad > 1)} (as {ref.dtype}); "
                         "refusing to import diverged weights")
    return value


def merged_state(model: nn.Module, arrays: Dict[str, np.ndarray], source: str) -> Dict[str, torch.Tensor]:
    """``model``'s ``state_dict`` with the checked ``arrays`` in place of its values.

    Args:
        model: the checkpoint's model (its state supplies the names, shapes, dtypes and the
            values of buffers ``arrays`` lacks).
        arrays: name -> array, as read from the ``.npz``.
        source: names the file in errors, e.g. ``"--params DIR/params.npz"``.
    """
    state = model.state_dict()
    _refuse_unknown(arrays, state, source)
    _refuse_missing(arrays, [n for n, _ in model.named_parameters()], source)
    return {name: _tensor(arrays[name], value, f"{source}: array {name}") if name in arrays else value
            for name, value in state.items()}


def _fine_tuned_config(params_npz: Path) -> Optional[Dict[str, Any]]:
    """The ``model_config`` of the export ``params_npz`` was fine-tuned from, where the runner's default layout
    tells it (``ARTIFACTS/finetuned/{params,state}.npz``, ``state.npz`` naming ``ARTIFACTS``' step graph); else None."""
    from .artifacts import STEP_MODEL, read_manifest

    state, artifacts = params_npz.parent / "state.npz", params_npz.parent.parent
    try:
        with np.load(state, allow_pickle=False) as saved:
            artifact = str(saved["runner.artifact"]) if "runner.artifact" in saved.files else None
        manifest = read_manifest(artifacts)
    except Exception:  # (no runner state or no export there: nothing to compare with)
        return None
    if artifact is None or artifact != getattr(manifest, "files", {}).get(STEP_MODEL):
        return None
    return manifest.model_config


def check_same_model(params_npz: Path, model_config: Dict[str, Any], source: str) -> None:
    """Refuse (one line) a ``params.npz`` fine-tuned from an export of another model than ``model_config``
    (the checkpoint's, encoded as the manifests store it), where its export is known (see the module doc)."""
    exported = _fine_tuned_config(Path(params_npz))
    if exported is None:
        return
    model_config = json.loads(json.dumps(model_config, default=str))  # (as the manifest holds it: tuples are lists)
    def settings(config: Dict[str, Any]) -> Dict[str, Any]:  # (the node's backend does not change the weights)
        node = config.get("node")
        return {**config, "node": {k: v for k, v in node.items() if k != "backend"}} if isinstance(node, dict) else config

    exported, model_config = settings(exported), settings(model_config)
    differ = [k for k in sorted(set(exported) | set(model_config)) if exported.get(k) != model_config.get(k)]
    if differ:
        k = differ[0]
        raise UsageError(f"{source}: fine-tuned from an export of another model ({k} {exported.get(k)!r}; the "
                         f"checkpoint's: {model_config.get(k)!r}); fold it into the checkpoint that export came from")
