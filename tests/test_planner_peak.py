"""The planner ranks choices by the predicted *peak*, and a plan only trains the model it was made for."""


from edgesnn import cli
from edgesnn.devices import load_device
from edgesnn.models import build_model
from edgesnn.planner import make_plan, save_plan
from edgesnn.planner.cli import parse_bytes


def _mlp_plan(neurons, batch=None):
    model = build_model("mlp", (784,), 10, 32, neuron="lif", hidden=(1024, 1024))
    kinds = tuple(neurons.split(","))
    return make_plan(model, load_device("jetson-orin-nano-4gb"), 32, batch, parse_bytes("1.5GiB"), kinds=kinds)  # (the board runs 0.95 GiB of runtime)


def test_allowing_revlif_never_plans_a_smaller_batch_than_lif_only():
    # the case: ranking by saved bytes picked RevLIF layers whose backward workspace raised
    # the peak, so allowing RevLIF gave a smaller batch than LIF alone, and a batch LIF alone fits
    # was called impossible
    lif_only = _mlp_plan("lif")
    both = _mlp_plan("lif,revlif")
    assert both.batch >= lif_only.batch
    fits = _mlp_plan("lif,revlif", batch=lif_only.batch)
    assert fits.predicted["peak_bytes"] <= parse_bytes("1.5GiB")


def test_train_refuses_a_plan_for_another_input(tmp_path, capsys):
    model = build_model("vgg11", (3, 32, 32), 10, 2, neuron="lif")
    plan = make_plan(model, load_device("raspberry-pi-4-4gb"), 2, 4, parse_bytes("2GiB"))
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    rc = cli.main(["train", "--plan", str(path), "--dataset", "digits", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--plan" in err[0] and "3x32x32" in err[0] and "1x8x8" in err[0]
