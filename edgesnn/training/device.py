"""``--device auto|cpu|cuda`` for training: which torch device runs the model, the data and the loss."""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import UsageError

__all__ = ["DEVICES", "resolve_device", "check_backend_device"]

#: The ``--device`` choices: ``auto`` is CUDA when ``torch.cuda.is_available()``, else the CPU.
DEVICES = ("auto", "cpu", "cuda")


def _no_cuda_reason() -> str:
    build = getattr(torch.version, "cuda", None)
    if not build:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    return f"this PyTorch ({torch.__version__}, CUDA {build}) sees no CUDA device"


def resolve_device(device: Optional[str] = "auto") -> torch.device:
    """The ``torch.device`` for ``device`` (``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; ``None`` = auto).

    Raises :class:`~edgesnn.errors.UsageError` (one line) for ``cuda`` without a usable CUDA device.
    """
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or (isinstance(device, torch.device) and device.type == "cpu"):  # (torch.device("cpu", 0))
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device available ({_no_cuda_reason()}); "
                             "use --device cpu (or auto), or install a CUDA build of PyTorch")
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device: expected one of {', '.join(DEVICES)} or cuda:N (N a GPU index), got {name!r}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    raise UsageError(f"--device: expected one of {', '.join(DEVICES)} (or cuda:N), got {name!r}")


def check_backend_device(backend: str, device: torch.device) -> None:
    """Refuse, before any training, a kernel backend that cannot run tensors on ``device``."""
    if backend == "numba" and device.type != "cpu":
        raise UsageError(f"--backend numba runs CPU tensors, but the device is {device}; use --backend auto or cuda")
    if backend == "cuda" and device.type != "cuda":
        raise UsageError(f"--backend cuda runs CUDA tensors, but the device is {device}; "
                         "add --device cuda (or use --backend auto)")
