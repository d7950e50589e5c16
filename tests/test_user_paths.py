"""Path flags expand a leading ``~`` (a shell leaves ``--flag=~/x`` and quoted paths alone)."""

from __future__ import annotations

import os

import pytest

from edgesnn.cli import build_parser, main


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return h


@pytest.mark.parametrize("command, argv, fields", [
    ("train", ["--checkpoint=~/ck.pt", "--json", "~/r.json", "--plan", "~/p.json", "--data-dir=~/data"],
     {"checkpoint": "ck.pt", "json": "r.json", "plan": "p.json", "data_path": "data"}),
    ("export", ["--checkpoint=~/ck.pt", "--out", "~/art/", "--params", "~/w.npz", "--format", "onnx"],
     {"checkpoint": "ck.pt", "out": "art/", "params": "w.npz"}),
    ("plan", ["--model", "mlp", "--json=~/plan.json", "--plot", "~/m.png", "--device", "~/dev.json"],
     {"json": "plan.json", "plot": "m.png", "device": "dev.json"}),
])
def test_path_flags_expand_the_home_folder(home, command, argv, fields):
    args = build_parser(command).parse_args([command, *argv])
    for field, rel in fields.items():
        assert getattr(args, field) == os.path.join(str(home), rel), field  # a trailing '/' is kept


def test_device_runner_path_flags_expand_the_home_folder(home):
    from edgesnn.export.runner import build_parser as runner_parser

    args = runner_parser().parse_args(["~/art", "--data=~/d.npz", "--out", "~/o", "--eval-data", "~/e.npz"])
    assert (args.artifacts, args.data, args.out, args.eval_data) == tuple(
        os.path.join(str(home), n) for n in ("art", "d.npz", "o", "e.npz"))


def test_train_writes_a_tilde_checkpoint_into_the_home_folder(home):
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint=~/ck.pt"]) == 0
    assert (home / "ck.pt").is_file()
    assert not os.path.lexists("~")  # no folder literally named '~' in the working directory
