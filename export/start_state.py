"""The start state of an ``onnx-step`` device run (never imports torch): ``init.npz`` or a resumed
``state.npz`` loaded and checked, before any buffer is made, against the graphs it will feed.

Metadata checks (names, element types, static shapes: :func:`check_graph_names`,
:func:`check_start_arrays`) plus one finiteness pass over the start values (as large as the
parameters and optimizer state, not the data) in :func:`load_start`; each mismatch is one line
naming the file and the array. The checks of a resumed run's counters and start values, and the
first loss's message, serve the legacy onnx-training runner too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import numpy as np

from .artifacts import STEP_EVAL_MODEL, STEP_GRAD_MODEL, STEP_INIT, STEP_MODEL, ArtifactError, StepManifest
from .runner import StepCheckError, _one_line

__all__ = ["StartArrayError", "check_graph_names", "check_start_arrays", "load_start", "start_counter",
           "check_start_values", "check_resumed_steps", "first_loss_error", "RESUME_FIX"]

#: how a refused resume starts again
RESUME_FIX = "pass --force instead of --resume to start again"


class StartArrayError(ArtifactError):
    """An array of the start state (``init.npz`` / a resumed ``state.npz``) that the graphs cannot take;
    the message names the array, not the file (the caller adds it)."""


#: ONNX tensor element types (``NodeArg.type``) as NumPy dtypes, for the start-state check.
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
               "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _bound_names(m: StepManifest, graph: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """``(inputs, outputs)`` the runner binds on ``graph``: name -> where the name comes from (the
    manifest field, for the message)."""
    carried_in = {inp: "carried" for inp, _ in m.carried}
    carried_out = {out: "carried (output)" for _, out in m.carried}
    frozen = {n: "frozen" for n in m.frozen}
    batch = {m.input_name: "input_name", m.label_name: "label_name"}
    checks = {n: "the runner (step outputs)" for n in ("loss", "correct", "recon_error")}
    grads = {f"grad/{n}": "trainable (grad/ of it)" for n in m.trainable}
    if graph == STEP_MODEL:
        return {**carried_in, **frozen, **batch, m.lr_name: "lr_name"}, {**carried_out, **checks}
    if graph == STEP_EVAL_MODEL:
        return ({**{n: "trainable" for n in m.trainable}, **frozen, m.input_name: "input_name"},
                {m.output_name: "output_name"})
    if graph == STEP_GRAD_MODEL:
        return {**{n: "trainable" for n in m.trainable}, **frozen, **batch}, {**grads, **checks}
    return {**carried_in, m.lr_name: "lr_name", **grads}, carried_out  # apply.onnx


def _few(names: List[str]) -> str:
    return ", ".join(repr(n) for n in names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def check_graph_names(graphs: Dict[str, object], m: StepManifest, manifest_path: Path) -> None:
    """The manifest's tensor names against the loaded graphs (``graph file name -> InferenceSession``):
    every name the runner binds is an input / output of that graph, every graph input is bound,
    ``carried`` feeds back exactly ``trainable`` + ``optimizer_state`` (each once), and the batch
    inputs have the manifest's batch size and ``in_shape``. One-line :class:`ArtifactError` naming
    ``manifest_path`` otherwise. Metadata only (no graph is run)."""
    problems: List[str] = []
    ins = [inp for inp, _ in m.carried]
    outs = [out for _, out in m.carried]
    for what, names in (("carried inputs", ins), ("carried outputs", outs), ("frozen", list(m.frozen))):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"{what} repeat {_few(dup)}")
    lacking = [n for n in list(m.trainable) + list(m.optimizer_state) if n not in ins]
    if lacking:
        problems.append(f"carried lacks {_few(lacking)} (every trainable and optimizer_state name is fed back)")
    stray = [n for n in ins if n not in set(m.trainable) | set(m.optimizer_state)]
    if stray:
        problems.append(f"carried feeds back {_few(stray)}, in neither trainable nor optimizer_state")
    crossed = [f"{a} <- {b}" for a, b in m.carried if b != f"new/{a}"]  # the step graph's outputs are new/<input>
    if crossed:
        problems.append(f"carried pairs {_few(crossed)} (each input is fed back from new/ of its own name)")
    for graph, sess in graphs.items():
        bound_in, bound_out = _bound_names(m, graph)
        have_in = {a.name: a for a in sess.get_inputs()}
        have_out = {a.name for a in sess.get_outputs()}
        absent = [f"{field} {n!r}" for n, field in bound_in.items() if n not in have_in]
        if absent:
            problems.append(f"{', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}: not an input of {graph}")
        unbound = [n for n in have_in if n not in bound_in]
        if unbound:
            problems.append(f"{graph} input {_few(unbound)} is in none of the manifest's lists (shortened?)")
        absent = [f"{field} {n!r}" for n, field in bound_out.items() if n not in have_out]
        if absent:
            problems.append(f"{', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}: not an output of {graph}")
        for name, want in ((m.input_name, [m.batch_size, *m.in_shape]), (m.label_name, [m.batch_size])):
            arg = have_in.get(name)
            if arg is not None and not _shape_fits(want, arg.shape):
                problems.append(f"{graph} input {name!r} has shape {_dims(arg.shape)}, the manifest's batch_size and "
                                f"in_shape say {_dims(want)}")
        logits = next((a for a in sess.get_outputs() if a.name == m.output_name), None) if graph == STEP_EVAL_MODEL else None
        if logits is not None and logits.shape and not _shape_fits([m.num_classes], list(logits.shape)[-1:]):
            problems.append(f"{graph} output {m.output_name!r} has shape {_dims(logits.shape)}, num_classes says "
                            f"{m.num_classes} classes")
    if problems:
        raise ArtifactError(f"{manifest_path}: does not match the graphs beside it: {'; '.join(problems[:3])}"
                            f"{' ...' if len(problems) > 3 else ''}; export again")


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


def _shape_fits(got, declared) -> bool:
    """``got`` (a concrete shape) matches a graph's declared shape (symbolic / unknown dims match anything)."""
    return len(got) == len(declared) and all(not isinstance(d, int) or d < 0 or int(g) == d
                                             for g, d in zip(got, declared))


def check_start_arrays(graphs: Dict[str, object], m: StepManifest, start: Dict[str, np.ndarray]) -> None:
    """Every start array (``trainable`` + ``frozen`` + ``optimizer_state``; present, see the caller)
    has the element type and static shape of the graph input of its name. Raises
    :class:`StartArrayError` naming the arrays, e.g. ``fc.weight: expected float32 [128, 64], got
    float64 [128]``. Metadata only: no pass over the values."""
    declared: Dict[str, object] = {}
    for sess in graphs.values():
        for arg in sess.get_inputs():
            declared.setdefault(arg.name, arg)
    problems: List[str] = []
    for n in dict.fromkeys(list(m.trainable) + list(m.frozen) + list(m.optimizer_state)):
        if n not in start:
            continue
        a = np.asarray(start[n])
        arg = declared.get(n)
        want = np.dtype(_ORT_DTYPES.get(arg.type, np.float32) if arg is not None else np.float32)
        dims = list(arg.shape) if arg is not None else list(a.shape)
        if not (a.dtype.kind == want.kind and a.dtype.itemsize == want.itemsize and _shape_fits(a.shape, dims)):
            got = f"{a.dtype} {_dims(a.shape)}" if a.dtype.kind in "biufcSUV" else f"{a.dtype}"
            problems.append(f"{n}: expected {want} {_dims(dims)}, got {got}")
    if problems:
        raise StartArrayError("; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""))


def load_start(src: Path, needed: List[str], resuming: bool) -> Tuple[Dict[str, np.ndarray], Dict[str, object]]:
    """``(tensors, runner.* entries)`` of ``init.npz`` or a resumed ``state.npz``: the arrays named in
    ``needed`` that the file holds (name -> array as stored; checked finite) and its ``runner.*`` scalars."""
    try:
        with np.load(src, allow_pickle=False) as npz:
            start = {n: np.array(npz[n]) for n in needed if n in npz.files}
            meta = {k: npz[k][()] for k in npz.files if k.startswith("runner.")}
    except Exception as exc:
        hint = f"; {RESUME_FIX}" if resuming else ""
        raise ArtifactError(f"{src}: corrupt artifact file ({_one_line(exc)}){hint}") from None
    check_start_values(start, src, RESUME_FIX if resuming else f"{STEP_INIT} is damaged: export again")
    return start, meta


def check_start_values(start: Dict[str, np.ndarray], src: Path, fix: str) -> None:
    """Refuse, in one line naming ``src`` and ending in ``fix``, start values (name -> array) that no
    runner saves: NaN or Inf, or a negative BatchNorm ``running_var``. One pass over the values (as
    large as the parameters and optimizer state, not the data). Either stopped the run at its first
    epoch's end as "the update made ... non-finite; lower --lr": the loss stays finite while NaN
    membranes never spike."""
    floats = {n: a for n, a in start.items() if a.dtype.kind in "fc"}
    for what, bad in (("NaN or Inf values", [n for n, a in floats.items() if not np.isfinite(a).all()]),
                      ("a negative BatchNorm variance",
                       [n for n, a in floats.items() if n.endswith("running_var") and a.dtype.kind == "f" and (a < 0).any()])):
        if bad:
            raise ArtifactError(f"{src}: {_few(bad)} hold{'s' if len(bad) == 1 else ''} {what} (damaged or edited; this "
                                f"runner never saves such values); {fix}")


def start_counter(meta: Mapping[str, object], key: str, src: Path) -> int:
    """A resumed state's step or epoch counter ``key`` (``runner.steps`` of a ``state.npz``,
    ``runner_steps`` of an ORT checkpoint's properties; absent: 0, as older runners wrote): an
    integer >= 0, else a one-line :class:`ArtifactError` naming ``src``."""
    if key not in meta:
        return 0
    raw = meta[key]
    v = np.asarray(raw)
    if v.shape == () and v.dtype.kind in "iu" and int(v) >= 0:
        return int(v)
    kind = v.dtype if isinstance(raw, (np.ndarray, np.generic)) else type(raw).__name__  # (a property: int, str)
    got = f"{kind} {_dims(v.shape)}" if v.shape != () else f"{kind} {str(v.tolist())[:40]!r}"
    raise ArtifactError(f"{src}: {key}: expected an integer >= 0, got {got}; {RESUME_FIX}")


def check_resumed_steps(src: Path, steps: int, epochs: int, steps_per_epoch: int, keys: Tuple[str, str]) -> None:
    """A resumed run's counters ``keys = (steps key, epochs key)`` must agree: ``steps == epochs x
    steps_per_epoch`` (the data, batch and ``--accumulate`` are the recorded ones, so every epoch
    took as many steps); else a one-line :class:`ArtifactError` naming ``src``."""
    if steps != epochs * steps_per_epoch:
        raise ArtifactError(f"{src}: {keys[0]} {steps} does not match {keys[1]} {epochs} x {steps_per_epoch} steps per "
                            f"epoch (edited?); the learning-rate schedule and the batch orders follow both: {RESUME_FIX}")


def first_loss_error(number: int, loss: float, src: Path, fix: str) -> StepCheckError:
    """The error of a loss that is not finite at a run's first step ``number``: it is computed before
    any update, so the start values in ``src`` give it, not ``--lr``."""
    return StepCheckError(f"step {number}: the loss is {loss} before any update of this run: the start values in {src} "
                          f"give it (damaged or edited: weights too large?); {fix}")
