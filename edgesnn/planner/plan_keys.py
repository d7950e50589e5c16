"""The keys of a plan file (``format == "edgesnn-plan"``, version 1) at every level.

:func:`check_plan_keys` refuses a key a level does not have (a misspelt optional field, such as
``"eval_bacth"`` or ``layers[3].neuronn``, was silently its default) in one line naming the file,
the key's path, the known keys and the closest one (:func:`edgesnn.json_keys.check_keys`); keys
starting with ``_`` are comments. Every version-1 plan edgesnn has written (``git log -p --
edgesnn/planner/plan.py``) holds only keys listed here: fields were added over time
(``eval_batch``, ``dataset``, ``notes``, ``predicted.micro_batch``, ``alternatives.*.neuron``), none
renamed or dropped, so there are no legacy keys yet; one dropped later belongs in ``LEGACY``.
Other versions are refused by :meth:`~edgesnn.planner.plan.Plan.from_dict` before this check.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

from ..devices import RUNS_KEYS, DeviceProfile
from ..json_keys import check_keys, key_path
from ..models import _NODE_KEYS, _REVLIF_KEYS

__all__ = ["TOP_KEYS", "MODEL_KEYS", "DATASET_KEYS", "PREDICTED_KEYS", "LAYER_KEYS", "ALTERNATIVE_ROWS",
           "ALTERNATIVE_KEYS", "LEGACY", "check_plan_keys"]

#: What :meth:`~edgesnn.planner.plan.Plan.to_dict` writes, in its order.
TOP_KEYS = ("format", "version", "model", "device", "timesteps", "batch", "budget_bytes", "optimizer", "neuron",
            "eval_batch", "dataset", "layers", "predicted", "alternatives", "notes")
#: ``model``: :func:`edgesnn.models.build_model`'s config (``batchnorm``, ``revlif``, ``pool`` only when not default).
MODEL_KEYS = ("name", "in_shape", "num_classes", "timesteps", "neuron", "hidden", "channels", "node", "batchnorm",
              "revlif", "pool")
#: ``dataset``: :func:`edgesnn.planner.datasets.dataset_memory`.
DATASET_KEYS = ("name", "held", "bytes", "mapped_bytes", "test_samples")
#: ``predicted``: the solver's figures (``micro_batch`` since --micro-batch; older plans lack it).
PREDICTED_KEYS = ("activation_bytes", "static_bytes", "runtime_overhead_bytes", "dataset_bytes", "step_bytes",
                  "eval_bytes", "eval_batch", "peak_bytes", "peak_phase", "time_s", "fixed_activation_bytes",
                  "micro_batch")
#: ``layers[i]``: one spiking layer.
LAYER_KEYS = ("index", "name", "neurons", "channels", "neuron", "kind", "groups", "saved_bytes")
#: ``alternatives``: its rows and each row's keys.
ALTERNATIVE_ROWS = ("all-lif", "all-revlif")
ALTERNATIVE_KEYS = ("activation_bytes", "peak_bytes", "time_s", "neuron")
#: Level path (``"model"``, ``"layers[]"``) -> keys older edgesnn versions wrote that the current ones do not: none yet.
LEGACY: Dict[str, Tuple[str, ...]] = {}


def check_plan_keys(d: Dict[str, Any], label: str, origin: str) -> None:
    """Refuse an unknown key anywhere in the plan dict ``d`` (one line: ``"{label}: PATH: unknown key
    (did you mean ...?); known keys: ... in {origin}"``). Values of the wrong type are left to
    :meth:`~edgesnn.planner.plan.Plan.from_dict`'s field checks."""

    def fail(path: str, detail: str) -> ValueError:
        return ValueError(f"{label}: {path}: {detail} in {origin}")

    def check(obj: Any, known: Tuple[str, ...], path: str, level: str = "") -> None:
        check_keys(obj, known, path, fail, legacy=LEGACY.get(level or path, ()))

    check(d, TOP_KEYS, "")
    model = d.get("model")
    check(model, MODEL_KEYS, "model")
    if isinstance(model, dict):
        check(model.get("node"), tuple(sorted(_NODE_KEYS | _REVLIF_KEYS)), "model.node")
        check(model.get("revlif"), tuple(sorted(_REVLIF_KEYS)), "model.revlif")
    device = d.get("device")
    check(device, tuple(DeviceProfile.__dataclass_fields__), "device")  # the profile as planned (``sources``: free)
    if isinstance(device, dict):
        check(device.get("runs"), RUNS_KEYS, "device.runs")
    check(d.get("dataset"), DATASET_KEYS, "dataset")
    check(d.get("predicted"), PREDICTED_KEYS, "predicted")
    layers = d.get("layers")
    for i, layer in enumerate(layers if isinstance(layers, list) else []):
        check(layer, LAYER_KEYS, f"layers[{i}]", "layers[]")
    alternatives = d.get("alternatives")
    check(alternatives, ALTERNATIVE_ROWS, "alternatives")
    if isinstance(alternatives, dict):
        for row in ALTERNATIVE_ROWS:
            check(alternatives.get(row), ALTERNATIVE_KEYS, key_path("alternatives", row), "alternatives.*")
