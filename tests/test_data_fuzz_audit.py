"""Image-folder loader findings of a differential fuzz audit (tiny real PNG files in tmp_path)."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image")

from edgesnn.training.data import load_dataset  # noqa: E402


def _classes(root: Path, write) -> None:
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(2):
            write(root / c / f"{i}.png")


def test_16bit_images_stay_in_unit_range_after_resize(tmp_path):
    """A sharp-edged 16-bit PNG upscaled to 32x32: PIL's bicubic resize of the float image overshot
    to -0.27..1.27 (8-bit images are clamped by their uint8 result); values must stay in [0, 1]."""
    a = np.array([[0, 65535, 0], [65535, 0, 65535]], np.uint16)
    _classes(tmp_path, lambda p: Image.fromarray(a).save(p))
    assert Image.open(tmp_path / "a" / "0.png").mode.startswith("I;16")
    d = load_dataset("folder", str(tmp_path), flat=False)
    x = np.concatenate([d.train.x.numpy(), d.test.x.numpy()])
    assert x.dtype == np.float32 and x.shape[1:] == (3, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # full range kept, only the overshoot clipped


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_oversized_image_is_one_line_naming_the_file(tmp_path):
    """A PNG claiming 20000x20000 pixels: PIL's DecompressionBombError (not an OSError) was a traceback."""
    _classes(tmp_path, lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(p))
    bomb = tmp_path / "b" / "huge.png"
    bomb.write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(ValueError) as info:
        load_dataset("folder", str(tmp_path), flat=False)
    msg = str(info.value)
    assert "\n" not in msg and str(bomb) in msg and "not a readable image" in msg
