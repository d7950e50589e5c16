"""Inference export formats: --params only with --format checkpoint, the checks on a params.npz,
NIR under a failing write, ONNX metadata, TorchScript's input shape check, checkpoint messages,
--out quirks, and NaN / Inf weights refused."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from edgesnn.checkpoint import load_checkpoint, save_checkpoint
from edgesnn.cli import main
from test_export_common import make_batch, make_model

CONV_IN = (1, 8, 8)


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


def _export(*argv: str) -> int:
    return main(["export", *argv])


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """A convnet LIF checkpoint (BatchNorm with non-trivial statistics) and its model."""
    tmp = tmp_path_factory.mktemp("ck")
    model = make_model("convnet", "lif", "atan")
    return save_checkpoint(tmp / "model.ckpt", model.config, model.state_dict(), epoch=2), model


def _runner_params(model) -> dict:
    """What the device runners write to params.npz: every parameter and the BatchNorm statistics
    as float32 (no num_batches_tracked)."""
    names = [n for n, _ in model.named_parameters()]
    names += [n for n, _ in model.named_buffers() if n.endswith(("running_mean", "running_var"))]
    state = model.state_dict()
    return {n: state[n].detach().numpy().astype(np.float32) + 0.25 for n in names}  # "fine-tuned"


# 1. --params only with --format checkpoint ----------------------------------------------------------


@pytest.mark.parametrize("fmt,out", [("onnx", "m.onnx"), ("torchscript", "m.pt"), ("nir", "m.nir"),
                                     ("onnx-step", "art")])
def test_params_is_refused_for_every_format_but_checkpoint(ck, tmp_path, capsys, fmt, out):
    path, model = ck
    np.savez(tmp_path / "params.npz", **_runner_params(model))
    assert _export("--checkpoint", str(path), "--format", fmt, "--params", str(tmp_path / "params.npz"),
                   "--out", str(tmp_path / out)) == 2
    err = _err(capsys)
    assert f"--params: applies to --format checkpoint only (not {fmt})" in err
    assert "first run --format checkpoint" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.npz"]


# 2 / 4. the params.npz checks --------------------------------------------------------------------------


def test_runner_params_fold_back_bit_exact_and_missing_buffers_fall_back(ck, tmp_path, capsys):
    path, model = ck
    arrays = _runner_params(model)
    first = next(iter(arrays))
    arrays[first] = arrays[first].astype(">f4")  # big-endian: converted to native, same values
    np.savez(tmp_path / "p.npz", **arrays)
    assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", str(tmp_path / "p.npz"),
                   "--out", str(tmp_path / "new.ckpt")) == 0
    new = load_checkpoint(tmp_path / "new.ckpt")
    assert new["epoch"] == 2
    for name, value in new["model_state"].items():
        if name in arrays:
            assert value.dtype == torch.float32 and np.array_equal(value.numpy(), arrays[name].astype(np.float32)), name
        else:  # num_batches_tracked: not written by the runner, keeps the checkpoint's value
            assert name.endswith("num_batches_tracked") and torch.equal(value, model.state_dict()[name])


def _bad(arrays: dict, name: str, how: str) -> dict:
    arrays = dict(arrays)
    value = arrays[name]
    if how == "int64":
        arrays[name] = value.astype(np.int64)
    elif how == "complex":
        arrays[name] = value.astype(np.complex64)
    elif how == "string":
        arrays[name] = value.astype(str)
    elif how == "nan":
        arrays[name] = np.full_like(value, np.nan)
    elif how == "inf":
        arrays[name] = value.astype(np.float64) * 1e300  # finite as float64, inf as the model's float32
    elif how == "shape":
        arrays[name] = value.reshape(-1)[:3]
    return arrays


@pytest.mark.parametrize("how,words", [
    ("int64", "expected real floating-point values (the model holds torch.float32), got dtype int64"),
    ("complex", "expected real floating-point values (the model holds torch.float32), got dtype complex64"),
    ("string", "expected real floating-point values (the model holds torch.float32), got dtype <U"),
    ("nan", "NaN or Inf value"),
    ("inf", "NaN or Inf value"),
    ("shape", "shape (3,), the model expects (4, 1, 3, 3)"),
])
def test_params_array_checks_name_the_array_and_the_file(ck, tmp_path, capsys, how, words):
    path, model = ck
    name = "body.0.module.weight"
    np.savez(tmp_path / "p.npz", **_bad(_runner_params(model), name, how))
    assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", str(tmp_path / "p.npz"),
                   "--out", str(tmp_path / "new.ckpt")) == 2
    err = _err(capsys)
    assert err.startswith(f"edgesnn export: error: --params {tmp_path / 'p.npz'}: array {name}: ") and words in err, err
    assert not (tmp_path / "new.ckpt").exists()


def test_params_must_hold_every_trainable_parameter_and_nothing_else(ck, tmp_path, capsys):
    path, model = ck
    arrays = _runner_params(model)
    cases = {"empty": {}, "partial": {k: v for i, (k, v) in enumerate(arrays.items()) if i != 1},
             "unknown": {**arrays, "body.9.weight": np.zeros(2, np.float32)}}
    for case, content in cases.items():
        np.savez(tmp_path / f"{case}.npz", **content)
        assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", str(tmp_path / f"{case}.npz"),
                       "--out", str(tmp_path / "new.ckpt")) == 2
        err = _err(capsys)
        assert err.startswith(f"edgesnn export: error: --params {tmp_path / f'{case}.npz'}: "), err
        if case == "unknown":
            assert "holds arrays the model does not have: body.9.weight" in err
        else:
            params = [n for n, _ in model.named_parameters()]  # the BatchNorm statistics are buffers: not required
            missing = [n for n in params if n not in content]
            assert f"lacks {len(missing)} of the model's {len(params)} trainable parameters ({missing[0]}" in err
    assert not (tmp_path / "new.ckpt").exists()


# 3. NIR under a failing write ---------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no RLIMIT_FSIZE")
@pytest.mark.parametrize("kib", [30, 60])  # the ~100 KiB file cut at either size crashed h5py's file-object writer
def test_nir_export_under_a_file_size_limit_fails_in_one_line(ck, tmp_path, kib):
    pytest.importorskip("nir")
    path, _ = ck
    out = tmp_path / "model.nir"
    out.write_bytes(b"precious")
    proc = subprocess.run([sys.executable, "-m", "edgesnn", "export", "--checkpoint", str(path), "--format", "nir",
                           "--out", str(out), "--force"], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024)))
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # was 139 (segfault in h5py)
    reason = "file too large (a file size limit was hit)"
    assert proc.stderr.strip() == f"edgesnn export: error: cannot write {out}: {reason}"
    assert out.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["model.nir"]  # no .model.nir.*.tmp left


def test_nir_file_written_from_memory_reads_back(ck, tmp_path):
    pytest.importorskip("nir")
    from edgesnn import nir as enir

    path, model = ck
    assert _export("--checkpoint", str(path), "--format", "nir", "--out", str(tmp_path / "m.nir")) == 0
    x = torch.rand(3, 2, *CONV_IN, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        assert torch.equal(enir.load(tmp_path / "m.nir").body(x), enir.load(enir.to_nir(model)).body(x))


# 6. ONNX metadata ----------------------------------------------------------------------------------------


def test_onnx_inference_model_carries_metadata_that_matches_the_graph(ck, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from edgesnn import __version__
    from edgesnn.export.prepare import export_copy

    path, model = ck
    assert _export("--checkpoint", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["edgesnn_version"] == __version__
    assert json.loads(meta["model_config"])["name"] == "convnet"
    assert json.loads(meta["model_config"])["in_shape"] == list(CONV_IN)
    assert meta["timesteps"] == "4" and json.loads(meta["in_shape"]) == list(CONV_IN) and meta["num_classes"] == "10"
    assert "[B, 1, 8, 8]" in meta["input"] and "repeated over the T=4 time steps" in meta["input"]
    assert "[B, 10]" in meta["output"] and "averaged over the T=4 time steps" in meta["output"]
    assert proto.doc_string.startswith(f"edgesnn {__version__} spiking classifier, T=4")
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == json.loads(meta["in_shape"])
    # what the metadata says is what the graph computes: the frame repeated over T, the readout's mean over T
    x, _ = make_batch("convnet", 5)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x.numpy()})[0]
    ref = export_copy(model)
    with torch.no_grad():
        by_hand = ref.body(x.unsqueeze(0).expand(4, *x.shape)).mean(0)
    np.testing.assert_allclose(logits, by_hand.numpy(), atol=1e-5)


# 7. TorchScript checks the input shape -------------------------------------------------------------------


def test_torchscript_module_refuses_wrong_input_shapes_and_stays_bit_identical(tmp_path):
    from edgesnn.export.prepare import export_copy
    from edgesnn.export.torchscript import export_torchscript, load_torchscript

    model = make_model("convnet", "lif", "atan")
    module = load_torchscript(export_torchscript(model, tmp_path / "m.pt"))
    x, _ = make_batch("convnet", 6)
    with torch.no_grad():
        assert torch.equal(module(x), export_copy(model)(x))
    for shape in ((6, 1, 9, 9), (6, 1, 8, 9), (6, 2, 8, 8), (6, 64), (4, 6, *CONV_IN)):  # (6, 1, 9, 9) used to run
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception, match=r"input: expected \[B, 1, 8, 8\], got \[" + str(shape[0])):
                module(torch.rand(*shape))
    files = {"edgesnn.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load is deprecated
        torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files["edgesnn.json"])["in_shape"] == list(CONV_IN)


# 8. messages about the checkpoint and --params -------------------------------------------------------------


def test_bad_model_config_and_input_paths_are_named(ck, tmp_path, capsys):
    from edgesnn.export.prepare import ExportError, model_from_checkpoint

    path, model = ck
    bad = save_checkpoint(tmp_path / "bad.ckpt", {**model.config, "timesteps": 0}, model.state_dict())
    assert _export("--checkpoint", str(bad), "--format", "onnx", "--out", str(tmp_path / "m.onnx")) == 2
    assert _err(capsys) == (f"edgesnn export: error: --checkpoint {bad}: model_config: timesteps: expected an integer "
                            ">= 1, got 0")
    with pytest.raises(ExportError, match=rf"^checkpoint {bad}: model_config: timesteps"):
        model_from_checkpoint(bad)
    extra = save_checkpoint(tmp_path / "extra.ckpt", {**model.config, "bogus": 1}, model.state_dict())
    with pytest.raises(ExportError, match="model_config: build_model.. got an unexpected keyword argument 'bogus'"):
        model_from_checkpoint(extra)

    payload = torch.load(path, weights_only=True)
    payload["model_config"] = [model.config]
    torch.save(payload, tmp_path / "list.ckpt")
    assert _export("--checkpoint", str(tmp_path / "list.ckpt"), "--format", "onnx",
                   "--out", str(tmp_path / "m.onnx")) == 2
    assert "model_config must be a dict (a JSON object of build_model arguments), got list" in _err(capsys)

    (tmp_path / "pdir").mkdir()
    assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", str(tmp_path / "pdir"),
                   "--out", str(tmp_path / "n.ckpt")) == 2
    assert _err(capsys) == (f"edgesnn export: error: --params: {tmp_path / 'pdir'} is a directory; expected the "
                            "params.npz file the device runner wrote")
    assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", str(tmp_path / "no.npz"),
                   "--out", str(tmp_path / "n.ckpt")) == 2
    assert _err(capsys) == f"edgesnn export: error: --params: no such file: {tmp_path / 'no.npz'}"
    assert _export("--checkpoint", str(tmp_path / "pdir"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")) == 2
    assert _err(capsys) == (f"edgesnn export: error: --checkpoint: {tmp_path / 'pdir'} is a directory; expected a "
                            "checkpoint file")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "n.ckpt").exists()


# 9. --out quirks ---------------------------------------------------------------------------------------------


def test_out_paths(ck, tmp_path, capsys, monkeypatch):
    path, model = ck
    monkeypatch.chdir(tmp_path)
    assert _export("--checkpoint", str(path), "--format", "onnx", "--out", "") == 2
    assert _err(capsys) == "edgesnn export: error: --out: expected a path, got ''"
    np.savez(tmp_path / "p.npz", **_runner_params(model))
    assert _export("--checkpoint", str(path), "--format", "checkpoint", "--params", "p.npz", "--out", "odir/") == 2
    assert "--out: odir/ ends with '/' (a directory); --format checkpoint writes one file" in _err(capsys)
    for fmt, out in (("torchscript", "exported.onnx"), ("onnx", "m.pt"), ("nir", "m.ckpt"), ("onnx-step", "art.nir")):
        assert _export("--checkpoint", str(path), "--format", fmt, "--out", out) == 2
        suffix = os.path.splitext(out)[1]
        assert f"--out: {out} ends in {suffix}, another format's suffix; --format {fmt} writes" in _err(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]  # nothing written, no directory made

    # the checkpoint's own folder is a fine --out for a file format: the file is checked, not the folder
    monkeypatch.chdir(path.parent)
    assert _export("--checkpoint", str(path), "--format", "torchscript", "--out", ".") == 0
    assert (path.parent / "model.pt").is_file()
    (path.parent / "model.pt").unlink()
    link = tmp_path / "link.pt"  # ... but the resolved output file may never be the input
    link.symlink_to(path)
    assert _export("--checkpoint", str(path), "--format", "torchscript", "--out", str(link), "--force") == 2
    assert "is or contains the input checkpoint" in _err(capsys) and load_checkpoint(path)["epoch"] == 2


def test_out_help_mentions_every_file_format(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "torchscript/onnx/nir: a .pt/.onnx/.nir file" in help_text and "checkpoint only" in help_text


# 10. NaN / Inf weights are refused -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,out", [("onnx", "m.onnx"), ("nir", "m.nir"), ("torchscript", "m.pt")])
def test_non_finite_weights_are_refused(tmp_path, capsys, fmt, out):
    model = make_model("convnet", "lif", "atan")
    with torch.no_grad():
        model.body[1].module.running_var[2] = float("inf")
    path = save_checkpoint(tmp_path / "inf.ckpt", model.config, model.state_dict())
    assert _export("--checkpoint", str(path), "--format", fmt, "--out", str(tmp_path / out)) == 2
    assert _err(capsys) == (f"edgesnn export: error: --checkpoint {path}: buffer body.1.module.running_var holds 1 NaN "
                            "or Inf value (a diverged training run?); refusing to export it")
    assert not (tmp_path / out).exists()


def test_library_exporters_refuse_non_finite_parameters(tmp_path):
    from edgesnn.export.nir_export import export_nir
    from edgesnn.export.onnx_inference import export_onnx
    from edgesnn.export.prepare import ExportError
    from edgesnn.export.torchscript import export_torchscript

    model = make_model("convnet", "lif", "atan")
    with torch.no_grad():
        model.body[0].module.weight[0, 0, 0, 0] = float("nan")
    for export, name in ((export_onnx, "m.onnx"), (export_torchscript, "m.pt"), (export_nir, "m.nir")):
        with pytest.raises(ExportError, match=r"^model: parameter body\.0\.module\.weight holds 1 NaN or Inf value"):
            export(model, tmp_path / name)
    assert list(tmp_path.iterdir()) == []
