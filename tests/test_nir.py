"""NIR interchange: edgesnn -> NIR -> edgesnn with identical outputs, the LIF parameter mapping,
refusals (RevLIF, soft reset, non-LIF nodes) and SpikingJelly's own NIR exchange both ways; the
threshold (NIR ``v > thr`` vs edgesnn ``v >= thr``) against a step-by-step NIR simulation, grouped
and rectangular Conv2d, shape / dt / backend checks."""

import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402
from edgesnn.checkpoint import save_checkpoint  # noqa: E402
from edgesnn.cli import main  # noqa: E402
from edgesnn.models import build_model  # noqa: E402
from edgesnn.nn import LIF, ParametricLIF, SeqToANN  # noqa: E402

from _nir_reference import nir_simulate  # noqa: E402  (tests/ helper)

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
    np.testing.assert_array_equal(lif.v_threshold, np.nextafter(np.float32(0.5), -np.inf))  # NIR: v > thr
    assert g.metadata["dt"] == dt and g.metadata["timesteps"] == 4
    g2 = enir.to_nir(_model("mlp", node={"tau": 4.0, "decay_input": False}))
    np.testing.assert_allclose([n for n in g2.nodes.values() if isinstance(n, nir.LIF)][0].r, 4.0)  # R = tau
    # one Euler step of NIR's ODE is edgesnn's charge equation
    lif_e = enir.load(g).body[2]
    assert (lif_e.params.tau, lif_e.params.v_threshold, lif_e.params.v_reset, lif_e.params.decay_input) == (4.0, 0.5, 0.2, True)


@pytest.mark.parametrize("decay_input", [False, True])
def test_decay_input_of_a_tau_within_rounding_of_one_round_trips(decay_input):
    """decay_input=False exports R = tau; a tau within 1e-6 of 1 (a ParametricLIF that learned w > 14)
    made R also pass the R = 1 test, so the load picked decay_input=True and outputs changed."""
    m = _model("mlp", node={"tau": 1.0000005, "decay_input": decay_input})
    lif = enir.load(enir.to_nir(m)).body[2]
    assert lif.params.decay_input is decay_input


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


# ------------------------------------------------- thresholds, shapes, dt and backend checks
_DT = 1e-4


def _lif_graph(thr, r, n=3, tau_steps=2.0, v_reset=0.0, metadata=None):
    full = lambda v: np.full(n, v, dtype=np.float64)  # noqa: E731
    return nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "fc": nir.Linear(np.eye(n, dtype=np.float32)),
                               "lif": nir.LIF(tau=full(tau_steps * _DT), r=full(r), v_leak=full(v_reset),
                                              v_threshold=full(thr), v_reset=full(v_reset)),
                               "output": nir.Output(np.array([n]))},
                        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                        metadata={"dt": _DT} if metadata is None else metadata)


def _dyadic(T=12, B=4, n=3):
    """Inputs in steps of 1/4: with tau = 2 steps every potential is exact, so v == threshold happens."""
    return torch.randint(0, 5, (T, B, n), generator=torch.Generator().manual_seed(3)).float() / 4


@pytest.mark.parametrize("r,v_reset", [(2.0, 0.0), (1.0, 0.25)])
def test_threshold_import_fires_like_nir(r, v_reset):
    x = _dyadic()
    for thr in (1.0, 0.75):
        g = _lif_graph(thr, r, v_reset=v_reset)
        with torch.no_grad():
            mine = enir.load(g, timesteps=12).body(x)
        ref = nir_simulate(g, x, _DT)
        assert torch.equal(mine.double(), ref)
    # the audit's case: one unit input per step, threshold 1, v = 0.5 v + x: NIR fires at 1.5, not at 1.0
    one = torch.zeros(4, 1, 3)
    one[:, 0, 0] = 1.0
    with torch.no_grad():
        assert enir.load(_lif_graph(1.0, 2.0)).body(one)[:, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("decay_input", [False, True])
def test_threshold_export_fires_like_edgesnn_and_round_trips(decay_input):
    x = _dyadic()
    lin = torch.nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
    for thr in (1.0, 0.75, 0.7):
        body = torch.nn.Sequential(SeqToANN(lin), LIF(tau=2.0, v_threshold=thr, decay_input=decay_input)).eval()
        g = enir.to_nir(body, dt=_DT, in_shape=(3,))
        with torch.no_grad():
            want = body(x)
            assert torch.equal(nir_simulate(g, x, _DT), want.double())  # a NIR simulator fires where edgesnn does
            back = enir.load(g, timesteps=12).body
            assert torch.equal(back(x), want)
        assert back[1].params.v_threshold == float(np.float32(thr))  # exactly the threshold edgesnn compares with


def test_learnable_threshold_plif_round_trips():
    torch.manual_seed(0)
    plif = ParametricLIF(init_tau=3.0, learn_threshold=True, decay_input=False)
    with torch.no_grad():
        plif.w.add_(0.123)
        plif.v_threshold.fill_(0.77)
    body = torch.nn.Sequential(SeqToANN(torch.nn.Linear(10, 7)), plif).eval()
    g = enir.to_nir(body, dt=_DT, in_shape=(10,))
    back = enir.load(g, timesteps=6).body
    assert back[1].params.v_threshold == float(plif.v_threshold.detach())
    x = torch.rand(6, 3, 10, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        assert torch.equal(back(x), body(x))


def test_grouped_and_rectangular_conv_export_and_load(tmp_path):
    torch.manual_seed(0)
    body = torch.nn.Sequential(SeqToANN(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2)), LIF(v_threshold=0.3),
                               SeqToANN(torch.nn.Conv2d(4, 6, (3, 1), padding=(1, 0), groups=2)), LIF(v_threshold=0.3),
                               SeqToANN(torch.nn.AvgPool2d(2, padding=(0, 0), count_include_pad=False))).eval()
    path = tmp_path / "g.nir"
    nir.write(str(path), enir.to_nir(body, in_shape=(2, 8, 8)))

    class FsPath:  # any os.PathLike
        def __fspath__(self):
            return str(path)

    loaded = enir.load(FsPath(), timesteps=4)
    x = torch.rand(4, 2, 2, 8, 8, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        assert torch.equal(loaded.body(x), body(x))
    assert loaded.config["num_classes"] == 6 * 2 * 2


def test_load_reports_shape_mismatch_by_node():
    n = np.full(4, 1.0)
    fc = nir.Affine(np.ones((4, 5), np.float32), np.zeros(4, np.float32))  # takes 5 inputs, is fed 6
    g = nir.NIRGraph(nodes={"input": nir.Input(np.array([6])), "fc": fc,
                            "lif": nir.LIF(tau=n * 2e-4, r=n, v_leak=0 * n, v_threshold=n, v_reset=0 * n),
                            "output": nir.Output(np.array([4]))},
                     edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False, metadata={"dt": _DT})
    with pytest.raises(enir.NIRError, match=r"^node fc: nir.Affine takes 5 inputs .* shape \(6,\)$"):
        enir.load(g)


def test_to_nir_follows_the_model_dtype():
    torch.manual_seed(0)
    body = torch.nn.Sequential(SeqToANN(torch.nn.Conv2d(2, 3, 3)), LIF(), SeqToANN(torch.nn.Flatten()),
                               SeqToANN(torch.nn.Linear(3 * 6 * 6, 4)), LIF()).eval()
    g32 = enir.to_nir(body, in_shape=(2, 8, 8))
    g64 = enir.to_nir(body.double(), in_shape=(2, 8, 8))
    for k, node in g32.nodes.items():
        if hasattr(node, "weight"):
            np.testing.assert_array_equal(node.weight, g64.nodes[k].weight)
    np.testing.assert_array_equal(g64.nodes["output"].output_type["output"], [4])
    if torch.cuda.is_available():  # and the model's device
        g_cuda = enir.to_nir(body.float().cuda(), in_shape=(2, 8, 8))
        np.testing.assert_array_equal(g_cuda.nodes["output"].output_type["output"], [4])


def test_load_dt_and_backend_checks():
    g = _lif_graph(1.0, 2.0, metadata={})
    with pytest.warns(UserWarning, match=r"no dt .* assuming dt = 0\.0001 s .*load\(graph, dt=\.\.\.\)"):
        enir.load(g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enir.load(g, dt=np.float32(_DT)).config["dt"] == pytest.approx(_DT)  # a numpy float is accepted
        with pytest.raises(enir.NIRError, match=r"r = 2; .* dt=0\.0001 s"):  # the r error names dt
            enir.load(_lif_graph(1.0, 2.0, tau_steps=3.0))
    for bad in (0, 0.0, -1e-4, float("nan"), float("inf"), True, "1e-4"):
        with pytest.raises(enir.NIRError, match="^dt: expected seconds per time step"):
            enir.load(g, dt=bad)
    body = torch.nn.Sequential(SeqToANN(torch.nn.Linear(3, 3)), LIF())
    assert enir.to_nir(body, dt=np.float32(1e-3), in_shape=(3,)).metadata["dt"] == float(np.float32(1e-3))
    with pytest.raises(enir.NIRError, match="^dt: "):
        enir.to_nir(body, dt=True, in_shape=(3,))
    with pytest.raises(enir.NIRError, match=r"^backend: expected one of .*'bogus'"):
        enir.load(g, dt=_DT, backend="bogus")
    assert enir.load(g, dt=_DT, backend="torch").body[1].backend == "torch"


def test_load_messages_for_duplicate_edges_and_short_synapses():
    g = _lif_graph(1.0, 2.0)
    g.edges.append(("input", "fc"))
    with pytest.raises(enir.NIRError, match="duplicate edge input -> fc"):
        enir.load(g)
    f = np.full(3, 1.0)
    g = _lif_graph(1.0, 2.0)
    g.nodes["lif"] = nir.CubaLIF(tau_syn=f * _DT / 2, tau_mem=f * 3 * _DT, r=f, v_leak=0 * f, v_threshold=f, v_reset=0 * f)
    with pytest.raises(enir.NIRError, match="shorter than one step"):
        enir.load(g)
