"""The onnx-step graph files hold no per-batch data: their size does not grow with the batch.

The layers' fresh states (``[B, ...]`` each, one value throughout) are ``ConstantOfShape`` nodes,
not stored tensors, and the RevLIF reconstruction check compares with that value as a scalar.
Before, a VGG-11 RevLIF ``step.onnx`` at batch 32 was 40 MB, almost all of it those fills.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_export_common import needs_onnx_runtime

pytestmark = needs_onnx_runtime

GRAPHS = ("step.onnx", "eval.onnx", "grad.onnx")


def _export(tmp_path, neuron: str, batch: int):
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.models import build_model

    torch.manual_seed(0)
    model = build_model("convnet", (2, 16, 16), 4, 4, neuron=neuron, channels=(8, 16)).eval()
    out = tmp_path / f"{neuron}-{batch}"
    export_onnx_step(model, out, batch, "sgd", 0.01)
    return out


def _large_fills(path) -> int:
    """Float Constant tensors of 1024 or more equal elements anywhere in the graph (bodies included)."""
    import onnx
    from onnx import numpy_helper

    def walk(g) -> int:
        n = 0
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    n += walk(a.g)
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                arr = numpy_helper.to_array(node.attribute[0].t)
                n += int(arr.dtype == np.float32 and arr.size >= 1024 and bool((arr == arr.flat[0]).all()))
        return n

    return walk(onnx.load(str(path)).graph)


@pytest.mark.parametrize("neuron", ["lif", "revlif"])
def test_graph_files_do_not_grow_with_the_batch(tmp_path, neuron):
    small, large = _export(tmp_path, neuron, 2), _export(tmp_path, neuron, 64)
    for name in GRAPHS:
        a, b = (small / name).stat().st_size, (large / name).stat().st_size
        assert abs(b - a) < 4096, (name, a, b)  # 64 samples x 3072 neurons x 4 bytes would be 786 KB per fill
        assert _large_fills(large / name) == 0, name


def test_the_fills_compute_what_the_stored_tensors_did(tmp_path):
    """The graphs with ConstantOfShape fills step exactly as eager PyTorch (reference_step) does, and
    the reversible check still reads 0.0."""
    from edgesnn.export.accumulate_session import AccumulatingSession
    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import build_step_program, reference_step
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.models import build_model

    art = _export(tmp_path, "revlif", 64)
    manifest = validate_artifact_dir(art)
    with np.load(art / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = AccumulatingSession(import_plain_ort(), art, manifest, start, threads=1, lean_memory=True, parts=1)
    sess.set_lr(0.01)
    g = np.random.default_rng(0)
    x, y = (g.random((64, 2, 16, 16)) * 2).astype(np.float32), g.integers(0, 4, 64)
    loss, _, err = sess.step(x, y)
    torch.manual_seed(0)
    model = build_model("convnet", (2, 16, 16), 4, 4, neuron="revlif", channels=(8, 16)).eval()
    prog = build_step_program(model, 64, "sgd")
    params = {n: start[n] for n in manifest.trainable + manifest.frozen}
    new_p, _, ref_loss, _, ref_err = reference_step(prog, x, y.astype(np.int64), 0.01, params,
                                                    {n: start[n] for n in manifest.optimizer_state})
    got = sess.values()
    assert err == 0.0 == ref_err and abs(loss - ref_loss) < 1e-5
    for n in manifest.trainable:
        np.testing.assert_allclose(got[n], new_p[n], atol=2e-6, rtol=0, err_msg=n)
