"""Float-mode RevLIF: the reconstruction tolerance shared by the PyTorch check and the onnx-step export.

The float inverse amplifies rounding by about ``(1/beta)(1 + gamma (1 - 1/tau))`` per step, so a model
with beta = 0.5 passes the 1e-3 tolerance at T = 8 but exceeds it at T = 16 (measured 0.1-0.37 in
torch and in ONNX Runtime alike). The export refuses such a model up front (the device runner would
stop at its first step); an accepted one runs within the tolerance, and corruption is still caught.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesnn.functional.revlif import ReconstructionError, RevLIFParams
from edgesnn.functional.revlif_autograd import (RevLIFKernels, float_mode_refusal, float_mode_tolerance, revlif_multistep,
                                                torch_backward, torch_forward)


def _x(T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, 8, 16, generator=g) * 1.5


def _recon_error(p: RevLIFParams, T: int, corrupt: float = 0.0) -> float:
    """The torch backward's measured initial-state error (via its check, with the tolerance lifted)."""
    import edgesnn.functional.revlif_autograd as ra

    seen = []
    orig = ra.verify_reconstruction

    def spy(v0, v0_rec, counts, counts_rec, q, steps):
        seen.append(float((v0_rec - v0).abs().max()))
        return orig(v0, v0_rec, counts, counts_rec, q, steps)

    def corrupted_backward(y, v_T, bits, grad_y, grad_v_T, q):
        v_T = v_T.clone()
        v_T[0, 0, 0] += corrupt  # one neuron's saved final state, changed after the forward
        return torch_backward(y, v_T, bits, grad_y, grad_v_T, q)

    x = _x(T).requires_grad_(True)
    y, v_T = revlif_multistep(x, p, kernels=RevLIFKernels("corrupt", torch_forward, corrupted_backward))
    ra.verify_reconstruction = spy
    try:
        y.sum().backward()
    finally:
        ra.verify_reconstruction = orig
    return seen[0]


@pytest.mark.parametrize("beta,T", [(0.5, 16), (0.5, 32), (0.9, 32), (1.0, 32)])
def test_refused_settings_really_exceed_the_tolerance(beta, T):
    p = RevLIFParams(beta=beta, mode="float")
    why = float_mode_refusal(p, T)
    assert why and f"beta={beta:g}" in why and "mode='exact'" in why and "\n" not in why
    with pytest.raises(ReconstructionError, match="beta="):  # the torch check names the cause too
        _recon_error(p, T)


@pytest.mark.parametrize("beta,T", [(0.5, 4), (0.5, 8), (0.9, 16), (1.0, 16)])
def test_accepted_settings_stay_within_the_tolerance(beta, T):
    p = RevLIFParams(beta=beta, mode="float")
    assert float_mode_refusal(p, T) is None and float_mode_refusal(RevLIFParams(), 1000) is None  # exact: never
    assert _recon_error(p, T) <= float_mode_tolerance(p)


def test_a_corrupted_state_is_still_detected():
    p = RevLIFParams(beta=0.5, mode="float", lif=RevLIFParams().lif)
    assert float_mode_refusal(p, 4) is None
    assert _recon_error(p, 4) < 1e-5
    with pytest.raises(ReconstructionError, match="tolerance 0.001"):
        _recon_error(p, 4, corrupt=1e-3)  # grows by ~1/beta per step on the walk back


def _digits_model(T: int, beta: float):
    from edgesnn.models import build_model

    torch.manual_seed(0)
    return build_model("mlp", (64,), 10, T, neuron="revlif", hidden=(16, 16), node={"backend": "torch"},
                       revlif={"mode": "float", "beta": beta}).eval()


def test_export_tolerance_refuses_a_leaky_float_model_and_names_beta(tmp_path):
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError
    from edgesnn.export.recon_check import step_recon_tolerance
    from edgesnn.export.step_layers import plan_layers
    from edgesnn.models import build_model

    _, stages, _ = plan_layers(_digits_model(16, 0.5))
    with pytest.raises(ExportError, match=r"layer body\.\d+: RevLIF mode='float' with beta=0\.5 .*mode='exact'"):
        step_recon_tolerance(stages, 16)
    with pytest.raises(ExportError, match=r"^onnx-step: layer body\.\d+: RevLIF mode='float' with beta=0\.5 [^\n]*$"):
        export_onnx_step(_digits_model(16, 0.5), tmp_path / "art", 4)  # refused before anything is written
    assert not (tmp_path / "art").exists()
    _, stages, _ = plan_layers(_digits_model(8, 0.5))
    assert step_recon_tolerance(stages, 8) == pytest.approx(1e-3)
    exact = plan_layers(build_model("mlp", (64,), 10, 32, neuron="revlif", hidden=(16, 16)))[1]
    assert step_recon_tolerance(exact, 32) == 0.0


def test_device_steps_of_an_accepted_float_model_stay_within_the_exported_tolerance(tmp_path):
    pytest.importorskip("onnxruntime")
    from sklearn.datasets import load_digits

    from edgesnn.export.artifacts import validate_artifact_dir
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.recon_check import step_recon_tolerance
    from edgesnn.export.runner import import_plain_ort
    from edgesnn.export.step_layers import plan_layers
    from edgesnn.export.step_runner import StepSession

    T, B = 8, 16
    model = _digits_model(T, 0.5)
    export_onnx_step(model, tmp_path / "art", B, "sgd", 0.05)
    manifest = validate_artifact_dir(tmp_path / "art")
    tol = step_recon_tolerance(plan_layers(model)[1], T)
    assert manifest.recon_tolerance == pytest.approx(tol)
    with np.load(tmp_path / "art" / "init.npz") as npz:
        start = {k: npz[k] for k in npz.files}
    sess = StepSession(import_plain_ort(), tmp_path / "art", manifest, start, threads=1, lean_memory=True)
    sess.set_lr(0.05)
    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)
    errs = [sess.step(x[i * B:(i + 1) * B], y[i * B:(i + 1) * B])[2] for i in range(3)]
    assert 0.0 < max(errs) <= tol, errs


def test_data_beyond_the_predicted_state_scale_is_caught_by_the_check():
    """The prediction takes states of size max(1, |v_th|); inputs that drive the state further
    (here 16x, inputs in ±64) raise the actual error past the tolerance although the prediction passes. The backward's check
    catches it (``ReconstructionError``) instead of handing back a gradient of the wrong history."""
    from torch import nn

    from edgesnn.nn import RevLIF, SeqToANN

    def run(scale: float) -> None:
        torch.manual_seed(0)
        m = nn.Sequential(SeqToANN(nn.Linear(4, 8)),
                          RevLIF(groups=2, mode="float", beta=0.5, gamma=1.0, alpha=0.3, tau=1.01, v_threshold=0.5))
        x = (torch.rand(12, 4, 4) * 2 - 1) * scale
        assert float_mode_refusal(m[1].params, 12) is None
        m(x.requires_grad_()).sum().backward()

    run(4.0)
    with pytest.raises(ReconstructionError, match="mode='exact'"):
        run(64.0)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_an_unbounded_float_state_overflows_with_advice_that_names_the_parameters(backend):
    # beta + gamma (1 - 1/tau) = 1.15: the state of a neuron that never fires grows geometrically;
    # "scale the input down or use a wider dtype" (the old advice) cannot help, the parameters can
    from edgesnn.functional.checks import NonFiniteInputError
    from edgesnn.functional.revlif_autograd import float_state_growth
    from edgesnn.nn import RevLIF

    node = RevLIF(mode="float", beta=0.9, gamma=0.5, backend=backend)
    assert float_state_growth(node.params) > 1.0 > float_state_growth(RevLIF(mode="float").params)
    x = torch.full((1000, 1, 2), -1e-3)
    with pytest.raises(NonFiniteInputError) as e:
        node(x)
    msg = str(e.value)
    assert "\n" not in msg and "beta=0.9, gamma=0.5 and tau=2" in msg and "mode='exact'" in msg
    assert "scale the input down" not in msg
    with torch.no_grad():  # bounded parameters: no overflow on the same input
        assert torch.isfinite(RevLIF(mode="float", backend=backend)(x)).all()
