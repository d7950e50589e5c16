"""What a resumed ``edgesnn train`` run continues from: the checkpoint's progress and its messages.

A run stopped by ``--max-steps`` inside an epoch stores that epoch as a *partial* row of its
history and the position reached in it (``epoch_offset``, per rank). A resumed run that trains
finishes that epoch and writes its row whole (:meth:`Progress.take_partial`); one with nothing left
to train keeps the stored history as is, so the report ends with the checkpoint's own last row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..checkpoint import CheckpointError

__all__ = ["Progress", "stored_progress", "will_train", "samples_done", "resume_messages", "check_train_config",
           "check_optimizer_state", "check_optimizer_groups", "check_schedule_state", "check_world_size", "show_value"]


@dataclass
class Progress:
    """Where a checkpoint stopped: completed epochs, optimizer steps, its history."""

    start: int = 0  # completed epochs: training continues with epoch ``start + 1``
    steps: int = 0  # optimizer steps taken in all
    offset: int = 0  # position reached in this rank's order of epoch ``start + 1`` (0: none of it trained)
    history: List[Dict] = field(default_factory=list)
    carried: Dict = field(default_factory=dict)  # the partial row this run finishes (its loss, samples, seconds)

    @property
    def partial_row(self) -> Optional[Dict]:
        """The history's last row when it is epoch ``start + 1`` cut short, else ``None``."""
        last = self.history[-1] if self.history else None
        if self.offset and last is not None and last.get("partial") and last.get("epoch") == self.start + 1:
            return last
        return None

    def take_partial(self) -> None:
        """Move the partial row (if any) out of the history into :attr:`carried`: this run
        trains the rest of that epoch and appends its whole row. Call it only when it will train."""
        if self.partial_row is not None:
            self.carried = self.history.pop()


def _count(ck: Dict, key: str, default: Optional[int] = None, who: str = "the checkpoint's") -> int:
    """``ck[key]`` as a count (an integer >= 0, not a bool); else a one-line :class:`CheckpointError`."""
    value = ck.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(f"--resume: {who} {key} must be an integer >= 0, got {show_value(value)} "
                              "(not written by edgesnn train, or edited): it cannot be resumed")
    return value


def stored_progress(ck: Dict, checkpoint: str = "the checkpoint") -> Progress:
    """The progress a checkpoint written by ``edgesnn train`` holds (its history left as stored).

    Counts that are not integers >= 0 and a ``metrics`` that is not ``{"history": [rows]}`` are
    refused in one line (:class:`~edgesnn.checkpoint.CheckpointError`, naming ``checkpoint``): resuming
    from them would train other epochs than it says. So are history rows of other types, out of
    order or not matching the counts (see :func:`_check_rows`)."""
    who = f"{checkpoint}'s"
    metrics = ck.get("metrics", {})
    history = metrics.get("history", []) if isinstance(metrics, dict) else None
    if not (isinstance(history, list) and all(isinstance(row, dict) for row in history)):
        raise CheckpointError(f"--resume: {who} metrics must be {{'history': [one dict per epoch]}}, got "
                              f"{type(metrics).__name__ if history is None else 'history ' + type(history).__name__}"
                              " (not written by edgesnn train, or edited): it cannot be resumed")
    progress = Progress(start=_count(ck, "epoch", None, who), steps=_count(ck, "steps", 0, who),
                        offset=_count(ck, "epoch_offset", 0, who), history=list(history))
    _check_rows(progress, who)
    return progress


#: what each field of a history row must hold (the fields a row may lack are not required)
_ROW_FIELDS = {"epoch": "an integer >= 1", "samples": "an integer >= 0", "loss": "a finite number",
               "test_accuracy": "a number within [0, 1]", "seconds": "a finite number >= 0",
               "lr": "a finite number >= 0", "partial": "true"}


def _row_ok(key: str, v: Any) -> bool:
    if key in ("epoch", "samples"):
        return type(v) is int and v >= (key == "epoch")
    if key == "partial":
        return v is True
    ok = type(v) in (int, float) and math.isfinite(v)
    return ok and (key == "loss" or v >= 0) and (key != "test_accuracy" or v <= 1)


def _check_rows(progress: Progress, who: str) -> None:
    """Refuse (one line) history rows the run cannot continue: a field of another type or range
    than edgesnn train writes, epochs out of order, or a stopped epoch (``epoch_offset`` > 0)
    whose partial row is not the last one, or lacks the loss and samples this run adds to."""
    for i, row in enumerate(progress.history):
        for key, want in _ROW_FIELDS.items():
            if key in row and not _row_ok(key, row[key]):
                raise CheckpointError(f"--resume: {who} metrics history[{i}] {key} must be {want}, got "
                                      f"{type(row[key]).__name__ if isinstance(row[key], (dict, list)) else show_value(row[key])}"
                                      " (not written by edgesnn train, or edited): it cannot be resumed")
        if row.get("epoch", i + 1) != i + 1 or (row.get("partial") and i != len(progress.history) - 1):
            raise CheckpointError(f"--resume: {who} metrics history[{i}] is epoch {row.get('epoch')!r}"
                                  f"{' (partial)' if row.get('partial') else ''}; expected epoch {i + 1}, whole unless the"
                                  " last (not written by edgesnn train, or edited): it cannot be resumed")
    rows, partial = len(progress.history), bool(progress.history and progress.history[-1].get("partial"))
    if rows and rows != progress.start + partial:  # older checkpoints without history rows still resume
        raise CheckpointError(f"--resume: {who} metrics history holds {rows} row(s), but its epoch is "
                              f"{progress.start}{' and a partial one' if partial else ''} (not written by edgesnn train, "
                              "or edited): it cannot be resumed")
    if (progress.offset and progress.history) or partial:
        last = progress.history[-1]
        if not (progress.offset and last.get("partial") and last.get("epoch") == progress.start + 1 and "loss" in last and "samples" in last):
            raise CheckpointError(f"--resume: {who} epoch_offset {progress.offset} says epoch "
                                  f"{progress.start + 1} was stopped, but its metrics history does not end with that "
                                  "partial epoch's row (loss, samples) (not written by edgesnn train, or edited): "
                                  "it cannot be resumed")


def will_train(progress: Progress, epochs: int, max_steps: Optional[int]) -> bool:
    """Whether a resumed run trains at all: epochs are left and ``max_steps`` is not reached yet."""
    return progress.start < epochs and not (max_steps is not None and progress.steps >= max_steps)


def samples_done(offset: int, world: int, epoch_size: int) -> int:
    """Samples of the stopped epoch already trained: every rank reached ``offset`` in its share
    (``world`` shares dealt round-robin), at most the epoch's ``epoch_size`` samples."""
    return min(max(0, offset) * max(1, world), epoch_size)


def resume_messages(checkpoint: str, progress: Progress, epochs: int, max_steps: Optional[int],
                    world: int, epoch_size: int, horizon: Optional[int] = None) -> List[str]:
    """The log lines of a resumed run: where it continues, and why nothing is trained if so.

    ``horizon``: the epochs of a ``--lr-schedule cosine`` run (``None`` for constant): ``--epochs``
    cannot grow past it, so a run that reached it is told to start a new one instead."""
    start, done = progress.start, samples_done(progress.offset, world, epoch_size)
    part = f" and {done} samples of epoch {start + 1}" if progress.offset else ""
    lines = [f"resumed from {checkpoint} after epoch {start}{part}"]
    if start >= epochs:
        if progress.offset:
            lines.append(f"nothing to train: {checkpoint} already holds {start} epoch(s){part} (stopped by "
                         f"--max-steps), --epochs {epochs}; raise --epochs to {start + 1} to finish epoch {start + 1}")
        elif horizon is not None and start >= horizon:
            lines.append(f"nothing to train: {checkpoint} holds a finished --lr-schedule cosine run ({start} of "
                         f"{horizon} epochs); train more into a new --checkpoint")
        else:
            lines.append(f"nothing to train: {checkpoint} already holds {start} epoch(s) of --epochs {epochs}; "
                         f"raise --epochs{'' if horizon is None else f' (up to {horizon}: the end of its cosine schedule)'}")
    if max_steps is not None and progress.steps >= max_steps:
        held = f" (epoch {start + 1} stopped after {done} samples; the report keeps it as is)" if progress.offset else ""
        lines.append(f"nothing to train: {checkpoint} already took {progress.steps} step(s), --max-steps {max_steps}"
                     f"{held}")
    return lines


# --- the rest of a resume payload: plain train_config, the optimizer's and the scheduler's state ---

#: plain data a ``train_config`` holds (what :func:`~edgesnn.training.outputs.stored_config` writes)
_PLAIN = (str, int, float, bool, type(None))


def _foreign(value: Any, where: str) -> Optional[str]:
    """``where`` (extended to the first value at any depth that is not plain data), else ``None``."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _foreign(k, f"{where} key") if type(k) is not str else _foreign(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if type(value) in (list, tuple):
        return next((f for i, v in enumerate(value) if (f := _foreign(v, f"{where}[{i}]"))), None)
    return None if type(value) in _PLAIN else f"{where} ({type(value).__module__}.{type(value).__qualname__})"


def check_train_config(ck: Dict, checkpoint: str) -> Dict:
    """The checkpoint's ``train_config``, required to be a dict of plain data (strings, numbers,
    bools, ``None``, lists, dicts): a tensor there made the settings comparison a traceback."""
    cfg = ck.get("train_config")
    found = "train_config" if not isinstance(cfg, dict) else _foreign(cfg, "train_config")
    if found:
        what = type(cfg).__name__ if found == "train_config" else "a " + found.split(" (", 1)[1].rstrip(")")
        raise CheckpointError(f"--resume: {checkpoint}: {found.split(' (', 1)[0]} is {what}; expected a dict of plain "
                              "data (numbers, strings, lists; not written by edgesnn train, or edited): it cannot be resumed")
    return dict(cfg)


def _real(value: Any) -> bool:
    """A finite real number (``int`` or ``float``, not a bool)."""
    return type(value) in (int, float) and math.isfinite(value)


def show_value(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters (a tensor's repr spans several)."""
    return " ".join(repr(value).split())[:width]


def _refuse(checkpoint: str, field: str, what: str) -> CheckpointError:
    return CheckpointError(f"--resume: {checkpoint}: {field} {what} (not written by edgesnn train, or edited): "
                           "it cannot be resumed")


def check_optimizer_state(state: Any, params: Sequence[torch.Tensor], steps: Optional[int], checkpoint: str) -> Dict:
    """The checkpoint's Adam ``optimizer_state`` for ``params`` (one group, as ``edgesnn train``
    builds it), checked before ``load_state_dict``: one group listing each parameter once; per
    parameter ``step`` (a whole number >= 1, at most the checkpoint's ``steps`` when it has them:
    Adam counts the steps in which that parameter had a gradient), ``exp_avg`` / ``exp_avg_sq``
    tensors of the parameter's shape and dtype, finite, ``exp_avg_sq`` >= 0. A parameter may lack
    its entry (Adam starts it when the parameter first has a gradient), but after steps were taken
    an empty state is refused: every moment would silently start again. Another optimizer's state (SGD's ``momentum_buffer``) is refused too.
    Returns a copy whose ``step`` values are 0-d float32 tensors (what Adam keeps)."""
    if not (isinstance(state, dict) and isinstance(state.get("state"), dict) and isinstance(state.get("param_groups"), list)):
        raise _refuse(checkpoint, "optimizer_state", "must be an optimizer's state_dict {'state': {...}, 'param_groups': [...]}")
    groups = state["param_groups"]
    if len(groups) != 1 or not isinstance(groups[0], dict) or not isinstance(groups[0].get("params"), list):
        raise _refuse(checkpoint, "optimizer_state param_groups", "must be one group (a dict with its 'params' list)" +
                      (f", got {len(groups)} groups" if len(groups) != 1 else ""))
    ids = groups[0]["params"]
    if any(type(i) is not int for i in ids) or sorted(ids) != list(range(len(params))):  # (numeric order: 2 < 10)
        raise _refuse(checkpoint, "optimizer_state param_groups[0] params",
                      f"must list the model's {len(params)} parameters once each (0..{len(params) - 1})")
    kind = [k for k in ("momentum", "momentum_buffer") if k in groups[0] or any(
        isinstance(s, dict) and k in s for s in state["state"].values())]
    if kind or "betas" not in groups[0]:
        raise _refuse(checkpoint, "optimizer_state", f"is not Adam's ({'has ' + kind[0] if kind else 'no betas'}; "
                      "another optimizer's state?); edgesnn train runs Adam")
    out: Dict[Any, Dict] = {}
    for key, entry in state["state"].items():
        if type(key) is not int or not 0 <= key < len(params):
            raise _refuse(checkpoint, "optimizer_state state", f"has the key {show_value(key)}, not a parameter index 0..{len(params) - 1}")
        where = f"optimizer_state state[{key}]"
        if not isinstance(entry, dict) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            got = sorted(map(str, entry)) if isinstance(entry, dict) else type(entry).__name__
            raise _refuse(checkpoint, where, f"must hold Adam's step, exp_avg, exp_avg_sq, got {got}")
        step = entry["step"]
        if isinstance(step, torch.Tensor):  # Adam keeps a 0-d float32 tensor (older torch: a number)
            real = step.is_floating_point() or step.dtype in (torch.int32, torch.int64)
            step = step.item() if type(step) is torch.Tensor and step.dim() == 0 and real else None
        # at most the checkpoint's steps: Adam counts the steps in which the parameter had a gradient
        if not (_real(step) and step == int(step) and step >= 1) or (steps is not None and step > steps):
            want = f"a whole number within 1..{steps} (the checkpoint's steps)" if steps is not None else "a whole number >= 1"
            raise _refuse(checkpoint, f"{where} step", f"is {show_value(entry['step'])}, expected {want}")
        param = params[key]
        for name in ("exp_avg", "exp_avg_sq"):
            t = entry[name]
            if not (type(t) is torch.Tensor and t.layout == torch.strided and t.dtype == param.dtype
                    and t.shape == param.shape):
                got = (f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__)
                raise _refuse(checkpoint, f"{where} {name}", f"is {got}, the parameter is {param.dtype} {list(param.shape)}")
            if not bool(torch.isfinite(t).all()) or (name == "exp_avg_sq" and bool((t < 0).any())):
                raise _refuse(checkpoint, f"{where} {name}", "holds NaN, Inf" + (" or negative values" if name == "exp_avg_sq" else " values"))
        out[key] = {"step": torch.tensor(float(step), dtype=torch.float32), "exp_avg": entry["exp_avg"],
                    "exp_avg_sq": entry["exp_avg_sq"]}
    if not out and steps:  # a parameter without an entry never had a gradient (Adam's own rule); none at all is a loss
        raise _refuse(checkpoint, "optimizer_state state", f"is empty after {steps} step(s) (Adam's moments would "
                      "start again)")
    return {"state": out, "param_groups": [dict(groups[0])]}


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for plain data of the same types (never raises, tensors are never the same)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return isinstance(a, _PLAIN) and a == b


def check_optimizer_groups(loaded: Dict, fresh: Dict, lr: float, cosine: bool, checkpoint: str) -> None:
    """After ``load_state_dict``: the loaded group's settings must be those ``edgesnn train``
    builds Adam with (``fresh``, the group of a new optimizer), its ``lr`` a finite number: ``lr``
    itself for a constant run, within ``[0, lr]`` (and ``initial_lr == lr``) for a cosine one."""
    for key, want in fresh.items():
        if key in ("params", "lr", "initial_lr"):
            continue
        if key not in loaded or not _same(loaded[key], want):
            raise _refuse(checkpoint, f"optimizer_state param_groups[0] {key}",
                          f"is {show_value(loaded.get(key, 'missing'))}, edgesnn train's Adam uses {want!r}")
    got = loaded.get("lr")
    ok = _real(got) and (0 <= got <= lr if cosine else got == lr)
    if cosine:
        ok = ok and _same(loaded.get("initial_lr"), lr)
    if not ok:
        raise _refuse(checkpoint, "optimizer_state param_groups[0] lr",
                      f"is {show_value(got)} (initial_lr {show_value(loaded.get('initial_lr'))}), expected "
                      f"{'a rate within [0, ' + repr(lr) + '] starting at ' + repr(lr) if cosine else repr(lr) + ' (--lr)'}")


def check_schedule_state(ck: Dict, steps: Optional[int], lr: float, checkpoint: str) -> None:
    """A cosine checkpoint's stored scheduler state (``lr_schedule["state"]``), before it is loaded
    (``load_state_dict`` copies every key into the scheduler, its methods included): no key that
    would replace its optimizer or a method (the private keys another torch version keeps pass), with ``T_max`` the stored horizon, ``base_lrs == [lr]``,
    ``last_epoch`` the checkpoint's ``steps`` and ``_last_lr`` one finite rate."""
    entry = ck.get("lr_schedule")
    if not (isinstance(entry, dict) and isinstance(entry.get("state"), dict)):
        return  # lr_schedule's own check says so in its words
    state, where = entry["state"], "lr_schedule state"
    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    fresh = torch.optim.lr_scheduler.CosineAnnealingLR(probe, T_max=1).state_dict()
    # keys another torch version keeps (2.13's _is_initial, resumed on 2.5) are state; a key that would
    # replace the scheduler's optimizer or one of its methods, or that is not a name, is not
    cls = torch.optim.lr_scheduler.CosineAnnealingLR
    extra = [k for k in state if k not in fresh and (type(k) is not str or not k.isidentifier() or k == "optimizer"
                                                     or callable(getattr(cls, k, None)))]
    if extra:
        raise _refuse(checkpoint, where, f"holds {show_value(extra[0])}, not a CosineAnnealingLR setting")
    last = state.get("_last_lr")
    checks = [("T_max", _same(state.get("T_max"), entry.get("steps")), f"{entry.get('steps')!r} (lr_schedule steps)"),
              ("eta_min", _real(state.get("eta_min")) and state.get("eta_min") == 0, "0.0"),
              ("base_lrs", _same(state.get("base_lrs"), [lr]), f"[{lr!r}] (--lr)"),
              ("last_epoch", type(state.get("last_epoch")) is int and state["last_epoch"] >= 0 and
               (steps is None or state["last_epoch"] == steps), f"{steps!r} (the checkpoint's steps)"),
              ("_step_count", "_step_count" not in state or type(state["_step_count"]) is int, "an integer"),
              ("_last_lr", isinstance(last, list) and len(last) == 1 and _real(last[0]) and 0 <= last[0] <= lr,
               f"one rate within [0, {lr!r}]")]
    for key in ("_get_lr_called_within_step", "_is_initial", "verbose"):
        checks.append((key, key not in state or type(state[key]) is bool, "a bool"))
    for key, ok, want in checks:
        if not ok:
            raise _refuse(checkpoint, f"{where} {key}", f"is {show_value(state.get(key, 'missing'))}, expected {want}")


def check_world_size(ck: Dict, checkpoint: str) -> int:
    """The checkpoint's ``world_size`` (default 1): an integer >= 1, else one line."""
    value = ck.get("world_size", 1)
    if type(value) is not int or value < 1:
        raise _refuse(checkpoint, "world_size", f"is {show_value(value)}, expected an integer >= 1")
    return value
