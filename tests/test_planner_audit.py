"""Planner audit: inputs that were silently ignored, errors that blamed the wrong flag, and Python
entry points that crashed with AttributeError / TypeError instead of a one-line error naming the
parameter. Each test failed on the code before the fix."""

from pathlib import Path

import pytest

from edgesnn import cli, devices
from edgesnn.models import build_model
from edgesnn.planner import apply, load_plan, make_plan, neuron_specs, save_plan

PI = ["plan", "--model", "mlp", "--input", "784", "-T", "4", "--device", "raspberry-pi-4-4gb"]


@pytest.fixture(autouse=True)
def only_planner(monkeypatch):
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli"])


@pytest.fixture(scope="module")
def mlp():
    return build_model("mlp", (784,), 10, 4)  # has BatchNorm


@pytest.fixture(scope="module")
def pi():
    return devices.load_device("raspberry-pi-4-4gb")


def _error(argv, capsys, flag):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith(f"edgesnn plan: error: {flag}: "), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return out, err


@pytest.mark.parametrize("flag, base", [("--budget", PI), ("--json", PI), ("--plot", PI), ("--hidden", PI),
                                        ("--channels", ["plan", "--model", "convnet", "--input", "1,8,8", "-T", "2",
                                                        "--device", "raspberry-pi-4-4gb"])])
def test_empty_flag_value_is_an_error_not_the_default(flag, base, capsys, tmp_path, monkeypatch):
    """`--json ""` used to plan, print and write nothing (rc 0); `--budget ""` planned for the
    device's default budget; `--hidden ""` / `--channels ""` the default widths."""
    monkeypatch.chdir(tmp_path)
    out, err = _error([*base, flag, ""], capsys, flag)
    assert f"{flag}: expected" in err and "predicted" not in out and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra", [[], ["--memopt"]])
def test_max_batch_one_with_batchnorm_names_max_batch(extra, capsys):
    """Old: `--budget: only batch 1 fits ... raise the budget` (or `--device ...: only batch 1
    fits in 3.65 GiB`) although the 3.65 GiB budget held ~1000 samples: --max-batch 1 was the cause."""
    _, err = _error([*PI, "--max-batch", "1", *extra], capsys, "--max-batch")
    assert "BatchNorm" in err and "budget" not in err


def test_make_plan_max_batch_cap_one_with_batchnorm(mlp, pi):
    with pytest.raises(ValueError, match=r"^--max-batch: .*BatchNorm"):
        make_plan(mlp, pi, 4, None, max_batch_cap=1)
    assert make_plan(mlp, pi, 4, 2, max_batch_cap=1).batch == 2  # an explicit batch does not use the cap


@pytest.mark.parametrize("device", ["raspberry-pi-4-4gb", None, {"name": "x"}])
def test_make_plan_device_must_be_a_profile(mlp, device):
    """Old: AttributeError: 'str' object has no attribute 'memory_bytes'."""
    with pytest.raises(ValueError, match=r"^device: expected an edgesnn.devices.DeviceProfile") as info:
        make_plan(mlp, device, 4, None)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["1MiB", 1.5, float("nan"), True])
def test_make_plan_dataset_bytes_type(mlp, pi, value):
    """Old: "1MiB" gave `invalid literal for int() with base 10: '1MiB'` (no parameter named);
    1.5 was planned as 1 byte and True as 1 byte."""
    with pytest.raises(ValueError, match=r"^--dataset-bytes: expected a size >= 0"):
        make_plan(mlp, pi, 4, None, dataset_bytes=value)
    assert make_plan(mlp, pi, 4, 8, dataset_bytes=2.0**20).dataset["bytes"] == 2**20  # integral floats still count


def test_make_plan_refuses_a_T_the_model_does_not_run(mlp, pi):
    """Old: a model built for T=4 planned at T=16 gave a plan with timesteps 16 and model.timesteps 4:
    training runs T=4, the prediction was for 16."""
    with pytest.raises(ValueError, match=r"^T \(timesteps\): expected 4 \(the model was built with timesteps=4\)"):
        make_plan(mlp, pi, 16, None)
    assert make_plan(mlp, pi, 4, 8).timesteps == 4


def test_plan_io_entry_points_name_the_bad_argument(mlp, pi, tmp_path):
    """Old: AttributeError / TypeError tracebacks (e.g. `'NoneType' object has no attribute 'neuron'`)."""
    plan = make_plan(mlp, pi, 4, 8)
    cases = [(lambda: save_plan(plan.to_dict(), tmp_path / "p.json"), "plan: expected an edgesnn.planner.Plan"),
             (lambda: save_plan(plan, None), "path: expected a file path"),
             (lambda: load_plan(None), "plan: expected a file path"),
             (lambda: load_plan(3), "plan: expected a file path"),
             (lambda: apply(mlp, None), "plan: expected an edgesnn.planner.Plan"),
             (lambda: apply(None, plan), "model: expected a torch.nn.Module"),
             (lambda: neuron_specs(None), "plan: expected an edgesnn.planner.Plan")]
    for fn, start in cases:
        with pytest.raises(ValueError) as info:
            fn()
        assert str(info.value).startswith(start) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "p.json").exists()
    # the good forms still work
    path = save_plan(plan, tmp_path / "ok.json")
    assert neuron_specs(load_plan(path)) == plan.neuron == neuron_specs(plan.to_dict())
    assert apply(mlp, path) is mlp and apply(mlp, Path(path)) is mlp
