"""``--format onnx-step``: a whole training step as one plain ONNX graph, run by the torch-free runner.

* 20 runner steps (the runner's own IOBinding session) match PyTorch eager with the same
  optimizer (``torch.optim.SGD`` with momentum, ``torch.optim.AdamW``) within 1e-5 on every
  parameter, for LIF and RevLIF, MLP and conv net; first-layer gradients are non-zero; the
  RevLIF reconstruction check is exactly 0.0 at every step (exact mode).
* The runner, started as ``edgesnn-device`` in a fresh interpreter, fine-tunes an exported model
  and never imports torch or any ``onnxruntime.training`` module; it reports held-out accuracy,
  resumes, and its ``params.npz`` folds back into an edgesnn checkpoint.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from _step_compare import largest_chunk, runner_matches_torch
from test_export_common import needs_onnx_runtime, run_python

pytestmark = needs_onnx_runtime

STEPS = 20
BATCH = 8


def _model(name: str, neuron: str, T: int):
    from edgesnn.models import build_model

    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", (16,), 4, T, neuron=neuron, hidden=(8, 8))
    else:
        model = build_model("convnet", (2, 6, 6), 4, T, neuron=neuron, channels=(4, 4))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial frozen BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def _batches(model, n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(BATCH, *model.in_shape, generator=g) * 2.0, torch.randint(0, 4, (BATCH,), generator=g))
            for _ in range(n)]


# T picks the chunking: 8 -> 2 chunks of 4 steps, 6 -> 3 of 2, 5 -> 5 of 1, 4 -> 1 of 4
CASES = [("mlp", "lif", 6, "sgd"), ("mlp", "revlif", 6, "sgd"), ("convnet", "lif", 5, "sgd"), ("convnet", "revlif", 5, "sgd"),
         ("mlp", "lif", 4, "adamw"), ("mlp", "revlif", 8, "adamw"), ("convnet", "lif", 6, "adamw"), ("convnet", "revlif", 6, "adamw")]


@pytest.mark.parametrize("name,neuron,T,optimizer", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_runner_steps_match_torch_eager(tmp_path, name, neuron, T, optimizer):
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    model = _model(name, neuron, T)
    lr = 0.05 if optimizer == "sgd" else 0.01
    export_onnx_step(model, tmp_path / "art", BATCH, optimizer, lr, momentum=0.9, chunk=largest_chunk(T))
    manifest = validate_artifact_dir(tmp_path / "art")
    assert manifest.recon_tolerance == 0.0 and manifest.timesteps == T and manifest.chunk == largest_chunk(T)
    with np.load(tmp_path / "art" / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = StepSession(import_plain_ort(), tmp_path / "art", manifest, start, threads=1, lean_memory=True)
    sess.set_lr(lr)

    ref = export_copy(model)  # eval-mode BatchNorm, reference backend: the store-everything autograd oracle
    params = dict(ref.named_parameters())
    opt = (torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(ref.parameters(), lr=lr))
    first = manifest.trainable[0]
    for k, (x, y) in enumerate(_batches(model, STEPS)):
        loss, correct, err = sess.step(x.numpy(), y.numpy())
        out = torch.nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        out.backward()
        if k == 0:
            assert params[first].grad.abs().max() > 0, "torch: first-layer gradient is zero"
            moved = np.abs(sess.values()[first] - start[first]).max()
            assert moved > 0, "runner: the first step did not change the first layer"
        opt.step()
        assert err == 0.0, f"step {k}: RevLIF reconstruction error {err}"
        assert abs(loss - out.item()) < 1e-5, (k, loss, out.item())
    got = sess.values()
    diffs = {n: float(np.abs(got[n] - p.detach().numpy()).max()) for n, p in params.items()}
    assert max(diffs.values()) < 1e-5, diffs
    moved = {n: float(np.abs(got[n] - start[n]).max()) for n in params}
    assert moved[first] > 1e-4, moved  # the parameters really trained (the check above is not vacuous)


# ----------------------------------------------------------------------------- the runner as a device would run it


def _export_cli(argv):
    from edgesnn.export import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", *argv])
    return args.func(args)


_RUNNER = """
import json, runpy, sys
sys.argv = ['edgesnn-device', *sys.argv[1:]]
code = 0
try:
    runpy.run_module('edgesnn.export.runner', run_name='__main__')
except SystemExit as exc:
    code = exc.code
bad = sorted(m for m, mod in sys.modules.items() if mod is not None and (m == 'torch' or m.startswith('torch.')
             or m.startswith('onnxruntime.training')))
print(json.dumps({'code': code, 'bad': bad, 'ort': 'onnxruntime' in sys.modules}))
"""


@pytest.fixture(scope="module")
def digits_step(tmp_path_factory):
    """A briefly host-trained digits RevLIF MLP, exported with the CLI as onnx-step, and device data."""
    from sklearn.datasets import load_digits

    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.models import build_model

    tmp = tmp_path_factory.mktemp("step-e2e")
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    torch.manual_seed(0)
    model = build_model("mlp", (64,), 10, 4, neuron="revlif", hidden=(32, 32), node={"backend": "torch"})  # no JIT compile
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[:512]), torch.from_numpy(y[:512])
    for _ in range(2):  # a short host training: the device has room to improve
        for i in range(0, 512, 32):
            loss = torch.nn.functional.cross_entropy(model(xt[i:i + 32]), yt[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    ck = save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=1)
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp / "art"), "--batch-size", "16",
                        "--lr", "0.05"]) == 0
    np.savez(tmp / "device.npz", x=x[512:992], y=y[512:992])
    return tmp, model


def test_runner_is_torch_free_and_reports_held_out_accuracy(digits_step):
    tmp, model = digits_step
    proc = run_python(_RUNNER, str(tmp / "art"), "--data", str(tmp / "device.npz"), "--epochs", "2", "--out", str(tmp / "ft"),
                      "--threads", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "bad": [], "ort": True}, report
    m = json.loads((tmp / "ft" / "metrics.json").read_text())
    assert m["format"] == "onnx-step" and m["accuracy_on"] == "held-out"
    assert m["eval_samples"] == 96 and m["train_samples"] == 384 and m["steps"] == 2 * (384 // 16)
    assert m["forbidden_modules"] == [] and m["torch_imported"] is False
    assert m["recon_error_max"] == 0.0
    assert m["accuracy_after"] > m["accuracy_before"], (m["accuracy_before"], m["accuracy_after"])
    assert m["epoch_loss"][-1] < m["epoch_loss"][0]

    # --resume continues from state.npz; a second plain run refuses the non-empty --out
    proc = run_python(_RUNNER, str(tmp / "art"), "--data", str(tmp / "device.npz"), "--out", str(tmp / "ft"))
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])["code"] == 2
    assert "already exists and is not empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "pass --force (or --resume to continue from it) to replace it" in proc.stderr, proc.stderr
    (tmp / "ft" / "notes.txt").write_text("mine")  # a resumed run swaps in a new set and keeps the rest
    proc = run_python(_RUNNER, str(tmp / "art"), "--data", str(tmp / "device.npz"), "--out", str(tmp / "ft"), "--resume",
                      "--threads", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m2 = json.loads((tmp / "ft" / "metrics.json").read_text())
    assert m2["total_steps"] == m["steps"] + m2["steps"]
    assert (tmp / "ft" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp.iterdir() if p.name.startswith(".ft.")]  # no temp folder left

    # host side: the device weights fold back into an edgesnn checkpoint; its eager forward matches eval.onnx
    from edgesnn.export.prepare import export_copy, model_from_checkpoint
    from edgesnn.export.runner import import_plain_ort

    assert _export_cli(["--checkpoint", str(tmp / "model.ckpt"), "--format", "checkpoint", "--params",
                        str(tmp / "ft" / "params.npz"), "--out", str(tmp / "ft.ckpt")]) == 0
    tuned, _ = model_from_checkpoint(tmp / "ft.ckpt")
    ort = import_plain_ort()
    sess = ort.InferenceSession(str(tmp / "art" / "eval.onnx"), providers=["CPUExecutionProvider"])
    with np.load(tmp / "ft" / "params.npz") as npz:
        feed = {k: npz[k] for k in npz.files}
    x = np.load(tmp / "device.npz")["x"][:16]
    feed["input"] = x
    out = sess.run(["logits"], feed)[0]
    with torch.no_grad():
        ref = export_copy(tuned)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_folding_weights_fine_tuned_from_another_models_export_is_refused(digits_step, tmp_path):
    """``--format checkpoint --params ARTIFACTS/finetuned/params.npz`` folded the weights of a RevLIF export into a
    LIF checkpoint of the same widths without a word (logits up to 3.8 off, 12.5% of the argmaxes); where the
    runner's default layout names the export, its model must be the checkpoint's."""
    import shutil

    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.errors import UsageError
    from edgesnn.export.artifacts import STEP_MODEL, read_manifest
    from edgesnn.models import build_model

    tmp, model = digits_step
    art = tmp_path / "art"
    shutil.copytree(tmp / "art", art)
    (art / "finetuned").mkdir()
    params = art / "finetuned" / "params.npz"
    np.savez(params, **{k: v.numpy() for k, v in model.state_dict().items() if v.is_floating_point()})
    np.savez(art / "finetuned" / "state.npz", **{"runner.artifact": np.asarray(read_manifest(art).files[STEP_MODEL])})
    lif = build_model("mlp", (64,), 10, 4, neuron="lif", hidden=(32, 32), node={"backend": "torch"})
    lif_ck = save_checkpoint(tmp_path / "lif.ckpt", lif.config, lif.state_dict(), epoch=1)
    with pytest.raises(UsageError, match=r"^--params .*params\.npz: fine-tuned from an export of another model \(neuron "
                                         r"'revlif'; the checkpoint's: 'lif'\); fold it into the checkpoint that export"):
        _export_cli(["--checkpoint", str(lif_ck), "--format", "checkpoint", "--params", str(params),
                     "--out", str(tmp_path / "mixed.ckpt")])
    assert not (tmp_path / "mixed.ckpt").exists()
    assert _export_cli(["--checkpoint", str(tmp / "model.ckpt"), "--format", "checkpoint", "--params", str(params),
                        "--out", str(tmp_path / "same.ckpt")]) == 0
    other = build_model("mlp", (64,), 10, 4, neuron="revlif", hidden=(32, 32), node={"backend": "torch", "tau": 4.0})
    with pytest.raises(UsageError, match=r"another model \(node \{\}; the checkpoint's: \{'tau': 4\.0\}\)"):
        _export_cli(["--checkpoint", str(save_checkpoint(tmp_path / "tau.ckpt", other.config, other.state_dict())),
                     "--format", "checkpoint", "--params", str(params), "--out", str(tmp_path / "mixed.ckpt")])
    auto = build_model("mlp", (64,), 10, 4, neuron="revlif", hidden=(32, 32))  # (another backend: the same weights)
    assert _export_cli(["--checkpoint", str(save_checkpoint(tmp_path / "auto.ckpt", auto.config, model.state_dict())),
                        "--format", "checkpoint", "--params", str(params), "--out", str(tmp_path / "auto2.ckpt")]) == 0
    (art / "finetuned" / "state.npz").unlink()  # (elsewhere nothing tells the export: folded as before)
    assert _export_cli(["--checkpoint", str(lif_ck), "--format", "checkpoint", "--params", str(params),
                        "--out", str(tmp_path / "mixed.ckpt")]) == 0


def test_resume_continues_the_run_and_refuses_another_export(digits_step, tmp_path):
    """1 epoch + --resume 1 epoch == 2 epochs in one run (the data order continues); a state from
    another export is refused; the public step checks its inputs."""
    from edgesnn.export.artifacts import STEP_INIT, validate_artifact_dir
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_runner import StepSession

    art, data = digits_step[0] / "art", digits_step[0] / "device.npz"

    def device(out, *flags):  # the runner in its own torch-free process
        proc = run_python(_RUNNER, str(art), "--data", str(data), "--out", str(tmp_path / out), "--threads", "1",
                          *flags, timeout=300)
        return json.loads(proc.stdout.strip().splitlines()[-1])["code"], proc.stderr

    assert device("full", "--epochs", "2")[0] == 0
    assert device("split", "--epochs", "1")[0] == 0
    assert device("split", "--epochs", "1", "--resume")[0] == 0
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["total_epochs"] == 2
    with np.load(tmp_path / "full" / "state.npz") as a, np.load(tmp_path / "split" / "state.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
        other = {k: b[k] for k in b.files}
    other["runner.artifact"] = np.asarray("0" * 64)
    np.savez(tmp_path / "split" / "state.npz", **other)
    code, err = device("split", "--epochs", "1", "--resume")
    assert code == 2 and "another export" in err

    manifest = validate_artifact_dir(art)
    with np.load(art / STEP_INIT) as npz:
        start = {k: np.array(npz[k]) for k in npz.files}
    sess = StepSession(import_plain_ort(), art, manifest, start, 1, True)
    B, shape = manifest.batch_size, tuple(manifest.in_shape)
    x = np.random.default_rng(0).random((B, *shape))  # float64, converted
    y = np.arange(B) % manifest.num_classes
    loss64 = sess.step(x, y)[0]
    sess2 = StepSession(import_plain_ort(), art, manifest, start, 1, True)
    assert sess2.step(x.astype(np.float32), y.astype(np.int64))[0] == loss64
    for bad_y, words in ((y + manifest.num_classes, "labels must lie"), (y - 1, "labels must lie"),
                         (y.astype(np.float32), "integer labels")):
        with pytest.raises(ValueError, match=words):
            sess.step(x, bad_y)
    with pytest.raises(ValueError, match="x: expected a batch"):
        sess.step(x[:-1], y[:-1])


def test_step_export_refuses_nonempty_out_and_unsupported_layers(tmp_path):
    from edgesnn.errors import UsageError
    from edgesnn.export.onnx_step import build_step_program
    from edgesnn.models import build_model
    from edgesnn.nn import ParametricLIF

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(FileExistsError, match="pass --force"):
        _export_cli(["--checkpoint", str(tmp_path / "none.ckpt"), "--format", "onnx-step", "--out", str(tmp_path / "out")])
    model = build_model("mlp", (4,), 2, 2, hidden=(4,))
    model.body[3] = ParametricLIF()
    with pytest.raises(UsageError, match="ParametricLIF"):
        build_step_program(model, 2)


ODD = [((1, 7, 7), "lif"), ((1, 6, 5), "lif"), ((1, 7, 7), "revlif")]


@pytest.mark.parametrize("shape,neuron", ODD, ids=[f"{'x'.join(map(str, s))}-{n}" for s, n in ODD])
def test_odd_input_sizes_export_and_match_torch(tmp_path, shape, neuron):
    """A 2x2 average pool over an odd height/width drops a row/column; its backward must restore
    it with static sizes (a pad of run-time size made the next conv weight gradient unexportable).
    The first step's gradients and 5 SGD-momentum steps match PyTorch eager."""
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("convnet", shape, 3, 4, neuron=neuron, channels=(4, 4)).eval()
    ck = save_checkpoint(tmp_path / "odd.ckpt", model.config, model.state_dict(), epoch=1)
    assert _export_cli(["--checkpoint", str(ck), "--format", "onnx-step", "--out", str(tmp_path / "art"),
                        "--batch-size", "4", "--lr", "0.05"]) == 0  # the audit's command line
    runner_matches_torch(model, tmp_path / "art", 3, export=False)


def test_export_refuses_event_checkpoints_and_ignored_optimizer_flags(tmp_path):
    """A model trained on event frames cannot run on a graph that repeats one frame over T (onnx-step
    takes the frames instead); optimizer
    flags a format or optimizer would ignore are refused, not dropped."""
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.errors import UsageError
    from edgesnn.models import build_model

    model = build_model("mlp", (8,), 3, 2, hidden=(4,))
    ev = save_checkpoint(tmp_path / "shd.ckpt", model.config, model.state_dict(), epoch=1,
                         train_config={"dataset": "shd", "timesteps": 2})
    with pytest.raises(UsageError, match="--format onnx-training: .*event data \\(shd.*use --format onnx-step"):
        _export_cli(["--checkpoint", str(ev), "--format", "onnx-training", "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b").exists()
    # onnx-step, onnx and torchscript take T frames per sample (tests/test_export_step_events.py)
    assert _export_cli(["--checkpoint", str(ev), "--format", "onnx-step", "--out", str(tmp_path / "a")]) == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["in_shape"] == [2, 8]
    ok = save_checkpoint(tmp_path / "digits.ckpt", model.config, model.state_dict(), epoch=1,
                         train_config={"dataset": "digits", "timesteps": 2})
    for argv, words in ((["--optimizer", "adamw", "--momentum", "0.5"], "--momentum: applies to --optimizer sgd"),
                        (["--optimizer", "adamw", "--nesterov"], "--nesterov: applies to --optimizer sgd"),
                        (["--format", "onnx-training", "--momentum", "0.5"], "--momentum: applies to --format onnx-step"),
                        (["--format", "onnx-training", "--weight-decay", "0.1"], "--weight-decay: applies to"),
                        (["--format", "onnx", "--lr", "0.1"], "--lr: applies to --format onnx-step / onnx-training"),
                        (["--format", "torchscript", "--optimizer", "adamw"], "--optimizer: applies to"),
                        (["--format", "onnx", "--batch-size", "8"], "--batch-size: applies to")):
        fmt = [] if "--format" in argv else ["--format", "onnx-step"]
        with pytest.raises(UsageError, match=words):
            _export_cli(["--checkpoint", str(ok), "--out", str(tmp_path / "e"), *fmt, *argv])
    assert _export_cli(["--checkpoint", str(ok), "--format", "onnx-step", "--out", str(tmp_path / "f"), "--optimizer",
                        "adamw", "--batch-size", "2"]) == 0


def test_repeated_exports_do_not_keep_memory(tmp_path):
    """Exporting again in one process keeps no memory per call: tracing each piece with
    ``torch.jit.trace`` first left its TorchScript class in torch's global compilation unit, about
    10 MiB per export of this RevLIF MLP, never freed."""
    import gc

    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.models import build_model

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    model = build_model("mlp", (16,), 4, 4, neuron="revlif", hidden=(8, 8), node={"backend": "torch"})
    for i in range(2):  # warm-up: the exporter's own one-time state
        export_onnx_step(model, tmp_path / f"warm{i}", BATCH)
    gc.collect()
    before = rss_mib()
    for i in range(4):
        export_onnx_step(model, tmp_path / f"art{i}", BATCH)
    gc.collect()
    assert rss_mib() - before < 12.0, f"4 exports kept {rss_mib() - before:.1f} MiB"
