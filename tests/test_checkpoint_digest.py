"""Checkpoint tensor checksums: a byte changed on disk (SD card, eMMC) is refused in one line.

torch.load does not check the zip records' CRCs, so a damaged weight loaded silently before; the
checksums are computed here independently (NumPy bytes + zlib) to pin the digest's definition.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from edgesnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgesnn.cli import main
from edgesnn.models import build_model

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--timesteps", "2", "--epochs", "1",
         "--max-steps", "1", "--no-progress"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _flip(path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s bytes inside the file at ``path`` (as a bad
    flash cell would), leaving the rest of the file, zip headers included, as it was."""
    raw = path.read_bytes()
    needle = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # bfloat16 too
    at = raw.find(needle)
    assert at >= 0 and raw.find(needle, at + 1) < 0, "the tensor's bytes must occur once in the file"
    damaged = bytearray(raw)
    damaged[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(damaged))


def _checkpoint(path, **extra):
    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 2, hidden=(8,))
    save_checkpoint(path, model.config, model.state_dict(), **extra)
    return model


def test_a_damaged_weight_byte_is_refused_by_export_in_one_line(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    model = _checkpoint(ck)
    name = next(k for k, v in model.state_dict().items() if v.dim() == 2)
    _flip(ck, model.state_dict()[name])
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert _err(capsys) == (f"edgesnn export: error: checkpoint: {ck}: tensor 'model_state.{name}' does not match "
                            "its checksum (file damaged since it was written?); use another copy")
    assert not (tmp_path / "m.onnx").exists()


def test_a_damaged_optimizer_moment_is_refused_by_train_resume(tmp_path, capsys):
    ck = tmp_path / "ck.pt"
    assert main(TRAIN + ["--checkpoint", str(ck)]) == 0
    capsys.readouterr()
    stored = torch.load(ck, weights_only=True)
    key, entry = next((k, v) for k, v in stored["optimizer_state"]["state"].items() if v["exp_avg"].numel() > 16)
    _flip(ck, entry["exp_avg_sq"])
    before = ck.read_bytes()
    assert main(TRAIN[:-3] + ["--max-steps", "2", "--no-progress", "--checkpoint", str(ck), "--resume"]) == 2
    err = _err(capsys)
    assert f"checkpoint: {ck}: tensor 'optimizer_state.state.{key}.exp_avg_sq' does not match its checksum" in err
    assert ck.read_bytes() == before  # nothing trained, nothing written


def test_bfloat16_non_contiguous_and_empty_extra_tensors_are_covered(tmp_path):
    ck = tmp_path / "ck.pt"
    odd = {"bf16": torch.linspace(-3, 3, 40).to(torch.bfloat16), "t": torch.arange(60.0).reshape(6, 10).t(),
           "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "flags": torch.tensor([True, False])}
    _checkpoint(ck, extras=odd)
    back = load_checkpoint(ck)["extras"]
    assert all(torch.equal(back[k], v) for k, v in odd.items())
    assert "tensor_digest" not in load_checkpoint(ck)  # callers see what was saved
    _flip(ck, odd["bf16"])
    with pytest.raises(CheckpointError, match=r"^checkpoint: .*: tensor 'extras\.bf16' does not match its checksum"):
        load_checkpoint(ck)


def test_a_checkpoint_without_digest_loads_as_before(tmp_path):
    ck = tmp_path / "old.pt"
    model = _checkpoint(ck)
    payload = torch.load(ck, weights_only=True)
    assert payload["version"] == 1 and "tensor_digest" in payload
    del payload["tensor_digest"]  # as written by an older edgesnn (same format, same version)
    torch.save(payload, ck)
    name = next(iter(model.state_dict()))
    _flip(ck, model.state_dict()[name])  # an old file has no digest: damage stays as undetectable as before
    loaded = load_checkpoint(ck)
    assert set(loaded) == set(payload) and not torch.equal(loaded["model_state"][name], model.state_dict()[name])


def test_a_checkpoint_edited_and_saved_again_with_torch_save_loads(tmp_path):
    """Edited by hand (torch.load, change, torch.save): the zip is consistent, so it is no damage."""
    ck = tmp_path / "ck.pt"
    model = _checkpoint(ck)
    payload = torch.load(ck, weights_only=True)
    name = next(iter(model.state_dict()))
    payload["model_state"][name] = payload["model_state"][name] * 0.5
    torch.save(payload, ck)
    assert torch.equal(load_checkpoint(ck)["model_state"][name], model.state_dict()[name] * 0.5)


def _reference_crc(t: torch.Tensor, dtype_name: str, raw: bytes) -> int:
    return zlib.crc32(raw, zlib.crc32(f"{dtype_name}|{','.join(map(str, t.shape))}|".encode()))


def test_the_digest_is_crc32_of_dtype_shape_and_little_endian_values():
    from edgesnn.checkpoint_digest import tensor_crc32

    f32 = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    le = f32.numpy().astype("<f4").tobytes()
    assert tensor_crc32(f32) == _reference_crc(f32, "float32", le)
    # the same values in another layout, another storage offset or another storage: the same digest
    assert tensor_crc32(f32.t().contiguous().t()) == tensor_crc32(f32)
    assert tensor_crc32(torch.cat([torch.zeros(5), f32.reshape(-1)])[5:].reshape(4, 6)) == tensor_crc32(f32)
    nc = f32.t()
    assert not nc.is_contiguous()
    assert tensor_crc32(nc) == _reference_crc(nc, "float32", np.ascontiguousarray(f32.numpy().T).astype("<f4").tobytes())
    bf = f32.to(torch.bfloat16)  # NumPy has no bfloat16: its bits are the top half of the float32's
    top = (bf.float().numpy().view("<u4") >> 16).astype("<u2").tobytes()
    assert tensor_crc32(bf) == _reference_crc(bf, "bfloat16", top)
    assert tensor_crc32(bf.t()) == _reference_crc(bf.t(), "bfloat16",
                                                  (np.ascontiguousarray(bf.float().numpy().T).view("<u4") >> 16)
                                                  .astype("<u2").tobytes())
    for empty in (torch.zeros(0), torch.zeros(3, 0, dtype=torch.bfloat16), torch.empty(2, 3, device="meta")):
        name = str(empty.dtype).rpartition(".")[2]
        assert tensor_crc32(empty) == _reference_crc(empty, name, b"")
    assert tensor_crc32(torch.zeros(0)) != tensor_crc32(torch.zeros(0, 1))  # the shape counts
    assert tensor_crc32(torch.zeros(2)) != tensor_crc32(torch.zeros(2, dtype=torch.int32))  # the dtype counts
    changed = f32.clone()
    changed[1, 2] = 1e6
    assert tensor_crc32(changed) != tensor_crc32(f32)
    flags = torch.tensor([True, False, True])
    assert tensor_crc32(flags) == _reference_crc(flags, "bool", bytes([1, 0, 1]))
    assert tensor_crc32(torch.eye(2).to_sparse()) is None  # no plain data: not digested


def test_the_same_content_saved_twice_has_the_same_digest(tmp_path):
    _checkpoint(tmp_path / "a.pt", note="x")
    _checkpoint(tmp_path / "b.pt", note="x")
    a, b = (torch.load(tmp_path / n, weights_only=True)["tensor_digest"] for n in ("a.pt", "b.pt"))
    assert a == b and a["algorithm"] == "crc32-v1" and len(a["tensors"]) == len(build_model(
        "mlp", (16,), 4, 2, hidden=(8,)).state_dict())
