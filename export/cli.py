"""``edgesnn export``: checkpoint -> ONNX training artifacts, TorchScript or inference ONNX.

    edgesnn export --checkpoint CK --format onnx-training --out DIR [--batch-size 32] [--optimizer sgd] [--lr 0.01]
    edgesnn export --checkpoint CK --format torchscript   --out DIR   (writes DIR/model.pt; or --out FILE.pt)
    edgesnn export --checkpoint CK --format onnx          --out DIR   (writes DIR/model.onnx; or --out FILE.onnx)
    edgesnn export --checkpoint CK --format checkpoint --params DIR/finetuned/params.npz --out NEW.ckpt
        (the reverse: fold device-fine-tuned weights back into an edgesnn checkpoint)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from ..checkpoint import save_checkpoint

__all__ = ["FORMATS", "register", "run", "import_params"]

FORMATS = ("onnx-training", "torchscript", "onnx", "checkpoint")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint for on-device fine-tuning or inference",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="edgesnn checkpoint to export")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory (or file for torchscript/onnx/checkpoint)")
    p.add_argument("--batch-size", type=int, default=32, help="onnx-training: fixed batch size of the training graphs")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="onnx-training: optimizer graph")
    p.add_argument("--lr", type=float, default=0.01, help="onnx-training: default learning rate for the runner")
    p.add_argument("--params", default=None, help="checkpoint: params.npz written by the device runner")
    p.set_defaults(func=run)


def _file_in(out: str, default_name: str, suffixes) -> Path:
    path = Path(out)
    return path if path.suffix in suffixes else path / default_name


def import_params(checkpoint, params_npz, out) -> Path:
    """Write a new edgesnn checkpoint: ``checkpoint``'s config with the weights from a runner's ``params.npz``."""
    from .prepare import ExportError, model_from_checkpoint

    model, ck = model_from_checkpoint(checkpoint)
    params_npz = Path(params_npz)
    if not params_npz.is_file():
        raise FileNotFoundError(f"params: no such file: {params_npz}")
    state = model.state_dict()
    new_state: Dict[str, torch.Tensor] = {}
    with np.load(params_npz, allow_pickle=False) as npz:
        unknown = sorted(set(npz.files) - set(state))
        if unknown:
            raise ExportError(f"params: {params_npz} holds names the model does not have: {unknown}")
        for name, value in state.items():
            if name in npz.files:
                arr = torch.from_numpy(np.array(npz[name])).to(value.dtype)
                if arr.shape != value.shape:
                    raise ExportError(f"params: {name} has shape {tuple(arr.shape)}, the model expects {tuple(value.shape)}")
                new_state[name] = arr
            else:
                new_state[name] = value
    extra = {k: v for k, v in ck.items() if k not in ("format", "version", "model_config", "model_state", "optimizer_state")}
    return save_checkpoint(out, ck["model_config"], new_state, **extra)


def run(args: argparse.Namespace) -> int:
    from .prepare import model_from_checkpoint

    if args.format == "checkpoint":
        if not args.params:
            raise ValueError("--format checkpoint needs --params PATH (params.npz from the device runner)")
        path = import_params(args.checkpoint, args.params, args.out)
        print(f"wrote {path}")
        return 0
    model, _ = model_from_checkpoint(args.checkpoint)
    if args.format == "onnx-training":
        from .onnx_training import export_onnx_training

        manifest = export_onnx_training(model, args.out, args.batch_size, args.optimizer, args.lr)
        print(f"wrote ONNX Runtime training artifacts to {args.out} (batch {manifest.batch_size}, T {manifest.timesteps} "
              f"unrolled, {len(manifest.trainable)} trainable tensors, optimizer {manifest.optimizer})")
    elif args.format == "torchscript":
        from .torchscript import export_torchscript

        path = export_torchscript(model, _file_in(args.out, "model.pt", (".pt", ".pth", ".ts")))
        print(f"wrote TorchScript module {path}")
    else:
        from .onnx_inference import export_onnx

        path = export_onnx(model, _file_in(args.out, "model.onnx", (".onnx",)))
        print(f"wrote ONNX inference model {path}")
    return 0
