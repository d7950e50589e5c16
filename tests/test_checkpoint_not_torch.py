"""A file given as a checkpoint that torch cannot read is refused in one line naming it."""

import zipfile

import pytest

from edgesnn.cli import main

RESUME = ["train", "--epochs", "1", "--no-progress", "--resume", "--checkpoint"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.mark.parametrize("name,content", [("notes.json", b'{"a": 1}'), ("empty.ckpt", b"")])
def test_a_file_that_is_not_a_zip_archive_is_not_a_torch_file(tmp_path, capsys, name, content):
    """torch's own errors were added to the line as "(KeyError: 101)" and "(EOFError: EOFError)"."""
    path = tmp_path / name
    path.write_bytes(content)
    assert main(RESUME + [str(path)]) == 2
    assert _err(capsys) == (f"edgesnn train: error: checkpoint: {path} is not a torch file (not the zip archive "
                            "torch.save writes)")
    assert path.read_bytes() == content


def test_a_zip_archive_that_is_not_torchs_keeps_torchs_reason(tmp_path, capsys):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "not torch")
    assert main(RESUME + [str(path)]) == 2
    assert "is corrupt or not a torch file" in _err(capsys)
