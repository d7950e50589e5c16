"""What ``--resume`` checks about the data: sample counts, labels and a hash of the input values.

A checkpoint stores both: ``data_fingerprint`` (counts and a hash of the labels, as before) and
``data_content`` (:func:`data_content_hash`: the inputs themselves). A resumed run whose data
differs in either is refused in one line; a checkpoint written before ``data_content`` existed
resumes with the counts-and-labels check alone (one log line says so).
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable, Dict, Optional

import numpy as np
import torch

from ..errors import UsageError
from .data import Dataset

__all__ = ["data_fingerprint", "data_content_hash", "check_resume_data"]

#: bytes of strided input values hashed per run (both splits together): CIFAR-10's 737 MB of float32
#: inputs hash in about 0.1-0.2 s with the per-sample sums (on the project's 2-core VM)
HASH_BUDGET = 32 << 20
_CHUNK = 8 << 20  # bytes of inputs handled at a time: the hash holds no copy of the data


def data_fingerprint(data: Dataset) -> str:
    """Sample counts and a hash of the labels of both splits: a resumed run must see the same data
    (a grown folder re-draws the train/test split)."""
    h = hashlib.sha256()
    for split in (data.train, data.test):
        h.update(split.y.cpu().numpy().astype("int64").tobytes())
    return f"{len(data.train)}+{len(data.test)}:{h.hexdigest()[:12]}"


def _words(rows: np.ndarray) -> np.ndarray:
    """``rows`` (``[m, values]``, C-contiguous) as unsigned words, as wide as its row size allows."""
    raw = rows.view(np.uint8).reshape(len(rows), -1)
    width = next(w for w in (8, 4, 2, 1) if raw.shape[1] % w == 0)
    return raw.view(np.dtype(f"<u{width}"))


def _hash_inputs(h, x: torch.Tensor, stride: int) -> None:
    """Feed ``h`` every sample's sum (modulo 2^64) of its bytes read as unsigned words, so any
    changed value shows, and every ``stride``-th word, so values moved within a sample show too."""
    t = x.detach().cpu()
    a = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    n = len(a)
    row_bytes = max(1, a[:1].nbytes)
    step = max(1, _CHUNK // row_bytes)
    for i in range(0, n, step):
        words = _words(np.ascontiguousarray(a[i:i + step]).reshape(min(step, n - i), -1))
        h.update(np.add.reduce(words, axis=1, dtype=np.uint64).tobytes())  # modular integer sums: exact in any order
        h.update(np.ascontiguousarray(words[:, ::stride]).tobytes())


def data_content_hash(data: Dataset) -> str:
    """A hash of both splits' inputs, cheap enough to take on every run with a checkpoint.

    Every value counts through a per-sample sum of its bytes read as integer words (a single
    changed value changes it); a strided subset (at most :data:`HASH_BUDGET` bytes) is hashed as
    is, so values moved within a sample (a flipped image) show too. CIFAR-10 (737 MB of float32)
    takes about 0.1-0.2 s on the project's 2-core VM; event frames are read once from their memory
    map.
    """
    splits = (data.train, data.test)
    total = sum(s.x.numel() * s.x.element_size() for s in splits)
    stride = max(1, math.ceil(total / HASH_BUDGET))
    h = hashlib.blake2b(digest_size=16)
    for s in splits:
        h.update(f"{tuple(s.x.shape)}:{s.x.dtype}\n".encode())
        if len(s):
            _hash_inputs(h, s.x, stride)
    return f"blake2b-s{stride}:{h.hexdigest()}"


def check_resume_data(ck: Dict, fingerprint: str, content: Optional[str], checkpoint: str, where: str,
                      events: bool, log: Callable[[str], None]) -> None:
    """Refuse to resume ``ck`` when the data changed: other counts or labels (``fingerprint``) or
    other input values (``content``). A checkpoint without ``data_content`` (older edgesnn) is
    checked on counts and labels only, with one log line."""
    stored = ck.get("data_fingerprint")
    if stored not in (None, fingerprint):
        raise UsageError(f"--resume: the data under {where} changed since {checkpoint} was written "
                         f"(samples or labels differ: {stored} then, {fingerprint} now)"
                         f"{'' if events else '; the train/test split would be drawn again'}: use a new --checkpoint")
    held = ck.get("data_content")
    if stored is None and held is None:
        log(f"--resume: {checkpoint} holds no fingerprint of the data (an older edgesnn): the data is not compared")
    elif held is None or content is None:
        log(f"--resume: {checkpoint} holds no hash of the inputs (an older edgesnn): only sample counts and "
            "labels are compared")
    elif held != content:
        raise UsageError(f"--resume: the inputs under {where} changed since {checkpoint} was written (same sample "
                         "counts and labels, other values): use a new --checkpoint")
