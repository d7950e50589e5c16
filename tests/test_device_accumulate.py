"""Gradient accumulation on the device: ``grad.onnx`` + ``apply.onnx`` (``edgesnn-device --accumulate N``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _step_compare import small_runner_case
from test_export_step import _model
from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime

B = 8


def _sessions(art, parts):
    from edgesnn.export.accumulate_session import AccumulatingSession
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    manifest = validate_artifact_dir(art)
    with np.load(art / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    ort = import_plain_ort()
    acc = AccumulatingSession(ort, art, manifest, start, threads=1, lean_memory=True, parts=parts)
    plain = StepSession(ort, art, manifest, start, threads=1, lean_memory=True)
    return manifest, start, acc, plain


def _data(model, n, seed=1):
    g = np.random.default_rng(seed)
    return (g.random((n, *model.in_shape)) * 2).astype(np.float32), g.integers(0, 4, n)


CASES = [("mlp", "revlif", 8, "adamw"), ("convnet", "lif", 5, "sgd"), ("convnet", "revlif", 6, "sgd")]


@pytest.mark.parametrize("name,neuron,T,optimizer", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_accumulated_steps_are_the_whole_batch_steps(tmp_path, name, neuron, T, optimizer):
    """Two steps of 4 parts (and one of 3: an epoch's short last step) on the device match the eager
    step on the whole 32- (24-) sample batch: the program built at that batch, the same update."""
    from edgesnn.export.onnx_step import build_step_program, export_onnx_step, reference_step

    model = _model(name, neuron, T)
    lr = 0.05
    export_onnx_step(model, tmp_path / "art", B, optimizer, lr, momentum=0.9)
    manifest, start, acc, _ = _sessions(tmp_path / "art", parts=4)
    acc.set_lr(lr)
    params = {n: start[n] for n in manifest.trainable + manifest.frozen}
    state = {n: start[n] for n in manifest.optimizer_state}
    for k, parts in enumerate((4, 4, 3)):
        x, y = _data(model, parts * B, seed=k)
        prog = build_step_program(model, parts * B, optimizer, momentum=0.9)
        new_p, new_s, loss, correct, err = reference_step(prog, x, y.astype(np.int64), lr, params, state)
        got_loss, got_correct, got_err = acc.step(x, y)
        assert abs(got_loss - loss) < 1e-5 and got_correct == correct and got_err == 0.0 == err, (k, got_loss, loss)
        got = acc.values()
        # AdamW divides by sqrt(v): a tiny gradient's rounding reaches its update at lr scale (5.1e-6 seen on torch 2.15)
        tol = 2e-5 if optimizer == "adamw" else 5e-6
        for n in manifest.trainable:
            np.testing.assert_allclose(got[n], new_p[n], atol=tol, rtol=0, err_msg=f"step {k}: {n}")
        for n in manifest.optimizer_state:
            np.testing.assert_allclose(got[n], new_s[n], atol=tol, rtol=0, err_msg=f"step {k}: {n}")
        moved = max(float(np.abs(new_p[n] - params[n]).max()) for n in manifest.trainable)
        assert moved > 1e-3, "the step moved nothing: the comparison would be vacuous"
        params.update(new_p)
        state = new_s


def test_one_part_is_the_step_graph_bit_for_bit(tmp_path):
    """A step of one part runs grad.onnx then apply.onnx: the same operations as step.onnx, bit for bit."""
    from edgesnn.export.onnx_step import export_onnx_step

    model = _model("convnet", "revlif", 4)
    export_onnx_step(model, tmp_path / "art", B, "adamw", 0.01)
    _, _, acc, plain = _sessions(tmp_path / "art", parts=3)
    for s in (acc, plain):
        s.set_lr(0.01)
    for k in range(3):
        x, y = _data(model, B, seed=k)
        assert acc.step(x, y) == plain.step(x, y)
    a, p = acc.values(), plain.values()
    assert a.keys() == p.keys() and all(np.array_equal(a[n], p[n]) for n in a)


def test_session_refuses_batches_it_cannot_cut(tmp_path):
    from edgesnn.export.onnx_step import export_onnx_step

    model = _model("mlp", "lif", 2)
    export_onnx_step(model, tmp_path / "art", B, "sgd", 0.01)
    _, _, acc, _ = _sessions(tmp_path / "art", parts=2)
    for rows in (0, 12, 24):
        x, y = _data(model, rows)
        with pytest.raises(ValueError, match=r"^x: expected a batch of shape \(k x 8, 16\), k <= 2"):
            acc.step(x, y)
    x, y = _data(model, 16)
    with pytest.raises(ValueError, match="labels must lie in 0..3"):
        acc.step(x, y + 4)


# ----------------------------------------------------------------------------- the runner


N = 45  # 6 batches of 8 (3 samples repeated)


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return small_runner_case(tmp_path_factory.mktemp("acc"), "revlif", N)


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """The runner runs in pytest's process, where torch is loaded: its torch-free check is off here
    (test_export_step.py tests it in a fresh interpreter)."""
    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])


def _run(art, out, epochs, **kw):
    from edgesnn.export.runner import finetune

    return finetune(art / "art", art / "data.npz", epochs, out_dir=out, threads=1, log=kw.pop("log", lambda s: None),
                    holdout=0.0, **kw)


def _state(path):
    with np.load(path / "state.npz") as npz:
        return {k: npz[k] for k in npz.files if not k.startswith("runner.")}


@pytest.mark.parametrize("n,steps", [(2, 3), (4, 2), (6, 1), (7, 1)])
def test_runner_groups_the_epochs_batches_into_steps(art, tmp_path, n, steps):
    lines = []
    m = _run(art, tmp_path / "o", 1, accumulate=n, log=lines.append)
    assert (m["steps"], m["steps_per_epoch"], m["accumulate"], m["samples_per_step"], m["padded_per_epoch"]) \
        == (steps, steps, n, min(n, 6) * B, 3)
    assert f"({steps} steps of up to {n} batches of {B}, 3 samples repeated" in lines[0]


def test_runner_matches_the_same_steps_taken_in_torch(art, tmp_path):
    """Two epochs with --accumulate 2 (3 steps of 16 samples each) end where the same SGD steps,
    taken by torch on the same samples in the same order, end."""
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.run_state import epoch_batches
    from edgesnn.models import build_model

    _run(art, tmp_path / "o", 2, accumulate=2)
    got = _state(tmp_path / "o")
    torch.manual_seed(0)  # the fixture's model, as the exporter copies it (its parameter names)
    ref = export_copy(build_model("mlp", (16,), 4, 2, neuron="revlif", hidden=(8,)).eval())
    with np.load(art / "art" / "init.npz") as npz:
        init = {k: npz[k] for k in npz.files}
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    with np.load(art / "data.npz") as npz:
        x, y = torch.from_numpy(npz["x"]), torch.from_numpy(npz["y"]).long()
    for epoch in range(2):
        batches, _ = epoch_batches(N, B, 0, epoch)
        for i in range(0, len(batches), 2):
            idx = torch.from_numpy(batches[i:i + 2].reshape(-1))
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    assert set(dict(ref.named_parameters())) <= set(got)
    for n, p in ref.named_parameters():
        np.testing.assert_allclose(got[n], p.detach().numpy(), atol=2e-5, err_msg=n)
    assert max(float(np.abs(got[n] - init[n]).max()) for n in init if n in got) > 1e-3


def test_resume_continues_and_refuses_another_accumulate(art, tmp_path, capsys):
    from edgesnn.export.runner import main

    _run(art, tmp_path / "whole", 2, accumulate=3)
    _run(art, tmp_path / "cut", 1, accumulate=3)
    _run(art, tmp_path / "cut", 1, accumulate=3, resume=True)
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    before = (tmp_path / "cut" / "state.npz").read_bytes()
    for flags, words in ((["--accumulate", "2"], "--accumulate 3 (now 2)"), ([], "--accumulate 3 (now 1)")):
        code = main([str(art / "art"), "--data", str(art / "data.npz"), "--out", str(tmp_path / "cut"), "--resume",
                     "--holdout", "0", "--threads", "1", *flags])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "cut" / "state.npz").read_bytes() == before
    # a run without the flag records nothing new: resuming it with --accumulate 2 is refused the same way
    _run(art, tmp_path / "plain", 1)
    with pytest.raises(Exception, match=r"--accumulate 1 \(now 2\)"):
        _run(art, tmp_path / "plain", 1, accumulate=2, resume=True)


@pytest.mark.parametrize("value", [0, -1, True, 2.0])
def test_bad_accumulate_is_one_line(art, tmp_path, value):
    from edgesnn.errors import UsageError

    with pytest.raises(UsageError, match=r"^--accumulate: expected an integer >= 1"):
        _run(art, tmp_path / "o", 1, accumulate=value)
    assert not (tmp_path / "o").exists()


def test_older_exports_run_without_accumulate_and_refuse_it(art, tmp_path):
    """An export from before grad.onnx (its manifest lists no accumulation graphs) still validates
    and runs; --accumulate on it names the missing file. A new export with grad.onnx deleted is corrupt."""
    import shutil

    from edgesnn.export.artifacts import ArtifactError, MANIFEST, StepManifest, validate_artifact_dir

    old = tmp_path / "old"
    shutil.copytree(art / "art", old)
    m = validate_artifact_dir(old)
    assert {"grad.onnx", "apply.onnx"} <= set(m.files)
    data = json.loads((old / MANIFEST).read_text())
    for name in ("grad.onnx", "apply.onnx"):
        del data["files"][name]
        (old / name).unlink()
    (old / MANIFEST).write_text(StepManifest.from_dict(data, "x").to_json() + "\n")
    from edgesnn.export.runner import finetune

    kw = dict(out_dir=tmp_path / "o", threads=1, log=lambda s: None, holdout=0.0)
    assert finetune(old, art / "data.npz", 1, **kw)["steps"] == 6
    with pytest.raises(ArtifactError, match="exported before gradient accumulation .*has no grad.onnx.*export it again"):
        finetune(old, art / "data.npz", 1, accumulate=2, force=True, **kw)
    # a board that never accumulates may leave the two graphs out; --accumulate then names the one missing
    partial = tmp_path / "partial"
    shutil.copytree(art / "art", partial)
    (partial / "apply.onnx").unlink()
    assert finetune(partial, art / "data.npz", 1, **{**kw, "out_dir": tmp_path / "p"})["steps"] == 6
    with pytest.raises(ArtifactError, match="lacks apply.onnx, which its export wrote"):
        finetune(partial, art / "data.npz", 1, accumulate=2, **{**kw, "out_dir": tmp_path / "p2"})
    (partial / "grad.onnx").write_bytes(b"edited")  # present but not what the export wrote: refused as ever
    with pytest.raises(ArtifactError, match="grad.onnx: corrupt artifact file"):
        validate_artifact_dir(partial)


def test_accumulate_needs_the_step_format(tmp_path):
    from edgesnn.errors import UsageError
    from edgesnn.export.accumulate_session import check_accumulate_artifacts
    from edgesnn.export.artifacts import Manifest

    legacy = Manifest.__new__(Manifest)  # an onnx-training manifest: no accumulation graphs exist for it
    with pytest.raises(UsageError, match=r"^--accumulate: needs onnx-step artifacts .*legacy onnx-training"):
        check_accumulate_artifacts(legacy, tmp_path)


def test_steps_gather_one_batch_at_a_time_and_epoch_loss_is_per_batch(tmp_path):
    """run_epochs hands an accumulating step its batches one at a time (no step holds N batches
    of input), and weights each step's loss by its batches: the epoch loss is the batches' mean."""
    from edgesnn.export.run_loop import run_epochs
    from edgesnn.export.run_state import OutputDir

    x = np.arange(45, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(45) % 4
    seen, batch_losses = [], []

    def step(parts, yb, number):
        assert yb is None and not isinstance(parts, (list, tuple, np.ndarray))
        losses = []
        for xb, ybk in parts:
            assert xb.shape == (B, 3) and ybk.shape == (B,)
            seen.append(xb[:, 0].copy())
            losses.append(float(xb[:, 0].mean()))
        batch_losses.extend(losses)
        return float(np.mean(losses))

    m = run_epochs(x, y, B, 1, 0, 0, 0, False, OutputDir(tmp_path / "o", keep_others=False), lambda s: None, step,
                   lambda end: ({"loss": end.losses[-1]}, lambda d: None), accumulate=4)
    assert [len(s) for s in seen] == [B] * 6 and sorted(np.concatenate(seen)[:45]) == list(range(45))
    assert abs(m["loss"] - float(np.mean(batch_losses))) < 1e-9
    assert abs(float(np.mean(batch_losses[:4]) + np.mean(batch_losses[4:])) / 2 - m["loss"]) > 1e-3  # not per step
