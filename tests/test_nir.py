"""NIR interchange: edgesnn -> NIR -> edgesnn with identical outputs, the LIF parameter mapping,
refusals (RevLIF, soft reset, non-LIF nodes) and SpikingJelly's own NIR exchange both ways."""

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402
from edgesnn.checkpoint import save_checkpoint  # noqa: E402
from edgesnn.cli import main  # noqa: E402
from edgesnn.models import build_model  # noqa: E402

SHAPES = {"mlp": (64,), "convnet": (2, 8, 8)}


def _model(name, neuron="lif", node=None, seed=0):
    torch.manual_seed(seed)
    m = build_model(name, SHAPES[name], 10, 4, neuron, node=node)
    for mod in m.modules():  # non-trivial BatchNorm statistics, so folding is really tested
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    return m.eval()


def _inputs(name, T=5, B=6):
    return torch.rand(T, B, *SHAPES[name], generator=torch.Generator().manual_seed(1)) * 3


@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model = _model(name, node={"tau": 3.0, "v_threshold": 0.7, "v_reset": -0.1, "decay_input": False})
    path = enir.write(model, tmp_path / "m.nir")
    loaded = enir.load(path)
    assert loaded.timesteps == model.timesteps and loaded.in_shape == model.in_shape
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in loaded.modules())  # folded
    x = _inputs(name)
    with torch.no_grad():
        assert torch.equal(model.body(x), loaded.body(x))  # spikes identical, so the logits are too
        assert torch.equal(model(x[0]), loaded(x[0]))
    # an edgesnn-made graph comes back as the same build_model network without BatchNorm: checkpointable
    assert loaded.config["name"] == name and loaded.config["batchnorm"] is False
    from edgesnn.training.loop import model_from_checkpoint

    again = model_from_checkpoint(str(save_checkpoint(tmp_path / "back.ckpt", loaded.config, loaded.state_dict())))
    with torch.no_grad():
        assert torch.equal(model.body(x), again.body(x))
    kinds = [type(n).__name__ for n in nir.read(str(path)).nodes.values()]
    assert kinds.count("LIF") == 2 and "BatchNorm" not in " ".join(kinds)


def test_lif_parameter_mapping():
    dt = 1e-3
    g = enir.to_nir(_model("mlp", node={"tau": 4.0, "v_threshold": 0.5, "v_reset": 0.2, "decay_input": True}), dt=dt)
    lif = [n for n in g.nodes.values() if isinstance(n, nir.LIF)][0]
    assert lif.tau.shape == (128,)
    np.testing.assert_allclose(lif.tau, 4.0 * dt)  # tau_N = tau * dt
    np.testing.assert_allclose(lif.r, 1.0)  # decay_input=True: R = 1
    np.testing.assert_allclose(lif.v_leak, 0.2)  # leaks towards v_reset
    np.testing.assert_allclose(lif.v_reset, 0.2)
    np.testing.assert_allclose(lif.v_threshold, 0.5)
    assert g.metadata["dt"] == dt and g.metadata["timesteps"] == 4
    g2 = enir.to_nir(_model("mlp", node={"tau": 4.0, "decay_input": False}))
    np.testing.assert_allclose([n for n in g2.nodes.values() if isinstance(n, nir.LIF)][0].r, 4.0)  # R = tau
    # one Euler step of NIR's ODE is edgesnn's charge equation
    lif_e = enir.load(g).body[2]
    assert (lif_e.params.tau, lif_e.params.v_threshold, lif_e.params.v_reset, lif_e.params.decay_input) == (4.0, 0.5, 0.2, True)


def test_export_cli_and_refusals(tmp_path, capsys):
    model = _model("convnet")
    ck = save_checkpoint(tmp_path / "m.ckpt", model.config, model.state_dict(), epoch=1)
    assert main(["export", "--checkpoint", str(ck), "--format", "nir", "--out", str(tmp_path / "out")]) == 0
    assert "wrote NIR graph" in capsys.readouterr().out
    loaded = enir.load(tmp_path / "out" / "model.nir")
    x = _inputs("convnet")
    with torch.no_grad():
        assert torch.equal(model.body(x), loaded.body(x))
    assert main(["export", "--checkpoint", str(ck), "--format", "nir", "--out", str(tmp_path / "out")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err

    rev = _model("mlp", neuron="revlif")
    ck2 = save_checkpoint(tmp_path / "rev.ckpt", rev.config, rev.state_dict(), epoch=1)
    assert main(["export", "--checkpoint", str(ck2), "--format", "nir", "--out", str(tmp_path / "rev.nir")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RevLIF has no NIR primitive" in err and "--neuron lif" in err
    assert not (tmp_path / "rev.nir").exists()

    with pytest.raises(enir.NIRError, match="soft reset"):
        enir.to_nir(_model("mlp", node={"v_reset": None}))
    plain = build_model("convnet", (2, 8, 8), 10, 4, batchnorm=False).eval()  # conv with bias, nothing to fold
    x = _inputs("convnet")
    with torch.no_grad():
        assert torch.equal(plain.body(x), enir.load(enir.to_nir(plain)).body(x))


def test_load_refuses_what_edgesnn_cannot_represent():
    g = enir.to_nir(_model("mlp"))
    key = [k for k, n in g.nodes.items() if isinstance(n, nir.LIF)][0]
    n = g.nodes[key]
    g.nodes[key] = nir.LIF(tau=n.tau, r=n.r, v_leak=n.v_leak + 0.5, v_threshold=n.v_threshold, v_reset=n.v_reset)
    with pytest.raises(enir.NIRError, match="v_leak"):
        enir.load(g)
    g.nodes[key] = nir.IF(r=np.ones(128), v_threshold=np.ones(128))
    with pytest.raises(enir.NIRError, match="nir.IF has no edgesnn equivalent"):
        enir.load(g)
    g.nodes[key] = nir.LIF(tau=n.tau, r=n.r, v_leak=n.v_leak, v_threshold=np.linspace(0.5, 1, 128).astype(np.float32),
                           v_reset=n.v_reset)
    with pytest.raises(enir.NIRError, match="one value per layer"):
        enir.load(g)


def test_cuba_lif_without_synaptic_filter_loads_as_lif():
    dt, tau = 1e-4, 3.0
    shape = (5,)
    full = lambda v: np.full(shape, v, dtype=np.float32)  # noqa: E731
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array(shape)), "affine": nir.Affine(np.eye(5, dtype=np.float32), full(0.1)),
                            "cuba": nir.CubaLIF(tau_syn=full(dt), tau_mem=full(tau * dt), r=full(tau), v_leak=full(0.0),
                                                v_threshold=full(1.0), v_reset=full(0.0), w_in=full(1.0)),
                            "output": nir.Output(np.array(shape))},
                     edges=[("input", "affine"), ("affine", "cuba"), ("cuba", "output")])
    m = enir.load(g, dt=dt, timesteps=3)
    p = m.body[1].params
    assert (p.tau, p.decay_input, p.v_reset) == (pytest.approx(tau), False, 0.0)


def test_spikingjelly_nir_exchange_reads_our_graphs_and_we_read_its():
    pytest.importorskip("nirtorch")
    sj_nir = pytest.importorskip("spikingjelly.activation_based.nir_exchange")
    from spikingjelly.activation_based import functional as sjf
    from spikingjelly.activation_based import layer, neuron

    for name in ("mlp", "convnet"):  # edgesnn -> NIR -> SpikingJelly
        model = _model(name, node={"tau": 2.5, "v_reset": 0.0})
        gm = sj_nir.import_from_nir(enir.to_nir(model), dt=enir.DEFAULT_DT, step_mode="m")
        x = _inputs(name)
        with torch.no_grad():
            out, _ = gm(x)
            assert torch.equal(model.body(x), out)

    torch.manual_seed(0)  # SpikingJelly -> NIR -> edgesnn
    net = torch.nn.Sequential(layer.Flatten(step_mode="m"), layer.Linear(64, 32, step_mode="m"),
                              neuron.LIFNode(tau=3.0, decay_input=False, v_threshold=0.8, step_mode="m"),
                              layer.Linear(32, 10, step_mode="m"))
    x = torch.rand(4, 6, 1, 8, 8) * 2
    graph = sj_nir.export_to_nir(net, x, dt=1e-3)
    mine = enir.load(graph, dt=1e-3, timesteps=4)
    sjf.reset_net(net)
    with torch.no_grad():
        assert torch.equal(net(x), mine.body(x))
