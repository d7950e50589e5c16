"""Checksums of a checkpoint's tensors: written by ``save_checkpoint``, checked by ``load_checkpoint``.

``torch.load`` does not check the CRCs of the zip records it reads, so a checkpoint whose bytes
changed on an SD card or eMMC loads silently with wrong weights. :func:`payload_digest` records,
for every tensor the checkpoint holds (model state, optimizer and scheduler state, anything
tensor-valued at any depth of dicts, lists and tuples), a CRC-32 of its dtype, shape and values
(the raw bytes of its contiguous, little-endian data: the same on every torch version and
independent of the pickle layout, strides or storage sharing). :func:`check_digest` recomputes
them after loading and names the first tensor that differs.

A tensor that differs only because the file was loaded, edited and saved again with ``torch.save``
(the digest then describes the values before the edit) is not refused: such a file's zip records
all match their own CRCs, which :func:`zip_damaged` checks, while damaged bytes break them too.
Checkpoints without a digest (older edgesnn versions) and tensors the digest does not list are
loaded as before.
"""

from __future__ import annotations

import os
import sys
import zipfile
import zlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

__all__ = ["DIGEST_KEY", "ALGORITHM", "tensor_crc32", "iter_tensors", "payload_digest", "first_mismatch",
           "zip_damaged", "check_digest"]

#: the checkpoint key holding the digest (``load_checkpoint`` removes it from what it returns)
DIGEST_KEY = "tensor_digest"
#: the digest's ``algorithm`` field; a digest of another algorithm (a newer edgesnn) is not checked
ALGORITHM = "crc32-v1"

_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def tensor_crc32(t: torch.Tensor) -> Optional[int]:
    """CRC-32 (an int in 0..2**32-1) of ``t``'s dtype name, shape and values as contiguous
    little-endian bytes; ``None`` for a tensor without plain data (sparse and other layouts).

    Non-contiguous tensors are digested in their logical (row-major) order; bfloat16, float8,
    complex32 and the like are read as raw bytes (no NumPy dtype needed); a ``meta`` tensor holds
    no values, so only its dtype and shape count; a quantized tensor counts by its integer values."""
    if t.layout != torch.strided:
        return None
    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    header = f"{str(t.dtype).rpartition('.')[2]}|{','.join(map(str, t.shape))}|".encode()
    crc = zlib.crc32(header)
    if t.device.type == "meta" or t.numel() == 0:
        return crc
    flat = t.resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
    unit = flat.element_size() // (2 if flat.is_complex() else 1)  # a complex value is two numbers
    if sys.byteorder == "big" and unit > 1:  # digest little-endian bytes on every machine
        return zlib.crc32(flat.view(_INT_OF_SIZE[unit]).numpy().byteswap().view("u1"), crc)
    return zlib.crc32(flat.view(torch.uint8).numpy(), crc)


def iter_tensors(value: Any, where: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """``(path, tensor)`` for every tensor (any shape, as stored) in ``value`` (dicts, lists and
    tuples at any depth), in order; paths join keys and indices with dots: ``model_state.fc1.weight``,
    ``optimizer_state.state.0.exp_avg``."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from iter_tensors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from iter_tensors(v, f"{where}.{i}" if where else str(i))


def payload_digest(payload: Dict[str, Any]) -> Dict[str, Any]:
    """The digest of every tensor in ``payload`` (its ``DIGEST_KEY`` entry aside), as plain data
    ``torch.load(weights_only=True)`` reads: ``{"algorithm": ALGORITHM, "tensors": {path: crc}}``.
    A path met twice keeps its first tensor's CRC."""
    tensors: Dict[str, int] = {}
    for path, t in iter_tensors({k: v for k, v in payload.items() if k != DIGEST_KEY}):
        crc = tensor_crc32(t)
        if crc is not None:
            tensors.setdefault(path, crc)
    return {"algorithm": ALGORITHM, "tensors": tensors}


def first_mismatch(payload: Dict[str, Any], digest: Any) -> Optional[str]:
    """The path of the first tensor of ``payload`` whose CRC differs from ``digest``'s, else ``None``.
    Tensors the digest does not list, and a digest that is not this module's, are not compared."""
    if not isinstance(digest, dict) or digest.get("algorithm") != ALGORITHM or not isinstance(digest.get("tensors"), dict):
        return None
    stored, seen = digest["tensors"], set()
    for path, t in iter_tensors({k: v for k, v in payload.items() if k != DIGEST_KEY}):
        want = stored.get(path)
        if path in seen or type(want) is not int:
            continue
        seen.add(path)
        if tensor_crc32(t) != want:
            return path
    return None


def zip_damaged(path: "os.PathLike[str] | str") -> bool:
    """Whether the zip file at ``path`` is damaged: a record whose bytes do not match the CRC-32
    the zip stores for it (which ``torch.load`` does not check), or a zip that cannot be read. A file
    in torch's legacy (non-zip) format was saved again by hand (edgesnn writes zips): not damaged."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError):
        return True


def check_digest(path: "os.PathLike[str] | str", payload: Dict[str, Any], error: type = ValueError) -> None:
    """Check ``payload`` (loaded from the checkpoint at ``path``) against its digest, if it has one;
    raise ``error`` in one line naming the file and the first tensor that differs when the file's
    bytes changed since it was written. Changes saved again by ``torch.save`` (whose zip records then
    match their CRCs) are edits, not damage, and pass."""
    found = first_mismatch(payload, payload.get(DIGEST_KEY))
    if found is not None and zip_damaged(path):
        raise error(f"checkpoint: {path}: tensor {found!r} does not match its checksum "
                    "(file damaged since it was written?); use another copy")
