"""NIR import of graphs edgesnn did not write: hand-built graphs load with NIR's semantics (checked
against a float64 step-by-step NIR reference) or fail with one NIRError line naming the node; NaN/Inf
parameters, edges naming no node, files that are not NIR graphs, bad ``timesteps`` and bad shapes
are refused; round trips of models without BatchNorm are exact."""

import warnings

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402
from edgesnn.models import build_model  # noqa: E402
from edgesnn.nn import LIF, SeqToANN  # noqa: E402

from _nir_reference import nir_simulate  # noqa: E402  (tests/ helper)

DT = 1e-4


def _full(shape, v):
    return np.full(shape, v, dtype=np.float32)


def _lif(shape, tau=2.5, r=1.0, v_leak=0.1, thr=0.6, v_reset=0.1):
    return nir.LIF(tau=_full(shape, tau * DT), r=_full(shape, r), v_leak=_full(shape, v_leak),
                   v_threshold=_full(shape, thr), v_reset=_full(shape, v_reset))


def _chain(nodes, metadata=None):
    keys = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(keys[:-1], keys[1:])), type_check=False,
                        metadata={"dt": DT} if metadata is None else metadata)


def _mlp_graph(weight=None, bias=None, lif=None, metadata=None):
    w = np.random.RandomState(0).randn(4, 3).astype(np.float32) if weight is None else weight
    b = np.zeros(4, np.float32) if bias is None else bias
    return _chain({"input": nir.Input(np.array([3])), "fc": nir.Affine(w, b), "lif": lif or _lif(4),
                   "output": nir.Output(np.array([4]))}, metadata)


def test_hand_built_conv_pool_flatten_graph_matches_nir_reference():
    rs = np.random.RandomState(0)
    g = _chain({"input": nir.Input(np.array([2, 9, 9])),
                "conv": nir.Conv2d(input_shape=(9, 9), weight=rs.randn(4, 2, 3, 3).astype(np.float32) * 0.5,
                                   bias=rs.randn(4).astype(np.float32) * 0.1, stride=np.array([2, 2]),
                                   padding=np.array([1, 0]), dilation=np.array([1, 1]), groups=1),
                "lif1": _lif((4, 5, 4)),
                "pool": nir.AvgPool2d(np.array([2, 2]), np.array([1, 1]), np.array([1, 1])),
                "lif2": _lif((4, 6, 5), tau=4.0, r=4.0, v_leak=-0.2, v_reset=-0.2, thr=0.1),
                "flat": nir.Flatten(input_type={"input": np.array([4, 6, 5])}, start_dim=0),
                "fc": nir.Affine(rs.randn(5, 120).astype(np.float32) * 0.3, _full(5, 0.1)),
                "lif3": _lif(5),
                "output": nir.Output(np.array([5]))})
    x = torch.rand(6, 3, 2, 9, 9, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        mine = enir.load(g, timesteps=6).body(x)
    ref = nir_simulate(g, x, DT)
    assert 0.05 < ref.mean() < 0.95  # spikes happen, and not everywhere
    assert torch.equal(mine.double(), ref)


@pytest.mark.parametrize("field", ["weight", "bias", "v_threshold", "v_reset", "tau"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_load_refuses_non_finite_parameters(field, bad):
    if field == "weight":
        w = np.ones((4, 3), np.float32)
        w[1, 2] = bad
        g = _mlp_graph(weight=w)
    elif field == "bias":
        g = _mlp_graph(bias=_full(4, bad))
    else:
        kw = {"thr": bad} if field == "v_threshold" else {"v_reset": bad, "v_leak": bad} if field == "v_reset" else {"tau": bad}
        g = _mlp_graph(lif=_lif(4, **kw))
    node = "fc" if field in ("weight", "bias") else "lif"
    with pytest.raises(enir.NIRError, match=rf"^node {node}: nir\.\w+ \w+ holds \d+ NaN/Inf value"):
        enir.load(g)


def test_to_nir_refuses_non_finite_weights():
    body = torch.nn.Sequential(SeqToANN(torch.nn.Linear(3, 4)), LIF()).eval()
    with torch.no_grad():
        body[0].module.weight[0, 0] = float("nan")
    with pytest.raises(enir.NIRError, match="weight holds 1 NaN/Inf value"):
        enir.to_nir(body, in_shape=(3,))


@pytest.mark.parametrize("edge", [("ghost", "lif"), ("fc", "ghost")])
def test_load_refuses_edges_that_name_no_node(edge):
    g = _mlp_graph()
    g.edges.append(edge)  # an extra input into lif from nowhere would otherwise be silently dropped
    with pytest.raises(enir.NIRError, match=rf"^graph: edge {edge[0]} -> {edge[1]} names no node 'ghost'$"):
        enir.load(g)


def test_load_refuses_files_and_objects_that_are_not_nir_graphs(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    (tmp_path / "text.nir").write_text("not hdf5")
    for name in ("other.h5", "text.nir"):
        with pytest.raises(enir.NIRError, match=rf"^nir: .*{name} is not a NIR graph file \(nir.read: "):
            enir.load(tmp_path / name)
    with pytest.raises(enir.NIRError, match="is not a file"):
        enir.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="^nir: no such file: "):
        enir.load(tmp_path / "missing.nir")
    for obj in (None, 42, {"nodes": {}}):
        with pytest.raises(enir.NIRError, match="^graph: expected a nir.NIRGraph or the path of a .nir file"):
            enir.load(obj)


def test_load_checks_timesteps():
    for bad in (0, -2, 2.5, True, "4"):
        with pytest.raises(enir.NIRError, match=r"^timesteps: expected an integer >= 1"):
            enir.load(_mlp_graph(), timesteps=bad)
    with pytest.raises(enir.NIRError, match=r"^metadata\['timesteps'\] of the graph .* got 'abc'$"):
        enir.load(_mlp_graph(metadata={"dt": DT, "timesteps": "abc"}))
    assert enir.load(_mlp_graph(), timesteps=np.int64(3)).timesteps == 3
    assert enir.load(_mlp_graph(), timesteps=5.0).timesteps == 5
    assert enir.load(_mlp_graph(metadata={"dt": DT, "timesteps": 7})).timesteps == 7
    assert enir.load(_mlp_graph(metadata={"dt": DT, "timesteps": 0})).timesteps == 4  # 0: none recorded


def test_load_names_the_node_for_bad_conv_padding_and_input_shape():
    w = np.ones((3, 2, 3, 3), np.float32)
    conv = nir.Conv2d(input_shape=(8, 8), weight=w, stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(3, np.float32))
    conv.stride, conv.padding = np.array([2, 2]), "same"  # torch has no strided 'same'
    g = _chain({"input": nir.Input(np.array([2, 8, 8])), "c": conv, "lif": _lif((3, 4, 4)), "output": nir.Output(np.array([3, 4, 4]))})
    with pytest.raises(enir.NIRError, match="^node c: nir.Conv2d: padding='same' is not supported for strided"):
        enir.load(g)
    g = _mlp_graph()
    g.nodes["input"].input_type = {"input": np.array([2.5])}  # not truncated to 2
    with pytest.raises(enir.NIRError, match=r"^node input: the input shape \[2.5\] is not a list of positive integers$"):
        enir.load(g)


def test_loaded_lif_on_a_4d_sequence_does_not_warn():
    """A LIF after a Flatten to [C, L] sees [T, B, C, L]: the loaded (always multi-step) body must not warn."""
    g = _chain({"input": nir.Input(np.array([2, 3, 4])),
                "flat": nir.Flatten(input_type={"input": np.array([2, 3, 4])}, start_dim=1),
                "lif": _lif((2, 12)), "output": nir.Output(np.array([2, 12]))})
    x = torch.rand(5, 3, 2, 3, 4, generator=torch.Generator().manual_seed(0)) * 2
    model = enir.load(g, timesteps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            out = model.body(x)
    assert torch.equal(out.double(), nir_simulate(g, x, DT))


@pytest.mark.parametrize("name,shape", [("mlp", (12,)), ("convnet", (2, 6, 6))])
def test_round_trip_without_batchnorm_decay_input_is_exact(tmp_path, name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 5, 3, hidden=(8, 8), channels=(4, 4), batchnorm=False,
                        node={"tau": 3.7, "v_threshold": 0.7, "v_reset": 0.25, "decay_input": True}).eval()
    loaded = enir.load(enir.write(model, tmp_path / "m.nir"))
    x = torch.rand(4, 3, *shape, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        assert torch.equal(model.body(x), loaded.body(x))
        assert torch.equal(model(x[0]), loaded(x[0]))


@pytest.mark.parametrize("start, end", [(-4, -1), (0, -4), (3, 3)])
def test_load_refuses_flatten_dims_outside_the_sample(start, end):
    """start_dim -4 on a 3-D sample reached the batch dim: the graph loaded and its forward failed
    with torch's reshape error."""
    shape = (2, 3, 3)
    g = nir.NIRGraph(nodes={"in": nir.Input(np.array(shape)), "l": _lif(shape),
                            "f": nir.Flatten(input_type=None, start_dim=start, end_dim=end),
                            "out": nir.Output(np.array([18]))},
                     edges=[("in", "l"), ("l", "f"), ("f", "out")], type_check=False)
    with pytest.raises(enir.NIRError, match=r"^node f: nir.Flatten (start|end)_dim -?\d is out of range") as e:
        enir.load(g, dt=DT)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("channels", [8, 4])
def test_to_nir_refuses_batchnorm_over_a_linears_channel_dim(channels):
    """A Linear on a [C, L] sample, then BatchNorm1d(C): BatchNorm normalises C, the fold scaled the
    Linear's output features. C == 8 == out features exported wrong weights (570 of 1920 spikes
    differed after the round trip), C = 4 a torch traceback."""
    from torch import nn

    bn = nn.BatchNorm1d(channels)
    body = nn.Sequential(SeqToANN(nn.Linear(6, 8), bn), LIF(step_mode="m")).eval()
    with pytest.raises(enir.NIRError, match=r"BatchNorm normalises dim 1 of the Linear's output \[\d, 8\]") as e:
        enir.to_nir(body, in_shape=(channels, 6))
    assert "\n" not in str(e.value)
    # one vector per sample: still folded, the round trip keeps the outputs
    torch.manual_seed(0)
    body = nn.Sequential(SeqToANN(nn.Linear(6, 8), nn.BatchNorm1d(8)), LIF(step_mode="m")).eval()
    with torch.no_grad():
        body[0].module[1].running_var.uniform_(0.5, 2)
        x = torch.rand(5, 3, 6) * 2
        back = enir.load(enir.to_nir(body, in_shape=(6,)))
        back.eval()
        assert torch.allclose(back.body(x), body(x))
