"""ONNX / ONNX Runtime training export: gradient parity with torch, SGD tracking, names, inference export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from test_export_common import CASES, make_batch, make_model, needs_onnx_runtime, needs_ort

BATCH = 8


def _ort_session(art_dir):
    from edgesnn.export.runner import import_ort_training_api

    ort, CheckpointState, Module, Optimizer = import_ort_training_api()
    ort.set_default_logger_severity(3)
    state = CheckpointState.load_checkpoint(str(art_dir / "checkpoint"))
    module = Module(str(art_dir / "training_model.onnx"), state, str(art_dir / "eval_model.onnx"))
    optimizer = Optimizer(str(art_dir / "optimizer_model.onnx"), module)
    return state, module, optimizer


def _torch_grads(model, x, y):
    """Gradients of the eager model (reference backend, eval-mode BatchNorm) for one batch."""
    from edgesnn.export.prepare import export_copy

    ref = export_copy(model)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in ref.named_parameters()}


@pytest.mark.parametrize("name,neuron,surrogate,batch", [(*case, BATCH) for case in CASES] + [("convnet", "lif", "atan", 1)])
@needs_ort
def test_ort_gradients_match_torch(tmp_path, name, neuron, surrogate, batch):
    # (batch 1: the graph's sizes after the input's expand over T were symbolic, and ORT's average-pool
    # gradient failed the first step in a reshape)
    from edgesnn.export.onnx_training import export_onnx_training

    model = make_model(name, neuron, surrogate)
    manifest = export_onnx_training(model, tmp_path / "art", batch_size=batch)
    assert manifest.trainable == [n for n, _ in model.named_parameters()]  # names preserved
    x, y = make_batch(name, batch)
    state, module, _ = _ort_session(tmp_path / "art")
    module.train()
    ort_loss = float(module(x.numpy(), y.numpy().astype(np.int64)))
    torch_loss, grads = _torch_grads(model, x, y)
    assert abs(ort_loss - torch_loss) <= 1e-5
    worst = 0.0
    for n, g in grads.items():
        g_ort = state.parameters[n].grad
        assert g_ort.shape == tuple(g.shape), n
        worst = max(worst, float(np.abs(g_ort - g.numpy()).max()))
    assert worst <= 1e-5, f"max |grad_ort - grad_torch| = {worst:.3g}"
    # the surrogate gradient must reach the parameters before the first spike (a dropped
    # stop-gradient would silently make these exactly zero)
    first = next(iter(grads))
    assert first in ("body.0.module.weight", "body.1.module.weight")  # conv: body.0, mlp: body.1 (after Flatten)
    assert float(np.abs(state.parameters[first].grad).max()) > 1e-4
    assert float(grads[first].abs().max()) > 1e-4


@needs_ort
def test_twenty_sgd_steps_track_torch(tmp_path):
    from edgesnn.export.onnx_training import export_onnx_training
    from edgesnn.export.prepare import export_copy

    model = make_model("mlp", "lif", "sigmoid")
    lr = 0.1
    export_onnx_training(model, tmp_path / "art", batch_size=BATCH, learning_rate=lr)
    state, module, optimizer = _ort_session(tmp_path / "art")
    optimizer.set_learning_rate(lr)
    module.train()
    ref = export_copy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=lr)
    ort_losses, torch_losses = [], []
    for step in range(20):
        x, y = make_batch("mlp", BATCH, seed=100 + step)
        ort_losses.append(float(module(x.numpy(), y.numpy().astype(np.int64))))
        optimizer.step()
        module.lazy_reset_grad()
        loss = torch.nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch_losses.append(loss.item())
    assert torch_losses[-1] < torch_losses[0]  # it did learn something
    np.testing.assert_allclose(ort_losses, torch_losses, atol=1e-5)
    worst = max(float(np.abs(state.parameters[n].data - p.detach().numpy()).max()) for n, p in ref.named_parameters())
    assert worst <= 1e-5, f"parameters drifted apart by {worst:.3g} after 20 steps"


@needs_ort
def test_onnx_graph_keeps_parameter_names_and_unrolls_time(tmp_path):
    import onnx

    from edgesnn.export.onnx_training import export_onnx_training

    model = make_model("convnet", "revlif", "atan")
    manifest = export_onnx_training(model, tmp_path / "art", batch_size=4)
    proto = onnx.load(str(tmp_path / "art" / "model.onnx"))
    inits = {i.name for i in proto.graph.initializer}
    assert {n for n, _ in model.named_parameters()} <= inits
    assert "body.1.module.running_mean" in manifest.frozen  # BatchNorm statistics stay frozen
    assert not {"Loop", "Scan"} & {n.op_type for n in proto.graph.node}
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 1, 8, 8]


@pytest.mark.parametrize("name,neuron,surrogate", [CASES[0], CASES[3]])
@needs_onnx_runtime
def test_inference_onnx_matches_eager_with_dynamic_batch(tmp_path, name, neuron, surrogate):
    import onnxruntime as ort

    from edgesnn.export.onnx_inference import export_onnx
    from edgesnn.export.prepare import export_copy

    model = make_model(name, neuron, surrogate)
    path = export_onnx(model, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (3, 5):
        x, _ = make_batch(name, batch, seed=batch)
        out = sess.run(["logits"], {"input": x.numpy()})[0]
        with torch.no_grad():
            ref = export_copy(model)(x).numpy()  # eager, reference backend
        np.testing.assert_allclose(out, ref, atol=1e-5)


def test_export_requires_reference_path_not_custom_function(tmp_path):
    """The export copy runs on the reference backend; the trained model is left untouched."""
    from edgesnn.export.prepare import export_copy
    from edgesnn.models import spiking_layers

    model = make_model("mlp", "revlif", "sigmoid")
    before = [m.backend for _, m in spiking_layers(model)]
    clone = export_copy(model, frozen_batchnorm_ops=True)
    assert all(m.backend == "reference" for _, m in spiking_layers(clone))
    assert [m.backend for _, m in spiking_layers(model)] == before
    x, _ = make_batch("mlp", 4)
    for _, node in spiking_layers(model):
        node.backend = "torch"  # the hand-written-backward PyTorch path: same forward values
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), atol=1e-5, rtol=0)


@needs_onnx_runtime
def test_an_optimize_memory_model_exports_as_the_plain_model(tmp_path):
    """The exporters traced the deep copy's chunked memopt blocks, whose Numba kernels got tracer tensors: a
    TypingError traceback from export_onnx and export_torchscript. The copy runs plain forwards; the model
    itself stays optimized."""
    import onnxruntime as ort

    import edgesnn
    from edgesnn.export.onnx_inference import export_onnx
    from edgesnn.export.torchscript import export_torchscript
    from edgesnn.memopt import MemoryOptimizedSequential

    model = make_model("convnet", "lif", "sigmoid")
    x, _ = make_batch("convnet", 4)
    with torch.no_grad():
        want = model.eval()(x).numpy()
    T = model.timesteps
    edgesnn.optimize_memory(model, x.unsqueeze(0).expand(T, *x.shape))
    sess = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["logits"], {"input": x.numpy()})[0], want, atol=1e-5)
    traced = torch.jit.load(str(export_torchscript(model, tmp_path / "m.pt")))
    with torch.no_grad():
        np.testing.assert_allclose(traced(x).numpy(), want, atol=1e-5)
    assert any(isinstance(m, MemoryOptimizedSequential) for m in model.modules())
