"""The onnx-step device runner's runs: every sample trained every epoch (the last batch filled from
the epoch's own order), independent orders per seed and epoch, settings recorded and checked on
``--resume``, the output written after every epoch (an interrupted run resumes to the same weights
as an uninterrupted one; Ctrl-C / SIGTERM exit 130 / 143 with one line and leave no temp folder),
and one-line data errors naming the flag, the file and the array."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _step_compare import small_runner_case
from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime

B = 8
N = 45  # 5 full batches + 5 samples: 3 repeated to fill the sixth


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """A small LIF MLP exported as onnx-step (batch 8, SGD momentum) and a 45-sample data file."""
    return small_runner_case(tmp_path_factory.mktemp("runs"), "lif", N)


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """These tests run the runner in pytest's process, where torch is loaded: its torch-free check
    (tested in a fresh interpreter by test_export_step.py) is switched off here."""
    monkeypatch.setattr("edgesnn.export.step_runner.training_modules_imported", lambda: [])


def _run(art, out, epochs, *flags, **kw):
    from edgesnn.export.runner import finetune

    return finetune(art / "art", art / "data.npz", epochs, out_dir=out, threads=1, log=kw.pop("log", lambda s: None),
                    holdout=kw.pop("holdout", 0.0), **kw)


def _state(path):
    with np.load(path / "state.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _same_state(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def _no_temp_left(folder):
    left = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not left, left


def test_epoch_batches_fill_the_last_batch_and_seeds_do_not_share_orders():
    from edgesnn.export.run_state import epoch_batches

    idx, padded = epoch_batches(N, B, seed=0, epoch=0)
    assert idx.shape == (6, B) and padded == 3
    flat = idx.ravel()
    assert sorted(flat[:N]) == list(range(N))  # every sample once ...
    assert list(flat[N:]) == list(flat[:3])  # ... and the first three of the same order again
    assert epoch_batches(48, B, 0, 0)[1] == 0
    # default_rng(seed + epoch) made seed 0 / epoch 1 and seed 1 / epoch 0 the same order
    assert not np.array_equal(epoch_batches(N, B, 0, 1)[0], epoch_batches(N, B, 1, 0)[0])
    assert np.array_equal(epoch_batches(N, B, 2, 3)[0], epoch_batches(N, B, 2, 3)[0])


def test_runner_trains_every_sample_and_reports_it(art, tmp_path):
    """The runner's weights equal a hand-written loop over the padded batches (so the 5 samples of
    the last partial batch were trained on), and metrics.json says how many were repeated."""
    from edgesnn.export.artifacts import STEP_INIT, validate_artifact_dir
    from edgesnn.export.run_state import epoch_batches
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    m = _run(art, tmp_path / "ft", 2)
    assert (m["train_samples"], m["samples_per_epoch"], m["steps_per_epoch"], m["padded_per_epoch"]) == (N, N, 6, 3)
    assert m["steps"] == 12 and m["complete"] and m["epochs_done"] == 2
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["padded_per_epoch"] == 3

    manifest = validate_artifact_dir(art / "art")
    with np.load(art / "art" / STEP_INIT) as npz:
        start = {k: np.array(npz[k]) for k in npz.files}
    sess = StepSession(import_plain_ort(), art / "art", manifest, start, 1, True)
    sess.set_lr(0.05)
    with np.load(art / "data.npz") as npz:
        x, y = npz["x"], npz["y"]
    for epoch in range(2):
        for idx in epoch_batches(N, B, 0, epoch)[0]:
            sess.step(x[idx], y[idx])
    got = _state(tmp_path / "ft")
    for k, v in sess.values().items():
        assert np.array_equal(got[k], v), k


def test_interrupted_run_resumes_to_the_uninterrupted_weights(art, tmp_path):
    """Ctrl-C after epoch 1 of 3 (raised from the log callback): --out holds epoch 1, the error says
    so; --resume --epochs 2 then gives exactly the 3-epoch run's state."""
    from edgesnn.export.run_state import RunInterrupted

    _run(art, tmp_path / "full", 3)

    def stop(line):
        raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as info:
        _run(art, tmp_path / "cut", 3, log=stop)
    assert info.value.exit_code == 130
    assert "holds the state after epoch 1" in info.value.message and "--resume --epochs 2" in info.value.message
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["epochs_done"] == 1 and not m["complete"] and m["accuracy_after"] is None
    assert int(_state(tmp_path / "cut")["runner.epochs"]) == 1
    _no_temp_left(tmp_path)
    m = _run(art, tmp_path / "cut", 2, resume=True)
    assert m["total_epochs"] == 3 and m["total_steps"] == 18
    _same_state(_state(tmp_path / "full"), _state(tmp_path / "cut"))


def test_a_diverging_run_names_its_step_and_keeps_the_last_good_epoch(art, tmp_path):
    """The step checks count steps over the whole run, resumed ones included: an inf loss stops the
    run at the step that made it; an update that overflows the weights is caught at the epoch's end
    (step 12 of 6 per epoch), before anything is saved, so --out keeps epoch 1 and a resumed run
    stops at the same step."""
    from edgesnn.export.runner import StepCheckError

    with pytest.raises(StepCheckError, match=r"^step 2: the loss is inf; lower --lr$"):
        _run(art, tmp_path / "inf", 2, lr=3e38)
    out = tmp_path / "over"
    for resume in (False, True):
        with pytest.raises(StepCheckError, match=r"^step 12: the update made \[.+\] non-finite; lower --lr$"):
            _run(art, out, 2 if not resume else 1, lr=1e20, resume=resume)
        assert (int(_state(out)["runner.epochs"]), int(_state(out)["runner.steps"])) == (1, 6)
    _no_temp_left(tmp_path)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_stops_with_one_line_and_resume_matches(art, tmp_path, sig, code, word):
    """The CLI in its own process, signalled once its first epoch is on disk."""
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "edgesnn.export.runner", str(art / "art"), "--data", str(art / "data.npz"),
           "--holdout", "0", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(cmd + ["--epochs", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "state.npz").exists() and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert len(err.strip().splitlines()) == 1 and word in err and "Traceback" not in err, err
    _no_temp_left(tmp_path)
    done = int(_state(out)["runner.epochs"])
    assert f"holds the state after epoch {done}" in err, err
    assert subprocess.run(cmd + ["--epochs", "1", "--resume"], capture_output=True).returncode == 0
    _run(art, tmp_path / "full", done + 1)
    _same_state(_state(tmp_path / "full"), _state(out))


def test_resume_refuses_other_settings_in_one_line(art, tmp_path, capsys):
    from edgesnn.export.runner import main

    out = tmp_path / "ft"
    base = [str(art / "art"), "--data", str(art / "data.npz"), "--threads", "1", "--out", str(out), "--epochs", "1"]
    assert main(base + ["--holdout", "0.1"]) == 0
    capsys.readouterr()
    with np.load(art / "data.npz") as npz:
        x, y = npz["x"], npz["y"]
    np.savez(tmp_path / "moved.npz", x=x, y=y)  # the same arrays elsewhere: the same data
    x2 = x.copy()
    x2[7, 3] += 0.5
    np.savez(tmp_path / "edited.npz", x=x2, y=y)
    same = ["--resume", "--holdout", "0.1"]
    cases = [(same + ["--seed", "1"], ["--seed 0 (now 1)"]), (same + ["--lr", "0.1"], ["--lr 0.05 (now 0.1)"]),
             (["--resume", "--holdout", "0.2"], ["--holdout 0.1 (now 0.2)"]),
             (same + ["--seed", "2", "--lr", "0.5"], ["--seed 0 (now 2)", "--lr 0.05 (now 0.5)"]),
             (same + ["--data", str(tmp_path / "edited.npz")], ["--data", "edited.npz"]),
             (["--resume", "--eval-data", str(tmp_path / "moved.npz")], ["--holdout 0.1 (now 0)", "--eval-data none"])]
    for flags, words in cases:
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "other settings" in err, err
        assert all(w in err for w in words), (flags, err)
    assert main(base + ["--resume", "--holdout", "0.1", "--data", str(tmp_path / "moved.npz")]) == 0
    assert json.loads((out / "metrics.json").read_text())["total_epochs"] == 2


@pytest.mark.parametrize("flag", ["--data", "--eval-data"])
@pytest.mark.parametrize("case,words", [
    ("strings", ["array 'x'", "dtype <U"]), ("objects", ["array 'x'", "Python objects"]),
    ("complex", ["array 'x'", "complex64"]), ("huge-labels", ["array 'y'", "[9223372036854775808,"]),
    ("shape", ["array 'x'", "shape (9, 15)", "[N, 16]"]), ("missing", ["no such file"])])
def test_data_errors_name_the_flag_file_and_array(art, tmp_path, capsys, flag, case, words):
    from edgesnn.export.runner import main

    bad = tmp_path / f"{case}.npz"
    y = np.arange(9) % 4
    arrays = {"strings": dict(x=np.full((9, 16), "a"), y=y),
              "objects": dict(x=np.array([object()] * 9, dtype=object), y=y),
              "complex": dict(x=np.ones((9, 16), np.complex64), y=y),
              "huge-labels": dict(x=np.ones((9, 16), np.float32), y=np.arange(9, dtype=np.uint64) + 2 ** 63),
              "shape": dict(x=np.ones((9, 15), np.float32), y=y)}.get(case)
    if arrays is not None:
        np.savez(bad, **arrays)
    argv = ([str(art / "art"), "--data", str(bad)] if flag == "--data"
            else [str(art / "art"), "--data", str(art / "data.npz"), "--eval-data", str(bad)])
    assert main(argv + ["--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"error: {flag}: " in err and str(bad) in err and all(w in err for w in words), err
    assert not (tmp_path / "ft").exists()


def test_signals_wait_for_the_swap_and_sigterm_becomes_an_interrupt(tmp_path):
    """A Ctrl-C during a save is delivered after the new set is in place (no temp folder, no
    half-swapped --out); SIGTERM under the CLI raises Terminated, so cleanup runs."""
    import os

    from edgesnn.export.run_state import OutputDir, Terminated, sigterm_interrupts

    out = OutputDir(tmp_path / "ft", keep_others=False)

    def write(d):
        (d / "state.npz").write_bytes(b"1")
        os.kill(os.getpid(), signal.SIGINT)  # arrives mid-save
        (d / "params.npz").write_bytes(b"2")

    with pytest.raises(KeyboardInterrupt):
        out.save(write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ft"]
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["params.npz", "state.npz"]
    with pytest.raises(Terminated), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_swap_cut_between_its_renames_is_restored_on_resume(art, tmp_path):
    """A run killed (SIGKILL, power loss) between replace_dir's two renames leaves --out missing
    and its last output in a ``.out.*.tmp.old`` sibling: --resume silently restarted from the
    export; now the sibling is put back and the run continues from it."""
    _run(art, tmp_path / "full", 2)
    _run(art, tmp_path / "out", 1)
    (tmp_path / "out").rename(tmp_path / ".out.k3j9.tmp.old")  # the state the kill left behind
    logs = []
    m = _run(art, tmp_path / "out", 1, resume=True, log=logs.append)
    assert any("restored" in line and ".out.k3j9.tmp.old" in line for line in logs)
    assert m["total_epochs"] == 2
    _same_state(_state(tmp_path / "full"), _state(tmp_path / "out"))
    _no_temp_left(tmp_path)
