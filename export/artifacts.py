"""Layout, manifest and validation of an ONNX Runtime training-artifact directory (torch-free).

An artifact directory written by :func:`edgesnn.export.onnx_training.export_onnx_training` holds::

    model.onnx            the exported forward graph (parameter names = the PyTorch state_dict names)
    training_model.onnx   forward + loss + gradient graph (ORT training API)
    eval_model.onnx       forward + loss
    optimizer_model.onnx  SGD (default) or AdamW update graph
    checkpoint            ORT checkpoint: parameter values (trainable and frozen)
    manifest.json         what the runner needs to know (shapes, names, T, optimizer) + SHA-256 of every file

An ``onnx-step`` directory (:func:`edgesnn.export.onnx_step.export_onnx_step`) holds instead::

    step.onnx             one training step as a plain inference graph (parameters, optimizer state,
                          batch, labels, lr -> new parameters, new optimizer state, loss, correct, recon_error)
    eval.onnx             the forward (parameters, batch -> mean logits)
    init.npz              the exported parameters, frozen buffers and the fresh optimizer state
    manifest.json         names, shapes, T, optimizer and its hyper-parameters + SHA-256 of every file

The manifest is written last, so a directory without one was never completely exported.
This module imports only the standard library so that the device runner can use it.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from edgesnn.atomic import atomic_write, is_path_value
from edgesnn.errors import clip, first_line

__all__ = [
    "ArtifactError",
    "MANIFEST",
    "FORMAT",
    "VERSION",
    "ARTIFACT_FILES",
    "Manifest",
    "sha256_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_manifest",
    "read_manifest",
    "validate_artifact_dir",
    "STEP_FORMAT",
    "STEP_FILES",
    "STEP_ACCUMULATE_FILES",
    "StepManifest",
    "write_step_manifest",
]

PathLike = Union[str, os.PathLike]

FORMAT = "edgesnn-ort-training"
VERSION = 1
MANIFEST = "manifest.json"
MODEL = "model.onnx"
TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
ARTIFACT_FILES = (MODEL, TRAINING_MODEL, EVAL_MODEL, OPTIMIZER_MODEL, CHECKPOINT)

STEP_FORMAT = "edgesnn-onnx-step"
STEP_VERSION = 1
STEP_MODEL = "step.onnx"
STEP_EVAL_MODEL = "eval.onnx"
STEP_INIT = "init.npz"
STEP_FILES = (STEP_MODEL, STEP_EVAL_MODEL, STEP_INIT)
#: The step cut in two, for gradient accumulation (``edgesnn-device --accumulate``): ``grad.onnx``
#: maps (parameters, frozen buffers, x, labels) to (``grad/<name>`` per trainable parameter, loss,
#: correct, recon_error); ``apply.onnx`` maps (lr, parameters, optimizer state, gradients) to the
#: update ``step.onnx`` ends with. Every export writes them; exports from before they existed lack them,
#: and a board that never accumulates may leave them out (their hashes are checked where present).
STEP_GRAD_MODEL = "grad.onnx"
STEP_APPLY_MODEL = "apply.onnx"
STEP_ACCUMULATE_FILES = (STEP_GRAD_MODEL, STEP_APPLY_MODEL)


class ArtifactError(ValueError):
    """An artifact directory or one of its files is missing, corrupt or inconsistent (the message names it)."""


@dataclass
class Manifest:
    """Contents of ``manifest.json``.

    Attributes:
        batch_size: the fixed batch size ``B`` the training graphs were exported for.
        in_shape: one sample's shape (input tensor is ``[B, *in_shape]``, float32).
        num_classes: number of logits; labels are int64 ``[B]`` in ``[0, num_classes)``.
        timesteps: ``T``; the time loop is unrolled ``T`` times inside every graph.
        trainable / frozen: parameter names (PyTorch ``state_dict`` names) in the checkpoint.
        files: artifact file name -> SHA-256 hex digest.
        input_range: as in :class:`StepManifest`.
    """

    model_config: Dict[str, Any]
    batch_size: int
    in_shape: List[int]
    num_classes: int
    timesteps: int
    trainable: List[str]
    frozen: List[str]
    optimizer: str = "sgd"
    learning_rate: float = 0.01
    input_range: Optional[List[float]] = None
    loss: str = "cross_entropy"
    input_name: str = "input"
    label_name: str = "labels"
    output_name: str = "logits"
    time_loop: str = "unrolled"
    batchnorm: str = "frozen-statistics"
    edgesnn_version: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        """The manifest as ``manifest.json`` holds it (with its checksum)."""
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str) -> "Manifest":
        """The manifest in parsed ``manifest.json`` ``data``; one-line :class:`ArtifactError` naming ``source`` otherwise."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ArtifactError(f"{source}: not an edgesnn training-artifact manifest (format != {FORMAT!r})")
        return _from_dict(cls, data, source, VERSION)


@dataclass
class StepManifest:
    """Contents of an ``onnx-step`` directory's ``manifest.json``.

    Attributes:
        carried: ``[input name, output name]`` pairs of ``step.onnx`` fed back every step
            (parameters, then optimizer state).
        trainable / frozen / optimizer_state: tensor names in ``init.npz`` (and graph inputs).
        hyperparameters: the optimizer's constants baked into the graph (lr is an input).
        chunk: time steps per Scan iteration; neurons: the spiking layers (kind, mode, groups).
        recon_tolerance: the largest accepted ``recon_error`` (0.0: every RevLIF layer is exact).
        input_range: ``[low, high]`` of the input values the model was trained on (``[0, 1]`` for
            the built-in image datasets); ``None`` when unknown. The runner refuses data outside it.
    """

    model_config: Dict[str, Any]
    batch_size: int
    in_shape: List[int]
    num_classes: int
    timesteps: int
    trainable: List[str]
    frozen: List[str]
    optimizer_state: List[str]
    carried: List[List[str]]
    optimizer: str = "sgd"
    hyperparameters: Dict[str, float] = field(default_factory=dict)
    learning_rate: float = 0.01
    chunk: int = 1
    neurons: List[Dict[str, Any]] = field(default_factory=list)
    recon_tolerance: float = 0.0
    input_range: Optional[List[float]] = None
    loss: str = "cross_entropy"
    input_name: str = "input"
    label_name: str = "labels"
    lr_name: str = "lr"
    output_name: str = "logits"
    time_loop: str = "scan"
    batchnorm: str = "frozen-statistics"
    edgesnn_version: str = ""
    files: Dict[str, str] = field(default_factory=dict)
    format: str = STEP_FORMAT
    version: int = STEP_VERSION

    def to_json(self) -> str:
        """The manifest as ``manifest.json`` holds it (with its checksum)."""
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str) -> "StepManifest":
        """The manifest in parsed ``manifest.json`` ``data``; one-line :class:`ArtifactError` naming ``source`` otherwise."""
        return _from_dict(cls, data, source, STEP_VERSION)


#: Key of the manifest's own checksum: SHA-256 of the manifest's JSON without this key, so an edit
#: (a learning rate, a tolerance, the class count) is caught like a changed graph file.
MANIFEST_CHECKSUM = "manifest_sha256"


def _canonical(data: Dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in data.items() if k != MANIFEST_CHECKSUM}, indent=2, sort_keys=True)


def valid_input_range(r: object) -> bool:
    """A manifest's ``input_range``: ``[low, high]``, two finite real numbers (not bools), low < high."""
    return (isinstance(r, (list, tuple)) and len(r) == 2
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in r)
            and r[0] < r[1])


def _to_json(manifest) -> str:
    data = asdict(manifest)
    data[MANIFEST_CHECKSUM] = hashlib.sha256(_canonical(data).encode("utf-8")).hexdigest()
    return json.dumps(data, indent=2, sort_keys=True)


def _from_dict(cls, data: Dict[str, Any], source: str, version: int):
    """``cls`` (a manifest dataclass) from parsed JSON: version checked, unknown keys ignored, every
    field the runner uses checked for its JSON type and range (:func:`_check_fields`)."""
    if data.get("version") != version:
        raise ArtifactError(f"{source}: manifest version {data.get('version')!r}; this edgesnn reads version {version}")
    known = set(cls.__dataclass_fields__)
    try:
        manifest = cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:
        raise ArtifactError(f"{source}: manifest is incomplete ({exc})") from None
    _check_fields(manifest, source)
    return manifest


#: The most float32 values one batch buffer ``[batch_size, *in_shape]`` may hold (4 GiB): the runner
#: allocates it before it runs a graph, so a larger figure in an edited manifest is refused, not allocated.
MAX_BATCH_ELEMENTS = 2**30


def _count(v: Any, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _finite(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _check_fields(m, source: str) -> None:
    """One-line :class:`ArtifactError` ``"{source}: FIELD: expected ..., got ..."`` for a field of
    the wrong type or range (an edited or damaged manifest), before the runner allocates or binds
    anything from it."""
    def fail(name: str, expected: str) -> ArtifactError:
        return ArtifactError(f"{source}: {name}: expected {expected}, got {clip(repr(getattr(m, name)))}; export it again")

    if not isinstance(m.model_config, dict):
        raise fail("model_config", "an object (the model's build_model arguments)")
    for name, low in (("batch_size", 1), ("num_classes", 1), ("timesteps", 1)):
        if not _count(getattr(m, name), low):
            raise fail(name, f"an integer >= {low}")
    if not (isinstance(m.in_shape, list) and m.in_shape and all(_count(v) for v in m.in_shape)):
        raise fail("in_shape", "a non-empty list of positive integers (one sample's shape)")
    elements = m.batch_size * math.prod(m.in_shape)
    if elements > MAX_BATCH_ELEMENTS:
        raise ArtifactError(f"{source}: batch_size x in_shape: expected at most {MAX_BATCH_ELEMENTS} values per "
                            f"batch, got {m.batch_size} x {m.in_shape} = {elements}; export it again")
    lists = ("trainable", "frozen") + (("optimizer_state",) if isinstance(m, StepManifest) else ())
    for name in lists:
        if not _names(getattr(m, name)):
            raise fail(name, "a list of tensor names (strings)")
    texts = ("optimizer", "loss", "input_name", "label_name", "output_name", "time_loop", "batchnorm",
             "edgesnn_version") + (("lr_name",) if isinstance(m, StepManifest) else ())
    for name in texts:
        if not isinstance(getattr(m, name), str):
            raise fail(name, "a string")
    if not (_finite(m.learning_rate) and m.learning_rate > 0):
        raise fail("learning_rate", "a finite number > 0")
    if m.input_range is not None and not valid_input_range(m.input_range):
        raise fail("input_range", "[low, high] with finite low < high, or null")
    if not (isinstance(m.files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in m.files.items())):
        raise fail("files", "an object of file name -> SHA-256 hex digest")
    if not isinstance(m, StepManifest):
        return
    known = set(m.trainable) | set(m.frozen) | set(m.optimizer_state)
    if not (isinstance(m.carried, list) and all(isinstance(p, list) and len(p) == 2 and _names(p) and p[0] in known
                                                for p in m.carried)):
        raise fail("carried", "a list of [input, output] name pairs, each input one of trainable / optimizer_state")
    if not (isinstance(m.hyperparameters, dict) and all(_finite(v) for v in m.hyperparameters.values())):
        raise fail("hyperparameters", "an object of finite numbers")
    if not _count(m.chunk):
        raise fail("chunk", "an integer >= 1")
    if not (isinstance(m.neurons, list) and all(isinstance(n, dict) for n in m.neurons)):
        raise fail("neurons", "a list of objects (one per spiking layer)")
    if not (_finite(m.recon_tolerance) and m.recon_tolerance >= 0):
        raise fail("recon_tolerance", "a finite number >= 0")


def _files_of(manifest) -> tuple:
    if isinstance(manifest, StepManifest):  # the accumulation graphs where the export wrote them
        return STEP_FILES + tuple(n for n in STEP_ACCUMULATE_FILES if n in manifest.files)
    return ARTIFACT_FILES


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk``-byte pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``."""
    return atomic_write(path, lambda fh: fh.write(data), "wb")


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write(path, lambda fh: fh.write(text), "w")


def write_manifest(directory: PathLike, manifest: Manifest) -> Path:
    """Hash every artifact file, store the digests in ``manifest`` and write ``manifest.json`` atomically."""
    directory = Path(directory)
    manifest.files = {}
    for name in ARTIFACT_FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: export did not produce {name}")
        manifest.files[name] = sha256_file(path)
    return atomic_write_text(directory / MANIFEST, manifest.to_json() + "\n")


def write_step_manifest(directory: PathLike, manifest: StepManifest) -> Path:
    """:func:`write_manifest` for an ``onnx-step`` directory."""
    directory = Path(directory)
    manifest.files = {}
    for name in STEP_FILES + STEP_ACCUMULATE_FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: export did not produce {name}")
        manifest.files[name] = sha256_file(path)
    return atomic_write_text(directory / MANIFEST, manifest.to_json() + "\n")


def read_manifest(directory: PathLike) -> Union[Manifest, StepManifest]:
    """Parse ``directory/manifest.json`` (no file checks; see :func:`validate_artifact_dir`)."""
    if not is_path_value(directory):
        raise ArtifactError(f"directory: expected an artifact folder path (a non-empty str or os.PathLike), got {directory!r:.80}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ArtifactError(f"artifacts: {directory} is a file; expected the artifact folder (holding {MANIFEST})")
    if not directory.is_dir():
        raise ArtifactError(f"artifacts: no such directory: {directory}")
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{directory}: missing artifact file {MANIFEST} (not a complete edgesnn export)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also an integer of > 4300 digits
        raise ArtifactError(f"{path}: corrupt artifact file ({first_line(exc)})") from None
    if isinstance(data, dict) and MANIFEST_CHECKSUM in data:  # (manifests written before it have none)
        if hashlib.sha256(_canonical(data).encode("utf-8")).hexdigest() != data[MANIFEST_CHECKSUM]:
            raise ArtifactError(f"{path}: edited after the export (its checksum does not match its contents); "
                                "export it again")
    if isinstance(data, dict) and data.get("format") == STEP_FORMAT:
        return StepManifest.from_dict(data, str(path))
    return Manifest.from_dict(data, str(path))


def validate_artifact_dir(directory: PathLike, check_hashes: bool = True) -> Union[Manifest, StepManifest]:
    """Check that every artifact file exists and (optionally) matches its SHA-256 in the manifest.

    Raises:
        ArtifactError: naming the missing or corrupt file.
    """
    manifest = read_manifest(directory)
    directory = Path(directory)
    for name in _files_of(manifest):
        path = directory / name
        if not path.is_file():
            if name in STEP_ACCUMULATE_FILES:  # only --accumulate reads them, and checks for them
                continue
            raise ArtifactError(f"{directory}: missing artifact file {name}")
        expected = manifest.files.get(name)
        if expected is None:
            raise ArtifactError(f"{directory / MANIFEST}: no checksum for {name}")
        if check_hashes:
            actual = sha256_file(path)
            if actual != expected:
                raise ArtifactError(
                    f"{path}: corrupt artifact file (SHA-256 {actual[:12]}... does not match the manifest's "
                    f"{expected[:12]}...); export it again"
                )
    return manifest
