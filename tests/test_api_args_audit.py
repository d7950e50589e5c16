"""Argument handling of the public Python API outside edgesnn.nn (audit): each bad argument a user
plausibly passes is one line naming it, never a silently wrong result or a deep traceback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesnn.errors import UsageError
from edgesnn.functional import (LIFParams, RevLIFParams, TORCH_KERNELS, initial_state, lif_multistep,
                                lif_multistep_reference, lif_step, lif_step_vjp, revlif_multistep)
from edgesnn.models import build_model


@pytest.fixture(scope="module")
def mlp():
    return build_model("mlp", (64,), 10, 4, hidden=(16,))


# ------------------------------------------------------------------ functional


def test_lif_step_vjp_refuses_gradients_that_widen_h():
    h = torch.randn(3, 1)
    with pytest.raises(ValueError, match=r"^grad_s: expected the shape \(3, 1\) of h, got \(1, 3\)"):
        lif_step_vjp(h, torch.ones(1, 3), torch.ones(3, 1), LIFParams())
    gx, gv = lif_step_vjp(h, torch.ones(3, 1), torch.zeros(()), LIFParams())  # a scalar broadcasts: fine
    assert gx.shape == gv.shape == (3, 1)


@pytest.mark.parametrize("call", [
    lambda p: lif_multistep(torch.randn(3, 2, 4), p),
    lambda p: lif_multistep_reference(torch.randn(3, 2, 4), p),
    lambda p: lif_step(torch.randn(2, 4), torch.zeros(2, 4), p),
    lambda p: initial_state(torch.zeros(2), p),
])
def test_lif_functions_name_a_wrong_params_object(call):
    with pytest.raises(TypeError, match=r"^p: expected a LIFParams \(its \.lif holds the LIF part\), got RevLIFParams"):
        call(RevLIFParams())
    with pytest.raises(TypeError, match=r"^p: expected a LIFParams, got NoneType"):
        call(None)


def test_lif_step_names_a_numpy_input():
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor .* got ndarray"):
        lif_step(np.zeros((2, 4), np.float32), torch.zeros(2, 4), LIFParams())


def test_revlif_multistep_names_bad_params_and_kernels():
    x = torch.randn(3, 2, 4)
    with pytest.raises(TypeError, match=r"^p: expected a RevLIFParams, got LIFParams"):
        revlif_multistep(x, LIFParams())
    with pytest.raises(TypeError, match=r"^kernels: expected a RevLIFKernels"):
        revlif_multistep(x, RevLIFParams(), None, "numba")
    y, v = revlif_multistep(x, RevLIFParams(), None, TORCH_KERNELS)
    assert y.shape == x.shape and v.shape == x.shape[1:]


# ------------------------------------------------------------------ training


def test_train_config_refuses_string_flags_and_takes_an_integer_lr():
    from edgesnn.training import TrainConfig

    for field in ("memopt", "batchnorm"):
        with pytest.raises(UsageError, match=rf"^{field}: expected True or False, got 'no'"):
            TrainConfig(**{field: "no"}).validate()
    cfg = TrainConfig(lr=1)
    cfg.validate()
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize("kw, message", [
    (dict(seed=-1), r"^seed: expected an integer in \[0, 4294967295\], got -1"),
    (dict(seed="0"), r"^seed: expected an integer"),
    (dict(flat="no"), r"^flat: expected True or False, got 'no'"),
    (dict(log=3), r"^log: expected None or a callable"),
])
def test_load_dataset_names_bad_arguments(kw, message):
    from edgesnn.training import load_dataset

    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kw)


def test_evaluate_names_a_dataset_arrays_and_a_dtype_mismatch(mlp):
    from edgesnn.training import Dataset, Split, evaluate

    x, y = torch.rand(6, 64), torch.arange(6) % 10
    with pytest.raises(TypeError, match=r"^split: expected an edgesnn.training.Split \(its train or test split"):
        evaluate(mlp, Dataset("d", Split(x, y), Split(x, y), 10))
    with pytest.raises(TypeError, match=r"^split: expected torch.Tensor inputs x and labels y"):
        evaluate(mlp, Split(x.numpy(), y.numpy()))
    with pytest.raises(ValueError, match=r"^data: static inputs are float64, the model's parameters float32"):
        evaluate(mlp, Split(x.double(), y))
    assert 0.0 <= evaluate(mlp, Split(x, y)) <= 1.0


def test_train_and_model_from_checkpoint_name_bad_arguments():
    from edgesnn.training import TrainConfig, model_from_checkpoint, train

    quiet = dict(progress=False, log=lambda s: None, max_steps=1)
    with pytest.raises(TypeError, match=r"^cfg: expected an edgesnn.training.TrainConfig"):
        train({"epochs": 1}, **quiet)
    with pytest.raises(UsageError, match=r"^checkpoint: expected a file path"):
        train(TrainConfig(epochs=1), checkpoint=3, **quiet)
    with pytest.raises(TypeError, match=r"^log: expected a callable"):
        train(TrainConfig(epochs=1), progress=False, log=None, max_steps=1)
    with pytest.raises(UsageError, match=r"^path: expected a file path"):
        model_from_checkpoint(None)


@pytest.mark.parametrize("arg,value,message", [
    ("force", "no", r"^force: expected True or False, got 'no'"),  # (it was true: it overwrote a checkpoint)
    ("resume", "no", r"^resume: expected True or False"),
    ("progress", "yes", r"^progress: expected True or False"),
    ("sync_batchnorm", [], r"^sync_batchnorm: expected True or False"),
    ("device", 0, r"^device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got 0"),  # (0 is cuda:0)
    ("device", "", r"^--device: expected one of"),
    ("before_training", "x", r"^before_training: expected a callable"),
    ("planned_model", "plan.json", r"^planned_model: expected a plan's model config"),
])
def test_train_refuses_meaningless_arguments_before_it_writes_anything(tmp_path, arg, value, message):
    from edgesnn.training import TrainConfig, train

    ck = tmp_path / "run.ckpt"
    ck.write_bytes(b"the user's checkpoint")
    with pytest.raises((TypeError, UsageError), match=message):
        train(TrainConfig(epochs=1), checkpoint=ck, log=lambda s: None, max_steps=1, **{"progress": False, arg: value})
    assert ck.read_bytes() == b"the user's checkpoint"


# ------------------------------------------------------------------ planner


def test_apply_refuses_a_plan_for_another_input_or_T_and_to_dict_is_a_copy():
    from edgesnn.devices import load_device
    from edgesnn.planner import apply, make_plan

    plan = make_plan(build_model("mlp", (64,), 10, 4, hidden=(16,)), load_device("raspberry-pi-4-4gb"), 4, 8)
    with pytest.raises(ValueError, match=r"^plan: in_shape: expected \[32\] \(the model's\), got \[64\]"):
        apply(build_model("mlp", (32,), 10, 4, hidden=(16,)), plan)
    with pytest.raises(ValueError, match=r"^plan: timesteps: expected 8 \(the model's\), got 4"):
        apply(build_model("mlp", (64,), 10, 8, hidden=(16,)), plan)
    d = plan.to_dict()
    d["layers"][0]["neuron"] = "bogus"
    assert plan.layers[0]["neuron"] != "bogus"
    apply(build_model("mlp", (64,), 10, 4, hidden=(16,)), plan)  # the same model: accepted


# ------------------------------------------------------------------ nir and export


def test_nir_write_names_a_missing_path(mlp):
    from edgesnn.nir import NIRError, write

    with pytest.raises(NIRError, match=r"^path: expected a file path"):
        write(mlp.eval(), None)


def test_export_onnx_refuses_batch_zero_and_string_flags(mlp, tmp_path):
    pytest.importorskip("onnx")
    from edgesnn.export.onnx_inference import export_onnx
    from edgesnn.export.prepare import ExportError

    with pytest.raises(ExportError, match=r"^batch_size: expected None \(a dynamic batch\) or an integer >= 1, got 0"):
        export_onnx(mlp, tmp_path / "a.onnx", batch_size=0)
    with pytest.raises(ExportError, match=r"^event: expected True or False, got 'no'"):
        export_onnx(mlp, tmp_path / "a.onnx", event="no")
    with pytest.raises(ExportError, match=r"^path: expected a file path"):
        export_onnx(mlp, None)
    with pytest.raises(ExportError, match=r"^model: expected an edgesnn SpikingClassifier"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "a.onnx")
    assert not list(tmp_path.iterdir())


def test_export_onnx_step_checks_out_dir_and_flags_before_building(mlp, tmp_path):
    pytest.importorskip("onnx")
    from edgesnn.export.onnx_step import export_onnx_step
    from edgesnn.export.prepare import ExportError

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ExportError, match=r"^out_dir: .*file is a file; expected a folder"):
        export_onnx_step(mlp, f, batch_size=2)
    with pytest.raises(ExportError, match=r"^out_dir: expected a folder path"):
        export_onnx_step(mlp, None, batch_size=2)
    with pytest.raises(ExportError, match=r"^event: expected True or False, got 'no'"):
        export_onnx_step(mlp, tmp_path / "out", batch_size=2, event="no")
    with pytest.raises(ExportError, match=r"^model: expected an edgesnn SpikingClassifier, got NoneType"):
        export_onnx_step(None, tmp_path / "out", batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_torchscript_and_artifacts_name_bad_paths(mlp, tmp_path):
    from edgesnn.export.artifacts import ArtifactError, validate_artifact_dir
    from edgesnn.export.prepare import ExportError
    from edgesnn.export.torchscript import export_torchscript, load_torchscript

    with pytest.raises(ExportError, match=r"^batch_size: expected an integer >= 1, got '4'"):
        export_torchscript(mlp, tmp_path / "m.pt", batch_size="4")
    with pytest.raises(ValueError, match=r"^path: expected a TorchScript file path"):
        load_torchscript(None)
    with pytest.raises(IsADirectoryError, match=r"is a directory; expected a file written by export_torchscript"):
        load_torchscript(tmp_path)
    with pytest.raises(ArtifactError, match=r"^directory: expected an artifact folder path"):
        validate_artifact_dir(None)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArtifactError, match=r"f is a file; expected the artifact folder"):
        validate_artifact_dir(tmp_path / "f")


# ---------------------------------------------------------------- revlif step functions (lead, after the audit)


def test_revlif_step_functions_name_a_wrong_argument():
    from edgesnn.functional.lif import LIFParams
    from edgesnn.functional.revlif import RevLIFParams, revlif_step, revlif_step_backward

    p = RevLIFParams()
    x, v = torch.randn(2, 2, 4), torch.zeros(2, 2, 4)
    with pytest.raises(TypeError, match=r"^lif: expected a LIFParams, got NoneType$"):
        RevLIFParams(lif=None)
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor"):
        revlif_step(x.numpy(), v, p)
    with pytest.raises(TypeError, match=r"^v: expected a torch.Tensor"):
        revlif_step(x, None, p)
    with pytest.raises(TypeError, match=r"^p: expected a RevLIFParams, got LIFParams$"):
        revlif_step(x, v, LIFParams())
    y, v_new, bits = revlif_step(x, v, p)
    with pytest.raises(ValueError, match=r"^grad_y: expected the shape \(2, 2, 4\)"):
        revlif_step_backward(y, v_new, bits, torch.ones(2, 4), torch.zeros_like(v_new), p)
    x_rec, v_rec, _, _ = revlif_step_backward(y, v_new, bits, torch.ones_like(y), torch.zeros_like(v_new), p)
    assert torch.equal(v_rec, v)


@pytest.mark.parametrize("make, name", [
    (lambda v: LIFParams(tau=v), "tau"),
    (lambda v: LIFParams(v_threshold=v), "v_threshold"),
    (lambda v: RevLIFParams(alpha=v), "alpha"),
])
@pytest.mark.parametrize("value", [torch.tensor(3.0), np.array([3.0])])
def test_a_tensor_setting_is_named_as_a_tensor(make, name, value):
    """Node settings are plain numbers; a tensor (e.g. a learned tau passed on) is refused in one
    line that says it got a tensor and how to pass its value, not only "expected a finite number"."""
    with pytest.raises(ValueError) as err:
        make(value)
    msg = str(err.value)
    assert msg.startswith(f"{name}: expected a finite number") and "\n" not in msg
    assert f"(a {type(value).__module__.split('.')[0]}.{type(value).__name__}: pass a Python number" in msg


# ------------------------------------------------------------------ silently accepted values (session 52 audit)


def test_step_functions_refuse_what_the_multi_step_ones_refuse():
    from edgesnn.functional import lif_step, revlif_step, spike
    from edgesnn.functional.revlif import to_groups

    with pytest.raises(TypeError, match=r"^x: expected a floating dtype .*got int64$"):  # (it blamed v's dtype)
        lif_step(torch.ones(2, 8, dtype=torch.long), torch.zeros(2, 8), LIFParams())
    xg = to_groups(torch.randn(2, 8), 2, channel_dim=1)
    with pytest.raises(TypeError, match=r"^x: expected a floating dtype \(float32, float64\), got float16"):
        revlif_step(xg.half(), torch.zeros_like(xg), RevLIFParams())
    u = torch.randn(5, requires_grad=True)
    with pytest.raises(TypeError, match=r"^surrogate: expected a Surrogate"):  # (it failed in backward)
        spike(u, "sigmoid")


def test_revlif_groups_have_an_upper_bound():
    from edgesnn.nn import RevLIF

    with pytest.raises(ValueError, match=r"^groups: expected an integer from 2 to 65536, got 10000000$"):
        RevLIF(groups=10**7)  # (it took 30 s building the state bound; 2**63 ended in a MemoryError)


def test_dataset_and_neuron_arguments():
    from edgesnn.models import parse_neuron_spec
    from edgesnn.training.data import load_dataset

    with pytest.raises(ValueError, match=r"^timesteps: expected an integer >= 1, got 'abc'$"):
        load_dataset("digits", timesteps="abc")
    with pytest.raises(ValueError, match=r"^path: expected a folder or file path, got int$"):
        load_dataset("digits", path=0)
    with pytest.raises(ValueError, match=r"^neuron: bad group count in 'revlif:'"):  # (it ran as revlif:2)
        parse_neuron_spec("revlif:")
    assert parse_neuron_spec("revlif") == ("revlif", 2) and parse_neuron_spec("revlif:4") == ("revlif", 4)


def test_the_planner_takes_numpy_integers_as_the_nodes_do():
    from edgesnn.devices import load_device
    from edgesnn.planner import make_plan

    model = build_model("mlp", (64,), 10, 4, hidden=(16,))
    dev = load_device("raspberry-pi-4-4gb")
    # (it said "expected an integer >= 1, got np.int64(4)")
    assert make_plan(model, dev, np.int64(4), np.int64(8)).to_dict() == make_plan(model, dev, 4, 8).to_dict()


def test_wrong_argument_types_are_one_line_not_attribute_errors():
    import edgesnn.kernels as K
    from edgesnn.devices import load_device
    from edgesnn.functional import exact_state_bounds
    from edgesnn.memopt import uninstall
    from edgesnn.planner import make_plan, plan_model
    from edgesnn.training import TrainConfig

    x = torch.randn(4, 2, 8)
    with pytest.raises(TypeError, match=r"^p: expected a LIFParams, got str$"):
        K.lif_multistep(x, "sigmoid")
    with pytest.raises(TypeError, match=r"^p: expected a RevLIFParams, got LIFParams"):
        K.revlif_multistep(x, LIFParams())
    with pytest.raises(TypeError, match=r"^p: expected a RevLIFParams, got LIFParams$"):
        exact_state_bounds(LIFParams())
    with pytest.raises(TypeError, match=r"^model: expected an nn.Module, got str$"):
        uninstall("model")
    model = build_model("mlp", (64,), 10, 4, hidden=(16,))
    with pytest.raises(TypeError, match=r"^chain: expected the model's ChainModel"):
        plan_model(model, T=4, budget=2**30, runtime_overhead=0)
    dev = load_device("raspberry-pi-4-4gb")
    with pytest.raises(ValueError, match=r"^optimizer: expected one of"):
        make_plan(model, dev, 4, 8, optimizer=["adam"])
    with pytest.raises(ValueError, match=r"^--dataset: expected one of"):
        make_plan(model, dev, 4, 8, dataset=["digits"])
    with pytest.raises(UsageError, match=r"^dataset: expected a name \(str\), got \['digits'\]$"):
        TrainConfig(dataset=["digits"]).validate()
    with pytest.raises(UsageError, match=r"^hidden: expected a sequence of integers >= 1, got tensor\(16\)$"):
        TrainConfig(hidden=torch.tensor(16)).validate()


def test_to_nir_names_a_model_that_is_not_a_module():
    pytest.importorskip("nir")
    from edgesnn.nir.to_nir import to_nir

    with pytest.raises(Exception, match=r"^to_nir: model: expected an nn.Module .*got str$"):
        to_nir("model.ckpt")  # (it said to pass in_shape)


def test_train_takes_an_indexed_cpu_torch_device():
    from edgesnn.training.device import resolve_device

    # (check_train_call takes a torch.device; resolve_device then refused 'cpu:0')
    assert resolve_device(torch.device("cpu", 0)) == torch.device("cpu")
