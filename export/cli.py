"""``edgesnn export``: checkpoint -> ONNX training step, ONNX training artifacts, TorchScript, inference ONNX or NIR
(and device-fine-tuned weights -> checkpoint).

    edgesnn export --checkpoint CK --format onnx-step --out DIR [--batch-size 32] [--optimizer sgd|adamw] [--lr 0.01]
                   [--momentum 0.9] [--weight-decay WD] [--nesterov] [--freeze LAYER ...] [--time-chunk K]
        (one plain ONNX graph per training step: runs on plain onnxruntime, x86-64 and aarch64)
    edgesnn export --checkpoint CK --format onnx-training --out DIR [--batch-size 32] [--optimizer sgd|adamw] [--lr 0.01]
        (legacy: ONNX Runtime training artifacts; onnxruntime-training-cpu 1.19.2, x86-64 only)
    edgesnn export --checkpoint CK --format torchscript   --out DIR   (writes DIR/model.pt; or --out FILE.pt)
    edgesnn export --checkpoint CK --format onnx          --out DIR   (writes DIR/model.onnx; or --out FILE.onnx)
    edgesnn export --checkpoint CK --format nir           --out DIR   (writes DIR/model.nir; or --out FILE.nir; LIF models)
    edgesnn export --checkpoint CK --format checkpoint --params DIR/finetuned/params.npz --out NEW.ckpt
        (the reverse: fold device-fine-tuned weights back into an edgesnn checkpoint)

``--freeze body.1.module`` (repeatable, or comma-separated; a layer or a parameter name) keeps
those parameters fixed on the device: onnx-step and onnx-training. An unknown name is refused with
the model's layer names listed.

``--params`` applies to ``--format checkpoint`` only: to export fine-tuned weights to another format,
first fold them into a checkpoint with ``--format checkpoint``, then export that checkpoint.

``--out``: a directory for onnx-step / onnx-training; for torchscript / onnx / nir a file with the
format's suffix, or else a directory to write model.pt / model.onnx / model.nir into (a trailing
``/`` always means a directory); for checkpoint a file (a trailing ``/`` is refused). A name ending
in another format's suffix (.onnx, .pt, .pth, .ts, .nir, .ckpt) is refused.

An existing output is never overwritten without ``--force``: a non-empty ``--out`` directory
(onnx-step, onnx-training) or an existing output file (the other formats). With ``--force`` an artifact
directory is replaced as a whole (built in a temp folder beside it, then swapped in: nothing
stale survives, nothing is lost if the export fails). The output may not be or contain the input
(for the file formats: the output file itself, so ``--out .`` beside the checkpoint is fine).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Dict

from ..atomic import PathLike, check_not_inside, check_output, replace_dir, user_path
from ..errors import InterruptedAfterOutput, UsageError, refuse_empty
from ..output_guard import guarded

__all__ = ["FORMATS", "register", "run", "import_params"]

FORMATS = ("onnx-step", "onnx-training", "torchscript", "onnx", "nir", "checkpoint")
DIRECTORY_FORMATS = ("onnx-step", "onnx-training")
#: File formats: the suffixes of their output file, and the file name written into an ``--out`` directory
#: (``None``: a file path is required).
FILE_OUTPUTS = {"torchscript": ((".pt", ".pth", ".ts"), "model.pt"), "onnx": ((".onnx",), "model.onnx"),
                "nir": ((".nir",), "model.nir"), "checkpoint": ((".ckpt", ".pt", ".pth"), None)}
#: Every suffix some format writes: an ``--out`` ending in another format's one is a mistake.
KNOWN_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".nir", ".ckpt")
PARAMS_FILE = "the params.npz file the device runner wrote"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand to the ``edgesnn`` command line's ``subparsers``."""
    p = subparsers.add_parser("export", help="export a checkpoint for on-device fine-tuning or inference",
                              description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=user_path, required=True, help="edgesnn checkpoint to export")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", type=user_path, required=True,
                   help="onnx-step/onnx-training: output directory; torchscript/onnx/nir: a .pt/.onnx/.nir file, or a "
                        "directory to write model.pt/model.onnx/model.nir into (a trailing '/' always means a "
                        "directory); checkpoint: the new checkpoint file")
    p.add_argument("--batch-size", type=int, default=None,
                   help="onnx-step/onnx-training: fixed batch size of the training graphs (default 32)")
    p.add_argument("--optimizer", default=None, choices=("sgd", "adamw"),
                   help="onnx-step: torch.optim.SGD or torch.optim.AdamW update in the graph; onnx-training: ORT "
                        "optimizer graph (default sgd)")
    p.add_argument("--lr", type=float, default=None,
                   help="onnx-step/onnx-training: default learning rate for the runner (default 0.01)")
    p.add_argument("--momentum", type=float, default=None, help="onnx-step, sgd: momentum (default 0.9; 0 for plain SGD)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="onnx-step: weight decay (default: 0 for sgd, 0.01 for adamw as in torch.optim.AdamW)")
    p.add_argument("--nesterov", action="store_true", help="onnx-step, sgd: Nesterov momentum")
    p.add_argument("--time-chunk", type=int, default=None, choices=(1, 2, 4), metavar="K",
                   help="onnx-step: time steps per loop iteration, 1, 2 or 4 dividing T (default 1; with RevLIF "
                        "layers from T = 64 on, the largest of 4 and 2 dividing T). A RevLIF layer stores a byte per "
                        "neuron per chunk; smaller chunks hold fewer temporaries at once")
    p.add_argument("--freeze", action="append", default=None, metavar="LAYER",
                   help="onnx-step/onnx-training: keep this layer's (module name, e.g. body.1.module) or parameter's "
                        "values fixed on the device: no gradient, no optimizer state (repeatable; commas allowed)")
    p.add_argument("--params", type=user_path, default=None,
                   help="checkpoint only: params.npz written by the device runner (every trainable parameter)")
    p.add_argument("--force", action="store_true", help="replace an existing --out (a directory is replaced as a whole)")
    p.set_defaults(func=run)


def _refuse_foreign_suffix(fmt: str, out: str) -> None:
    """``--out model.onnx`` with ``--format torchscript`` would create a directory named model.onnx."""
    suffix = Path(out).suffix.lower()
    own, default = FILE_OUTPUTS.get(fmt, ((), None))
    if suffix in KNOWN_SUFFIXES and suffix not in own:
        writes = "a directory" if not own else f"a {own[0]} file" + (f" (or DIR/{default})" if default else "")
        raise UsageError(f"--out: {out} ends in {suffix}, another format's suffix; --format {fmt} writes {writes}")


def _output_path(fmt: str, out: str) -> Path:
    """The path ``--format fmt --out out`` writes: the directory, or the file (``DIR/model.*`` for a
    directory ``--out``). Raises :class:`UsageError` for an empty ``--out``, another format's suffix,
    or a trailing ``/`` where a file is required."""
    refuse_empty(out, "--out", "a path")
    _refuse_foreign_suffix(fmt, out)
    if fmt in DIRECTORY_FORMATS:
        return Path(out)
    suffixes, default = FILE_OUTPUTS[fmt]
    as_dir = out.endswith(("/", os.sep))
    if default is None:
        if as_dir:
            raise UsageError(f"--out: {out} ends with '/' (a directory); --format {fmt} writes one file: give its "
                             f"path, e.g. {out}finetuned.ckpt")
        return Path(out)
    path = Path(out)
    return path / default if as_dir or path.suffix.lower() not in suffixes else path


def import_params(checkpoint: PathLike, params_npz: PathLike, out: PathLike) -> Path:
    """Write a new edgesnn checkpoint: ``checkpoint``'s config with the weights from a runner's ``params.npz``.

    ``params_npz`` must hold every trainable parameter of the model (buffers it lacks keep the
    checkpoint's values), by name, with the model's shapes, real floating-point dtype and finite
    values (see :mod:`edgesnn.export.params_check`). A ``checkpoint`` holding NaN or Inf values is
    refused, as by every other export format.
    """
    from ..checkpoint import save_checkpoint
    from ..atomic import check_input_file
    from ..checkpoint import encode_config
    from .params_check import check_same_model, merged_state
    from .prepare import check_finite, model_from_checkpoint
    from .run_support import read_npz

    params_npz = check_input_file(params_npz, "--params", PARAMS_FILE)
    model, ck = model_from_checkpoint(checkpoint, "--checkpoint")
    # as every other format: a NaN/Inf buffer the params do not replace would be copied into the new file
    check_finite(model, f"--checkpoint {checkpoint}")
    check_same_model(params_npz, encode_config(model.config), f"--params {params_npz}")  # (as exports store it)
    new_state = merged_state(model, read_npz(params_npz, "--params"), f"--params {params_npz}")
    extra = {k: v for k, v in ck.items() if k not in ("format", "version", "model_config", "model_state", "optimizer_state")}
    return save_checkpoint(out, ck["model_config"], new_state, **extra)


def _check_args(args: argparse.Namespace) -> Path:
    """Validate the flags before any work; returns the output path (a file or, for onnx-training, a directory)."""
    from edgesnn.float32_range import FLOAT32_MAX
    from edgesnn.lr_schedules import RATE_RANGE, is_float32_rate

    if args.lr is not None and not is_float32_rate(args.lr):
        raise UsageError(f"--lr: expected {RATE_RANGE}, got {args.lr}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    training = [f for f, v in (("--batch-size", args.batch_size), ("--optimizer", args.optimizer), ("--lr", args.lr),
                               ("--freeze", args.freeze)) if v is not None]
    if training and args.format not in DIRECTORY_FORMATS:  # the other formats would ignore them silently
        raise UsageError(f"{training[0]}: applies to --format onnx-step / onnx-training only (not {args.format})")
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    args.optimizer = args.optimizer or "sgd"
    args.lr = 0.01 if args.lr is None else args.lr
    args.freeze = [n.strip() for entry in args.freeze or [] for n in entry.split(",")] or None
    if args.format == "checkpoint" and not args.params:
        raise UsageError("--format checkpoint needs --params PATH (params.npz from the device runner)")
    if args.params is not None and args.format != "checkpoint":  # the other formats would export the checkpoint's weights
        raise UsageError(f"--params: applies to --format checkpoint only (not {args.format}); to export fine-tuned "
                         f"weights, first run --format checkpoint --params {args.params} --out NEW.ckpt, then export "
                         "NEW.ckpt")
    if args.momentum is not None and not (math.isfinite(args.momentum) and 0 <= args.momentum < 1):
        raise UsageError(f"--momentum: expected a number in [0, 1) (0: plain SGD), got {args.momentum}")
    if args.weight_decay is not None and not (math.isfinite(args.weight_decay) and 0 <= args.weight_decay <= FLOAT32_MAX):
        raise UsageError(f"--weight-decay: expected a finite number >= 0 (float32 range), got {args.weight_decay}")
    given = [f for f, v in (("--momentum", args.momentum is not None), ("--weight-decay", args.weight_decay is not None),
                            ("--nesterov", args.nesterov), ("--time-chunk", args.time_chunk is not None)) if v]
    if given and args.format != "onnx-step":  # the other formats would ignore them silently
        raise UsageError(f"{given[0]}: applies to --format onnx-step only (not {args.format})")
    if args.optimizer == "adamw" and (args.momentum is not None or args.nesterov):
        raise UsageError(f"{'--momentum' if args.momentum is not None else '--nesterov'}: applies to --optimizer sgd "
                         "only (adamw uses betas 0.9, 0.999)")
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = 0.9
    if args.nesterov and not args.momentum:
        raise UsageError("--nesterov needs --momentum > 0")
    out = _output_path(args.format, args.out)
    check_not_inside(out, "--out", checkpoint=args.checkpoint, params=args.params)
    directory = args.format in DIRECTORY_FORMATS
    if directory and not args.force and (out / "finetuned").is_dir():
        raise FileExistsError(f"--out: {out} already holds a fine-tuned finetuned/ folder; --force replaces {out} as a "
                              "whole, finetuned/ included (move that folder first to keep it)")
    check_output(out, "--out", args.force, directory=directory)
    _check_inputs(args)
    return out


def _check_inputs(args: argparse.Namespace) -> None:
    """``--checkpoint`` (and ``--params``) must be regular files: one line naming the flag otherwise."""
    from ..atomic import check_input_file

    check_input_file(args.checkpoint, "--checkpoint", "a checkpoint file")
    if args.params:
        check_input_file(args.params, "--params", PARAMS_FILE)


#: Formats whose graph takes one static frame ``[B, *in_shape]`` and repeats it over the T steps
#: (``onnx-step``, ``onnx`` and ``torchscript`` take ``[B, T, *in_shape]`` for a checkpoint trained on event data).
STATIC_INPUT_FORMATS = ("onnx-training",)


def _refuse_event_data(args: argparse.Namespace, ck: Dict) -> None:
    """A checkpoint trained on event data (T different frames per sample) cannot be exported to a
    format that repeats one frame over T: it would run, and train, on the wrong input silently."""
    from ..training.data import EVENT_DATASETS

    dataset = _trained_on(ck)
    if args.format in STATIC_INPUT_FORMATS and dataset in EVENT_DATASETS:
        raise UsageError(f"--format {args.format}: {args.checkpoint} was trained on event data ({dataset}: T frames per "
                         f"sample), but this graph takes one frame and repeats it over T; use --format onnx-step "
                         "(device fine-tuning on T frames per sample), onnx or torchscript (inference on T frames), "
                         "nir (one time step per call) or checkpoint")


def _trained_on(ck: Dict):
    """The built-in dataset ``edgesnn train`` trained the checkpoint on (``None`` for one saved from Python)."""
    return (ck.get("train_config") or {}).get("dataset")


def _input_range(ck: Dict):
    """``(0, 1)`` for a checkpoint trained by ``edgesnn train`` on a built-in image dataset (its
    loaders scale every value to [0, 1]), else ``None`` (unknown: the device runner checks nothing)."""
    from ..training.data import UNIT_RANGE_DATASETS

    return (0.0, 1.0) if _trained_on(ck) in UNIT_RANGE_DATASETS else None


def _frames_text(batch: str, in_shape) -> str:
    """``[N, T, C, ...]: T frames per sample``: the input of a graph exported from event data."""
    return f"[{batch}, {', '.join(map(str, in_shape))}]: T frames per sample"


def _event_input(model, event: bool) -> str:
    """The inference formats' input note for a checkpoint trained on event data (else empty)."""
    return f" (input {_frames_text('B', (model.timesteps, *model.in_shape))})" if event else ""


def _frozen_text(args: argparse.Namespace) -> str:
    return f" ({', '.join(args.freeze)} frozen)" if args.freeze else ""


def run(args: argparse.Namespace) -> int:
    """``edgesnn export``: check the flags, load the checkpoint and write ``--out`` in ``--format``;
    returns the exit status 0."""
    out = _check_args(args)
    target = guarded(out, "--out", directory=args.format in DIRECTORY_FORMATS)  # replaces only what is there now
    try:
        return _export(args, target)
    except KeyboardInterrupt as exc:  # e.g. held back until the folder swap was done: say the output is whole
        if target.written and not isinstance(exc, InterruptedAfterOutput):
            raise InterruptedAfterOutput(f"interrupted after {out} was written (it is complete)") from None
        raise


def _export(args: argparse.Namespace, out: PathLike) -> int:
    """The export itself, once the flags are checked: load the checkpoint and write ``out`` (a
    :mod:`~edgesnn.output_guard` path: another process's output there is never replaced)."""
    from .prepare import check_finite, model_from_checkpoint

    if args.format == "checkpoint":
        path = import_params(args.checkpoint, args.params, out)
        print(f"wrote {path}")
        return 0
    model, ck = model_from_checkpoint(args.checkpoint, "--checkpoint")
    _refuse_event_data(args, ck)
    check_finite(model, f"--checkpoint {args.checkpoint}")
    if args.freeze:
        from .prepare import split_trainable

        split_trainable(model, args.freeze, "--freeze")  # one line naming --freeze before any export work
    if args.time_chunk is not None and int(model.timesteps) % args.time_chunk:
        raise UsageError(f"--time-chunk: expected 1, 2 or 4 dividing the checkpoint's T = {int(model.timesteps)}, got "
                         f"{args.time_chunk}")
    from ..training.data import EVENT_DATASETS

    event = _trained_on(ck) in EVENT_DATASETS  # T frames per sample: the graphs take x [B, T, ...]
    if args.format == "onnx-step":
        from .onnx_step import export_onnx_step

        manifest = replace_dir(out, lambda tmp: export_onnx_step(
            model, tmp, args.batch_size, args.optimizer, args.lr, 0.9 if args.momentum is None else args.momentum,
            args.weight_decay, args.nesterov, input_range=_input_range(ck), freeze=args.freeze, event=event,
            chunk=args.time_chunk))
        kinds = ", ".join(sorted({n["kind"] for n in manifest.neurons}))
        data = f"; device data x {_frames_text('N', manifest.in_shape)}" if event else ""
        print(f"wrote ONNX training-step graph to {out} (batch {manifest.batch_size}, T {manifest.timesteps} in a Scan of "
              f"{manifest.chunk}-step chunks, {kinds}, {len(manifest.trainable)} trainable tensors{_frozen_text(args)}, "
              f"optimizer {manifest.optimizer}{data}); run it with edgesnn-device (numpy + plain onnxruntime)")
    elif args.format == "onnx-training":
        from .onnx_training import export_onnx_training

        manifest = replace_dir(out, lambda tmp: export_onnx_training(model, tmp, args.batch_size, args.optimizer, args.lr,
                                                                     input_range=_input_range(ck), freeze=args.freeze))
        print(f"wrote ONNX Runtime training artifacts to {out} (batch {manifest.batch_size}, T {manifest.timesteps} "
              f"unrolled, {len(manifest.trainable)} trainable tensors{_frozen_text(args)}, optimizer {manifest.optimizer})")
    elif args.format == "torchscript":
        from .torchscript import export_torchscript

        print(f"wrote TorchScript module {export_torchscript(model, out, event=event)}{_event_input(model, event)}")
    elif args.format == "nir":
        from .nir_export import export_nir

        print(f"wrote NIR graph {export_nir(model, out)} (dt = 1e-4 s per step; load with edgesnn.nir.load)")
    else:
        from .onnx_inference import export_onnx

        print(f"wrote ONNX inference model {export_onnx(model, out, event=event)}{_event_input(model, event)}")
    return 0
