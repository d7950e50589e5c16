"""Never a silently wrong result or a lost model: outputs, flags, data files and errors of the command lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from edgesnn.cli import main
from edgesnn.functional import surrogate as sg
from edgesnn.models import build_model
from test_export_common import needs_ort, ort_training_available, run_python

ROOT = Path(__file__).resolve().parents[1]
_RUNNER = ("import sys, runpy; sys.argv = ['edgesnn-device', *sys.argv[1:]]; "
           "runpy.run_module('edgesnn.export.runner', run_name='__main__')")


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _small_model(surrogate=None):
    torch.manual_seed(0)
    node = {"surrogate": surrogate} if surrogate is not None else None
    return build_model("mlp", (64,), 10, 2, neuron="lif", hidden=(16, 16), node=node)


# 1. training outputs ------------------------------------------------------------------------------


def test_train_refuses_to_overwrite_outputs_up_front(tmp_path, capsys):
    ck = tmp_path / "good.pt"
    ck.write_bytes(b"precious")
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(ck)]) == 2
    err = _err(capsys)
    assert str(ck) in err and "--resume" in err and "--force" in err
    assert ck.read_bytes() == b"precious"

    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path)]) == 2
    assert "is a directory" in _err(capsys)
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "new.pt"), "--json", str(tmp_path)]) == 2
    assert "--json" in _err(capsys)
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert main(["train", "--epochs", "1", "--no-progress", "--json", str(report)]) == 2
    err = _err(capsys)
    assert "--json" in err and str(report) in err and "--force" in err
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(tmp_path / "none.pt"), "--resume"]) == 2
    assert "no checkpoint at" in _err(capsys)
    assert not (tmp_path / "new.pt").exists() and not (tmp_path / "none.pt").exists()


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"keep")
    assert main(["train", "--epochs", "1", "--no-progress", "--data-dir", str(tmp_path)]) == 2
    assert "digits is built in" in _err(capsys)
    ck = tmp_path / "s.x"
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", str(ck), "--json", str(ck)]) == 2
    assert "also the --checkpoint path" in _err(capsys) and not ck.exists()
    for flags in (["--checkpoint", str(blocker / "x.pt")], ["--json", str(blocker / "r.json")]):
        assert main(["train", "--epochs", "1", "--no-progress", *flags]) == 2
        err = _err(capsys)
        assert flags[0] in err and "is a file" in err
    assert blocker.read_bytes() == b"keep"
    if Path("/proc/self").is_dir():  # a folder no file can be created in (even by root): refused before training
        assert main(["train", "--epochs", "1", "--no-progress", "--json", "/proc/r.json"]) == 2
        out, err = capsys.readouterr()
        assert "epoch 1/1" not in out and "--json: cannot write /proc/r.json: /proc is not writable" in err


def test_plan_refuses_to_overwrite_and_validates_sizes(tmp_path, capsys):
    base = ["plan", "--model", "mlp", "--input", "64", "-T", "4", "--device", "raspberry-pi-4-4gb"]
    keep = tmp_path / "keep.ckpt"
    keep.write_bytes(b"precious")
    for flag in ("--json", "--plot"):
        assert main([*base, flag, str(keep)]) == 2
        err = _err(capsys)
        assert flag in err and "--force" in err
    assert main([*base, "--memopt", "--json", str(keep)]) == 2
    assert "--force" in _err(capsys)
    assert keep.read_bytes() == b"precious"
    assert main([*base, "--json", str(keep), "--force"]) == 0
    capsys.readouterr()
    assert json.loads(keep.read_text())["format"] == "edgesnn-plan"
    for flags, name in ((["--hidden", "0"], "--hidden"), (["--hidden=-5,10"], "--hidden"), (["--max-batch", "0"], "--max-batch"),
                        (["--groups", "1"], "--groups"), (["--memopt", "--plot", str(tmp_path / "p.png")], "--plot"),
                        (["--channels", "8"], "--channels"), (["--memopt", "--neurons", "revlif"], "--neurons"),
                        (["--classes", "1"], "--classes"), (["--backend", "fpga"], "--backend"),
                        (["--batch", "1"], "--batch")):
        assert main([*base, *flags]) == 2
        assert _err(capsys).startswith(f"edgesnn plan: error: {name}:")
    conv = ["plan", "--model", "convnet", "--input", "1,8,8", "-T", "4", "--device", "raspberry-pi-4-4gb"]
    assert main([*conv, "--hidden", "32"]) == 2
    assert _err(capsys).startswith("edgesnn plan: error: --hidden:")
    memopt_plan = tmp_path / "memopt.json"
    assert main([*base, "--memopt", "--json", str(memopt_plan)]) == 0
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--no-progress", "--plan", str(memopt_plan)]) == 2
    assert "--memopt" in _err(capsys)


def test_warmup_checks_its_flags_before_compiling(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["warmup", "--cuda"]) == 2
    assert "--cuda: no CUDA device" in _err(capsys)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert main(["warmup", "--cache-dir", str(blocker)]) == 2
    assert "--cache-dir" in _err(capsys)
    assert main(["warmup", "--threads", "0"]) == 2
    assert _err(capsys).startswith("edgesnn warmup: error: --threads:")


def test_unreadable_npz_files_are_one_line(tmp_path):
    from edgesnn.export.run_support import read_npz

    bad = tmp_path / "pk.npz"
    bad.write_bytes(b"PK\x03\x04junk")
    js = tmp_path / "notes.json"
    js.write_text('{"a": 1}')
    single = tmp_path / "single.npz"
    with open(single, "wb") as fh:
        np.save(fh, np.zeros(3))
    for path, words in ((bad, "not a readable .npz"), (js, "not an .npz archive"), (single, "single .npy array")):
        with pytest.raises(ValueError, match=f"^--params: .*{words}"):
            read_npz(path, "--params")
    assert read_npz(_npz(tmp_path / "ok.npz", a=np.ones(2)), "--params")["a"].tolist() == [1.0, 1.0]


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_force_overwrites_resume_names_changed_fields_and_cold_cache_notice(tmp_path, capsys, monkeypatch):
    from edgesnn.kernels import config

    cold = tmp_path / "numba-cache"
    cold.mkdir()
    monkeypatch.setattr(config, "_CACHE_DIR", str(cold))  # what the notice looks at (numba keeps its own folder)
    ck, report = tmp_path / "good.pt", tmp_path / "r.json"
    ck.write_bytes(b"old")
    report.write_text("{}")
    base = ["train", "--epochs", "1", "--no-progress"]
    assert main([*base, "--checkpoint", str(ck), "--json", str(report), "--force"]) == 0
    assert load_checkpoint(ck)["epoch"] == 1 and json.loads(report.read_text())["history"]
    err = capsys.readouterr().err
    assert f"compiling Numba kernels once (~5-40 s; cached in {cold}" in err and "edgesnn warmup" in err

    assert main(["train", "--epochs", "2", "--no-progress", "--checkpoint", str(ck), "--resume", "--lr", "0.002"]) == 2
    err = _err(capsys)
    assert "lr (stored 0.001, given 0.002)" in err and "{" not in err  # the field, not the whole stored config
    assert load_checkpoint(ck)["epoch"] == 1


def test_compile_notice_only_when_the_cache_is_cold(tmp_path, monkeypatch):
    from edgesnn.kernels import config
    from edgesnn.kernels.cli import _own_cache, compile_notice

    monkeypatch.setattr(config, "_CACHE_DIR", str(tmp_path))
    assert str(tmp_path) in compile_notice("auto")
    assert compile_notice("torch") is None
    # another checkout's or install's kernels (Numba's sub-folder per source path) are not this one's
    (tmp_path / "kernels_x").mkdir()
    (tmp_path / "kernels_x" / "numba_cpu._lif_fwd-110.py311.nbi").write_bytes(b"")
    assert str(tmp_path) in compile_notice("auto")
    own = _own_cache(tmp_path)
    assert own.parent == tmp_path and own.name.startswith("kernels_") and own.name != "kernels_x"
    own.mkdir()
    (own / "numba_cpu._lif_fwd-110.py311.nbi").write_bytes(b"")
    assert compile_notice("auto") is None


def test_bad_training_flags_are_one_line(capsys):
    for argv, flag in ((["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--batch-size", "0"], "--batch-size"),
                       (["--threads", "0"], "--threads"), (["--timesteps", "0"], "--timesteps"), (["--seed", "-1"], "--seed"),
                       (["--neuron", "izhikevich"], "--neuron"), (["--neuron", "revlif:1"], "--neuron")):
        assert main(["train", "--epochs", "1", "--no-progress", *argv]) == 2
        assert _err(capsys).startswith(f"edgesnn train: error: {flag}: ")
    # --force beside --resume was ignored (the run resumed); edgesnn-device refuses the pair as well
    assert main(["train", "--epochs", "1", "--no-progress", "--checkpoint", "x.ckpt", "--resume", "--force"]) == 2
    assert _err(capsys).startswith("edgesnn train: error: --resume and --force exclude each other")


# 4. surrogate instances in checkpoints -----------------------------------------------------------------


def test_surrogate_instances_round_trip(tmp_path, monkeypatch):
    from edgesnn.training import model_from_checkpoint

    for surrogate in (sg.Sigmoid(alpha=2.0), sg.ATan(alpha=3.0)):
        model = _small_model(surrogate)
        path = save_checkpoint(tmp_path / "s.pt", model.config, model.state_dict())
        assert load_checkpoint(path)["model_config"]["node"]["surrogate"] == surrogate
        rebuilt = model_from_checkpoint(str(path))
        x = torch.rand(3, 64)
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))

    # generic: any Surrogate subclass of edgesnn.functional.surrogate, looked up by class name
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Futuristic(sg.Sigmoid):
        alpha: float = 5.0

    monkeypatch.setattr(sg, "Futuristic", Futuristic, raising=False)
    model = _small_model(Futuristic(alpha=1.5))
    path = save_checkpoint(tmp_path / "f.pt", model.config, model.state_dict())
    assert load_checkpoint(path)["model_config"]["node"]["surrogate"] == Futuristic(alpha=1.5)
    monkeypatch.delattr(sg, "Futuristic")
    with pytest.raises(CheckpointError, match="unknown surrogate class 'Futuristic'"):
        load_checkpoint(path)


# 2, 3. export and device-runner outputs and flags ---------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A checkpoint whose model has a Surrogate instance, its onnx-training export and a digits .npz."""
    from sklearn.datasets import load_digits

    if not ort_training_available():
        pytest.skip("onnxruntime.training not importable")
    tmp = tmp_path_factory.mktemp("safety")
    model = _small_model(sg.Sigmoid(alpha=2.0))
    ck = save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=1)
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx-training", "--out", str(tmp / "art"),
                 "--batch-size", "16"]) == 0
    d = load_digits()
    np.savez(tmp / "data.npz", x=(d.data[:64] / 16.0).astype(np.float32), y=d.target[:64].astype(np.int64))
    return tmp


@needs_ort
def test_export_refuses_existing_out_and_force_replaces_it_wholly(artifacts, tmp_path, capsys, monkeypatch):
    ck = str(artifacts / "model.ckpt")
    out = tmp_path / "art"
    (out / "finetuned").mkdir(parents=True)
    (out / "finetuned" / "checkpoint").write_bytes(b"stale")
    argv = ["export", "--checkpoint", ck, "--format", "onnx-training", "--out", str(out), "--batch-size", "16"]
    assert main(argv) == 2
    err = _err(capsys)
    assert str(out) in err and "--force" in err
    assert (out / "finetuned" / "checkpoint").read_bytes() == b"stale"

    from edgesnn.export import onnx_training

    def boom(*a, **k):
        raise onnx_training.ExportError("export failed half way")

    monkeypatch.setattr(onnx_training, "export_onnx_training", boom)
    assert main([*argv, "--force"]) == 2
    assert (out / "finetuned" / "checkpoint").read_bytes() == b"stale"  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temp folder left
    monkeypatch.undo()
    capsys.readouterr()

    assert main([*argv, "--force"]) == 0
    assert not (out / "finetuned").exists()  # nothing stale survives
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_config"]["node"]["surrogate"] == {"__surrogate__": "Sigmoid", "alpha": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@needs_ort
def test_export_refuses_out_that_holds_the_input_and_existing_files(artifacts, tmp_path, capsys):
    ck = artifacts / "model.ckpt"
    link = tmp_path / "link.pt"  # a single-file format: what counts is the file written (here: the input)
    link.symlink_to(ck)
    for fmt, out in (("onnx-training", artifacts), ("torchscript", link)):
        assert main(["export", "--checkpoint", str(ck), "--format", fmt, "--out", str(out), "--force"]) == 2
        assert "is or contains the input checkpoint" in _err(capsys)
    assert main(["export", "--checkpoint", str(ck), "--format", "checkpoint", "--params", str(tmp_path / "p.npz"),
                 "--out", str(ck), "--force"]) == 2
    assert "is or contains the input checkpoint" in _err(capsys)
    assert ck.is_file()
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"keep")
    assert main(["export", "--checkpoint", str(ck), "--format", "onnx", "--out", str(existing)]) == 2
    assert "--force" in _err(capsys) and existing.read_bytes() == b"keep"
    new = tmp_path / "new.ckpt"
    new.write_bytes(b"keep")
    assert main(["export", "--checkpoint", str(ck), "--format", "checkpoint", "--params", str(tmp_path / "p.npz"),
                 "--out", str(new)]) == 2
    assert "--force" in _err(capsys) and new.read_bytes() == b"keep"


@needs_ort
def test_export_flags_are_validated(artifacts, tmp_path, capsys):
    ck = str(artifacts / "model.ckpt")
    # 1e-50 is 0 in the float32 graphs (training would silently do nothing); 1e39 is inf there
    for flags, name in ((["--lr", "-1"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "1e-50"], "--lr"),
                        (["--momentum", "1e39"], "--momentum"), (["--momentum", "1.5"], "--momentum"),
                        (["--batch-size", "0"], "--batch-size")):
        assert main(["export", "--checkpoint", ck, "--format", "onnx-training", "--out", str(tmp_path / "a"), *flags]) == 2
        assert _err(capsys).startswith(f"edgesnn export: error: {name}: expected")
    assert not (tmp_path / "a").exists()


@needs_ort
def test_runner_validates_flags_and_labels(artifacts, tmp_path, capsys):
    from edgesnn.export.runner import main as device

    art, data = str(artifacts / "art"), str(artifacts / "data.npz")
    for flags, name in ((["--lr", "-0.05"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "1e-50"], "--lr"),
                        (["--threads", "0"], "--threads"),
                        (["--epochs", "0"], "--epochs"), (["--seed", "-1"], "--seed"),
                        (["--resume", "--force"], "--resume and --force")):
        assert device([art, "--data", data, "--out", str(tmp_path / "ft"), *flags]) == 2
        assert _err(capsys).startswith(f"edgesnn-device: error: {name}")
    with np.load(data) as npz:
        x, y = npz["x"], npz["y"]
    np.savez(tmp_path / "float.npz", x=x, y=y.astype(np.float32) + 0.5)
    assert device([art, "--data", str(tmp_path / "float.npz"), "--out", str(tmp_path / "ft")]) == 2
    err = _err(capsys)
    assert "float.npz" in err and "'y'" in err and "non-integer" in err

    from edgesnn.export.artifacts import read_manifest
    from edgesnn.export.runner import load_dataset

    np.savez(tmp_path / "whole.npz", x=x, y=y.astype(np.float64))
    np.testing.assert_array_equal(load_dataset(tmp_path / "whole.npz", read_manifest(art))[1], y)
    assert not (tmp_path / "ft").exists()


@needs_ort
def test_runner_outputs_need_resume_or_force(artifacts, tmp_path, capsys):
    from edgesnn.export.runner import main as device

    art, data, out = str(artifacts / "art"), str(artifacts / "data.npz"), tmp_path / "ft"
    out.mkdir()
    (out / "checkpoint").write_bytes(b"from another export")
    assert device([art, "--data", data, "--out", str(out)]) == 2
    err = _err(capsys)
    assert str(out) in err and "--resume" in err and "--force" in err
    assert device([art, "--data", data, "--out", str(out), "--resume"]) == 2  # stale checkpoint: named, one line
    assert "--resume" in _err(capsys)
    proc = run_python(_RUNNER, art, "--data", data, "--out", str(out), "--force", "--threads", "1")  # torch-free process
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "inference.onnx", "metrics.json", "params.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    proc = run_python(_RUNNER, art, "--data", data, "--out", str(out), "--resume", "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert device([art, "--data", data, "--out", art, "--force"]) == 2
    assert "is or contains the input artifacts" in _err(capsys)


# 7, 8. entry points ---------------------------------------------------------------------------------------


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_runner_module_runs_from_the_repository_root():
    # as with a regular (non-editable) install: the checkout's ./edgesnn shadows the installed package
    code = ("import sys, runpy\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in getattr(f, '__name__', type(f).__name__)]\n"
            "sys.path.insert(0, '')\n"
            "sys.argv = ['edgesnn-device', '--help']\n"
            "runpy.run_module('edgesnn.export.runner', run_name='__main__', alter_sys=True)\n")
    proc = _run(code, ROOT)
    assert proc.returncode == 0 and "edgesnn-device" in proc.stdout, proc.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "edgesnn", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "export" in proc.stdout, proc.stderr[-2000:]


def test_top_level_help_needs_no_torch(tmp_path):
    code = ("import sys\n"
            "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
            "from edgesnn.cli import main\n"
            "sys.exit(main(['--help']))\n")
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("train", "export", "warmup", "plan"):
        assert name in proc.stdout
    proc = _run(code.replace("['--help']", "['train', '--help']"), tmp_path)
    assert proc.returncode == 2 and "edgesnn train: error: this command needs torch" in proc.stderr


# 9. only user errors become one line ----------------------------------------------------------------------


def test_bugs_keep_their_traceback(monkeypatch, capsys):
    from edgesnn.kernels import cli as kcli

    def bug(*a, **k):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(kcli, "warmup", bug)
    with pytest.raises(TypeError):
        main(["warmup"])
    monkeypatch.setattr(kcli, "warmup", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("internal")))
    with pytest.raises(RuntimeError):
        main(["warmup"])
    monkeypatch.setattr(kcli, "warmup", lambda *a, **k: (_ for _ in ()).throw(FileExistsError("out: x exists")))
    assert main(["warmup"]) == 2
    assert _err(capsys) == "edgesnn warmup: error: out: x exists"


def test_an_error_line_is_one_write(monkeypatch):
    """Under torchrun with PYTHONUNBUFFERED=1, print's two writes (text, newline) let two ranks'
    error lines run together on one line: the CLIs write each line, newline included, at once."""
    import sys

    from edgesnn.export.runner import main as device

    writes = []

    class Stderr:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    assert main(["train", "--epochs", "1", "--no-progress", "--lr", "-1"]) == 2
    assert device(["no-such-artifacts", "--data", "no.npz"]) == 2
    assert len(writes) == 2, writes
    assert writes[0].startswith("edgesnn train: error: --lr") and writes[1].startswith("edgesnn-device: error: ")
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in writes)


def test_neuron_spec_is_stored_as_written_in_lower_case(tmp_path):
    """``--neuron LIF`` trained and was stored as 'LIF', so ``--resume --neuron lif`` was refused as
    other settings; specs are stored lower-case (case was never significant)."""
    ck = tmp_path / "ck.pt"
    base = ["train", "-T", "2", "--max-steps", "1", "--no-progress", "--checkpoint", str(ck)]
    assert main(base + ["--neuron", "LIF, RevLIF", "--epochs", "1"]) == 0
    assert load_checkpoint(ck)["train_config"]["neuron"] == ["lif", "revlif"]
    assert main(base + ["--neuron", "lif,revlif", "--epochs", "2", "--resume"]) == 0
