"""The step graph's time chunk, chosen at export (``export_onnx_step(chunk=K)``, ``edgesnn export --time-chunk K``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime


@pytest.mark.parametrize("neuron", ["lif", "revlif"])
def test_every_chunk_steps_as_eager_pytorch(tmp_path, neuron):
    """T = 4 in chunks of 1, 2 and 4: the same update as the eager step (reference_step), the
    reversible check 0.0, and the forward loop T / K iterations long."""
    import onnx

    from edgesnn.export.accumulate_session import AccumulatingSession
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import build_step_program, export_onnx_step, reference_step
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("convnet", (2, 6, 6), 4, 4, neuron=neuron, channels=(4, 4)).eval()
    g = np.random.default_rng(0)
    x, y = (g.random((8, 2, 6, 6)) * 2).astype(np.float32), g.integers(0, 4, 8)
    prog = build_step_program(model, 8, "sgd")
    for K in (1, 2, 4):
        art = tmp_path / f"k{K}"
        manifest = export_onnx_step(model, art, 8, "sgd", 0.05, chunk=K)
        assert manifest.chunk == K
        validate_artifact_dir(art)
        with np.load(art / "init.npz") as npz:
            start = {k: npz[k] for k in npz.files}
        sess = AccumulatingSession(import_plain_ort(), art, manifest, start, threads=1, lean_memory=True, parts=1)
        sess.set_lr(0.05)
        loss, _, err = sess.step(x, y)
        new_p, _, ref_loss, _, _ = reference_step(prog, x, y.astype(np.int64), 0.05,
                                                  {n: start[n] for n in manifest.trainable + manifest.frozen},
                                                  {n: start[n] for n in manifest.optimizer_state})
        assert err == 0.0 and abs(loss - ref_loss) < 1e-5
        got = sess.values()
        for n in manifest.trainable:
            np.testing.assert_allclose(got[n], new_p[n], atol=2e-6, rtol=0, err_msg=f"K={K} {n}")
        ticks = next(i for i in onnx.load(str(art / "step.onnx")).graph.initializer if i.name == "ticks")
        assert list(ticks.dims) == [4 // K, 1]  # the forward Scan runs T / K iterations


def test_bad_chunks_are_refused_in_one_line(tmp_path, capsys):
    from edgesnn.checkpoint import save_checkpoint
    from edgesnn.cli import main
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("mlp", (16,), 4, 6, neuron="revlif", hidden=(8,)).eval()
    for bad in (4, 3, 0, True):
        with pytest.raises(ExportError, match=r"^chunk: expected 1, 2 or 4 time steps per loop iteration, dividing "
                                              r"T = 6 \(1, 2\)"):
            export_onnx_step(model, tmp_path / "x", 8, "sgd", 0.05, chunk=bad)
    assert not (tmp_path / "x").exists()
    ck = save_checkpoint(tmp_path / "m.ckpt", model.config, model.state_dict())
    base = ["export", "--checkpoint", str(ck), "--out", str(tmp_path / "o")]
    assert main([*base, "--format", "onnx-step", "--time-chunk", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--time-chunk: expected 1, 2 or 4 dividing the checkpoint's T = 6, got 4" in err and "\n" not in err
    assert main([*base, "--format", "onnx", "--time-chunk", "2"]) == 2
    assert "--time-chunk: applies to --format onnx-step only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main([*base, "--format", "onnx-step", "--time-chunk", "2"]) == 0
    from edgesnn.export.artifacts import validate_artifact_dir

    assert validate_artifact_dir(tmp_path / "o").chunk == 2


def test_default_chunk_is_one_step_but_for_long_revlif_sequences(tmp_path):
    """One step per loop iteration by default (fewest temporaries); a RevLIF model from T = 64 on
    takes the largest of 4 and 2 dividing T (its store is a byte per neuron per chunk)."""
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.step_program import LONG_T, default_chunk
    from edgesnn.models import build_model

    assert LONG_T == 64
    assert [default_chunk(T, False) for T in (4, 8, 64, 128)] == [1, 1, 1, 1]
    assert [default_chunk(T, True) for T in (4, 32, 63, 64, 66, 65)] == [1, 1, 1, 4, 2, 1]
    for neuron, T, want in (("lif", 8, 1), ("revlif", 8, 1), ("revlif", 64, 4), ("lif,revlif", 66, 2)):
        torch.manual_seed(0)
        spec = neuron.split(",") if "," in neuron else neuron
        model = build_model("mlp", (16,), 4, T, neuron=spec, hidden=(8,) * (2 if "," in neuron else 1)).eval()
        assert export_onnx_step(model, tmp_path / f"{neuron}{T}", 4, "sgd", 0.05).chunk == want, (neuron, T)
