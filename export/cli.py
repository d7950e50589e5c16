"""``edgesnn export``: checkpoint -> ONNX training step, ONNX training artifacts, TorchScript or inference ONNX.

    edgesnn export --checkpoint CK --format onnx-step --out DIR [--batch-size 32] [--optimizer sgd|adamw] [--lr 0.01]
                   [--momentum 0.9] [--weight-decay WD] [--nesterov]
        (one plain ONNX graph per training step: runs on plain onnxruntime, x86-64 and aarch64)
    edgesnn export --checkpoint CK --format onnx-training --out DIR [--batch-size 32] [--optimizer sgd] [--lr 0.01]
        (legacy: ONNX Runtime training artifacts; onnxruntime-training-cpu 1.19.2, x86-64 only)
    edgesnn export --checkpoint CK --format torchscript   --out DIR   (writes DIR/model.pt; or --out FILE.pt)
    edgesnn export --checkpoint CK --format onnx          --out DIR   (writes DIR/model.onnx; or --out FILE.onnx)
    edgesnn export --checkpoint CK --format nir           --out DIR   (writes DIR/model.nir; or --out FILE.nir; LIF models)
    edgesnn export --checkpoint CK --format checkpoint --params DIR/finetuned/params.npz --out NEW.ckpt
        (the reverse: fold device-fine-tuned weights back into an edgesnn checkpoint)

An existing output is never overwritten without ``--force``: a non-empty ``--out`` directory
(onnx-step, onnx-training) or an existing output file (the other formats). With ``--force`` an artifact
directory is replaced as a whole (built in a temp folder beside it, then swapped in: nothing
stale survives, nothing is lost if the export fails). ``--out`` may not be or contain the input.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Dict

from ..atomic import check_not_inside, check_output, replace_dir
from ..errors import UsageError

__all__ = ["FORMATS", "register", "run", "import_params"]

FORMATS = ("onnx-step", "onnx-training", "torchscript", "onnx", "nir", "checkpoint")
DIRECTORY_FORMATS = ("onnx-step", "onnx-training")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint for on-device fine-tuning or inference",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="edgesnn checkpoint to export")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory (or file for torchscript/onnx/checkpoint)")
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
    p.add_argument("--params", default=None, help="checkpoint: params.npz written by the device runner")
    p.add_argument("--force", action="store_true", help="replace an existing --out (a directory is replaced as a whole)")
    p.set_defaults(func=run)


def _file_in(out: str, default_name: str, suffixes) -> Path:
    path = Path(out)
    return path if path.suffix.lower() in suffixes else path / default_name


def import_params(checkpoint, params_npz, out) -> Path:
    """Write a new edgesnn checkpoint: ``checkpoint``'s config with the weights from a runner's ``params.npz``."""
    import torch

    from ..checkpoint import save_checkpoint
    from .prepare import ExportError, model_from_checkpoint
    from .run_support import read_npz

    model, ck = model_from_checkpoint(checkpoint)
    params_npz = Path(params_npz)
    if not params_npz.is_file():
        raise FileNotFoundError(f"params: no such file: {params_npz}")
    state = model.state_dict()
    new_state: Dict[str, torch.Tensor] = {}
    arrays = read_npz(params_npz, "--params")
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise ExportError(f"params: {params_npz} holds names the model does not have: {unknown}")
    for name, value in state.items():
        if name in arrays:
            arr = torch.from_numpy(arrays[name]).to(value.dtype)
            if arr.shape != value.shape:
                raise ExportError(f"params: {name} has shape {tuple(arr.shape)}, the model expects {tuple(value.shape)}")
            new_state[name] = arr
        else:
            new_state[name] = value
    extra = {k: v for k, v in ck.items() if k not in ("format", "version", "model_config", "model_state", "optimizer_state")}
    return save_checkpoint(out, ck["model_config"], new_state, **extra)


def _check_args(args: argparse.Namespace) -> Path:
    """Validate the flags before any work; returns the output path (a file or, for onnx-training, a directory)."""
    from .run_support import FLOAT32_MAX  # (numpy: imported here, not for --help)

    if args.lr is not None and not (math.isfinite(args.lr) and 0 < args.lr <= FLOAT32_MAX):
        raise UsageError(f"--lr: expected a finite number > 0 (float32 range), got {args.lr}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    training = [f for f, v in (("--batch-size", args.batch_size), ("--optimizer", args.optimizer), ("--lr", args.lr))
                if v is not None]
    if training and args.format not in DIRECTORY_FORMATS:  # the other formats would ignore them silently
        raise UsageError(f"{training[0]}: applies to --format onnx-step / onnx-training only (not {args.format})")
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    args.optimizer = args.optimizer or "sgd"
    args.lr = 0.01 if args.lr is None else args.lr
    if args.format == "checkpoint" and not args.params:
        raise UsageError("--format checkpoint needs --params PATH (params.npz from the device runner)")
    for flag, value in (("--momentum", args.momentum), ("--weight-decay", args.weight_decay)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag}: expected a finite number >= 0, got {value}")
    given = [f for f, v in (("--momentum", args.momentum is not None), ("--weight-decay", args.weight_decay is not None),
                            ("--nesterov", args.nesterov)) if v]
    if given and args.format != "onnx-step":  # the other formats would ignore them silently
        raise UsageError(f"{given[0]}: applies to --format onnx-step only (not {args.format})")
    if args.optimizer == "adamw" and (args.momentum is not None or args.nesterov):
        raise UsageError(f"{'--momentum' if args.momentum is not None else '--nesterov'}: applies to --optimizer sgd "
                         "only (adamw uses betas 0.9, 0.999)")
    if args.optimizer == "sgd" and args.momentum is None:
        args.momentum = 0.9
    if args.nesterov and not args.momentum:
        raise UsageError("--nesterov needs --momentum > 0")
    if args.format in DIRECTORY_FORMATS:
        out = Path(args.out)
    elif args.format == "torchscript":
        out = _file_in(args.out, "model.pt", (".pt", ".pth", ".ts"))
    elif args.format == "onnx":
        out = _file_in(args.out, "model.onnx", (".onnx",))
    elif args.format == "nir":
        out = _file_in(args.out, "model.nir", (".nir",))
    else:
        out = Path(args.out)
    check_not_inside(args.out, "--out", checkpoint=args.checkpoint, params=args.params)
    directory = args.format in DIRECTORY_FORMATS
    if directory and not args.force and (out / "finetuned").is_dir():
        raise FileExistsError(f"--out: {out} already holds a fine-tuned finetuned/ folder; --force replaces {out} as a "
                              "whole, finetuned/ included (move that folder first to keep it)")
    check_output(out, "--out", args.force, directory=directory)
    return out


#: Formats whose graph takes one static frame ``[B, *in_shape]`` and repeats it over the T steps.
STATIC_INPUT_FORMATS = ("onnx-step", "onnx-training", "onnx", "torchscript")


def _refuse_event_data(args: argparse.Namespace, ck: Dict) -> None:
    """A checkpoint trained on event data (T different frames per sample) cannot be exported to a
    format that repeats one frame over T: it would run, and train, on the wrong input silently."""
    from ..training.data import EVENT_DATASETS

    dataset = (ck.get("train_config") or {}).get("dataset")
    if args.format in STATIC_INPUT_FORMATS and dataset in EVENT_DATASETS:
        raise UsageError(f"--format {args.format}: {args.checkpoint} was trained on event data ({dataset}: T frames per "
                         f"sample), but this graph takes one frame and repeats it over T; use --format nir "
                         "(one time step per call) or --format checkpoint")


def run(args: argparse.Namespace) -> int:
    out = _check_args(args)
    from .prepare import model_from_checkpoint

    if args.format == "checkpoint":
        path = import_params(args.checkpoint, args.params, out)
        print(f"wrote {path}")
        return 0
    model, ck = model_from_checkpoint(args.checkpoint)
    _refuse_event_data(args, ck)
    if args.format == "onnx-step":
        from .onnx_step import export_onnx_step

        manifest = replace_dir(out, lambda tmp: export_onnx_step(
            model, tmp, args.batch_size, args.optimizer, args.lr, 0.9 if args.momentum is None else args.momentum,
            args.weight_decay, args.nesterov))
        kinds = ", ".join(sorted({n["kind"] for n in manifest.neurons}))
        print(f"wrote ONNX training-step graph to {out} (batch {manifest.batch_size}, T {manifest.timesteps} in a Scan of "
              f"{manifest.chunk}-step chunks, {kinds}, {len(manifest.trainable)} trainable tensors, optimizer "
              f"{manifest.optimizer}); run it with edgesnn-device (numpy + plain onnxruntime)")
    elif args.format == "onnx-training":
        from .onnx_training import export_onnx_training

        manifest = replace_dir(out, lambda tmp: export_onnx_training(model, tmp, args.batch_size, args.optimizer, args.lr))
        print(f"wrote ONNX Runtime training artifacts to {out} (batch {manifest.batch_size}, T {manifest.timesteps} "
              f"unrolled, {len(manifest.trainable)} trainable tensors, optimizer {manifest.optimizer})")
    elif args.format == "torchscript":
        from .torchscript import export_torchscript

        print(f"wrote TorchScript module {export_torchscript(model, out)}")
    elif args.format == "nir":
        from .nir_export import export_nir

        print(f"wrote NIR graph {export_nir(model, out)} (dt = 1e-4 s per step; load with edgesnn.nir.load)")
    else:
        from .onnx_inference import export_onnx

        print(f"wrote ONNX inference model {export_onnx(model, out)}")
    return 0
