"""`edgesnn plan` end to end (in process), plan JSON, apply(), error messages."""

import json

import pytest
import torch

from edgesnn import cli
from edgesnn.devices import load_device
from edgesnn.models import build_model, spiking_layers
from edgesnn.nn import LIF, RevLIF
from edgesnn.planner import apply, load_plan, neuron_specs
from edgesnn.planner.cli import parse_bytes


@pytest.fixture(autouse=True)
def only_planner(monkeypatch):
    # other sub-commands are developed in parallel; the planner's must work on its own
    monkeypatch.setattr(cli, "SUBCOMMANDS", ["edgesnn.planner.cli"])


def test_plan_cli_end_to_end(tmp_path, capsys):
    js, png = tmp_path / "plan.json", tmp_path / "mem.png"
    rc = cli.main(["plan", "--model", "vgg11", "--input", "3,32,32", "--timesteps", "8", "--batch", "auto",
                   "--device", "jetson-orin-nano-8gb", "--budget", "3GiB", "--json", str(js), "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "body.2" in out and "batch:" in out and "peak" in out
    plan = json.loads(js.read_text())
    assert plan["format"] == "edgesnn-plan" and plan["device"]["name"] == "jetson-orin-nano-8gb"
    assert len(plan["neuron"]) == 8 and plan["batch"] >= 1
    assert plan["predicted"]["peak_bytes"] <= plan["budget_bytes"] == 3 * 2**30
    assert all(L["neuron"] in ("lif", "revlif:2") for L in plan["layers"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_plan_apply_and_rebuild(tmp_path):
    js = tmp_path / "p.json"
    assert cli.main(["plan", "--model", "convnet", "--input", "3,16,16", "--timesteps", "4", "--batch", "8",
                     "--device", "raspberry-pi-4-4gb", "--neurons", "revlif", "--groups", "4", "--json", str(js)]) == 0
    plan = load_plan(js)
    assert neuron_specs(plan) == ["revlif:4", "revlif:4"]
    model = build_model("convnet", (3, 16, 16), 10, 4, neuron="lif", node={"backend": "torch", "tau": 3.0})
    apply(model, plan)
    nodes = [m for _, m in spiking_layers(model)]
    assert all(isinstance(n, RevLIF) and n.groups == 4 for n in nodes)
    assert nodes[0].params.lif.tau == 3.0 and nodes[0].backend == "torch"  # old node's settings kept
    assert model.config["neuron"] == ["revlif:4", "revlif:4"]
    out = model(torch.randn(2, 3, 16, 16))
    out.sum().backward()
    rebuilt = build_model("convnet", (3, 16, 16), 10, 4, neuron=neuron_specs(plan))
    assert [type(m) for _, m in spiking_layers(rebuilt)] == [RevLIF, RevLIF]
    # back to LIF
    plan.layers[0]["neuron"] = "lif"
    apply(model, plan)
    assert isinstance(spiking_layers(model)[0][1], LIF)


def test_apply_rejects_mismatched_model(tmp_path):
    js = tmp_path / "p.json"
    cli.main(["plan", "--model", "mlp", "--input", "20", "--hidden", "16,16,16", "--timesteps", "2", "--batch", "4",
              "--device", "raspberry-pi-5-4gb", "--json", str(js)])
    with pytest.raises(ValueError, match="3 spiking layers"):
        apply(build_model("mlp", (20,), 10, 2), js)


@pytest.mark.parametrize("argv,needle", [
    (["--input", "3,x,32"], "--input"),
    (["--device", "jetson-nano-1gb"], "available"),
    (["--batch", "zero"], "--batch"),
    (["--budget", "2 parsecs"], "--budget"),
    (["--budget", "300MiB", "--batch", "64"], "needs"),
])
def test_cli_errors_are_clear(argv, needle, capsys):
    base = {"--model": "vgg11", "--input": "3,32,32", "--timesteps": "8", "--batch": "auto",
            "--device": "jetson-orin-nano-8gb"}
    for k, v in zip(argv[::2], argv[1::2]):
        base[k] = v
    args = ["plan"] + [x for kv in base.items() for x in kv]
    assert cli.main(args) == 2
    assert needle in capsys.readouterr().err


def test_load_plan_rejects_garbage(tmp_path):
    f = tmp_path / "x.json"
    f.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_plan(f)
    f.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not an edgesnn plan"):
        load_plan(f)
    with pytest.raises(FileNotFoundError):
        load_plan(tmp_path / "none.json")


def test_parse_bytes():
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("4096") == 4096


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_plot_curves_at_the_plans_t_are_the_plans_peaks(backend, monkeypatch):
    """The plot left out the Numba kernels' runtime the plan counts: with the default backend every
    curve was 120 MiB low, so an all-LIF curve the plan calls over budget was drawn under it."""
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from edgesnn.planner.plan import make_plan
    from edgesnn.planner.plot import render_memory_vs_t

    drawn = {}
    real = matplotlib.axes.Axes.plot

    def spy(self, xs, ys, *a, **k):
        drawn[k.get("label")] = dict(zip(xs, ys))
        return real(self, xs, ys, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    model = build_model("convnet", (1, 8, 8), 10, 8, neuron="lif", node={"backend": backend})
    plan = make_plan(model, load_device("raspberry-pi-4-4gb"), 8, None, 600 * 2**20, dataset="digits")
    render_memory_vs_t(model, plan, "png")
    assert drawn["plan"][8] * 2**30 == pytest.approx(plan.predicted["peak_bytes"], rel=1e-9)
    assert drawn["all LIF"][8] * 2**30 == pytest.approx(plan.alternatives["all-lif"]["peak_bytes"], rel=1e-9)
