"""NIR graph shapes that misled: a non-1-D output node (the loaded model's logits are flattened to
``[B, prod(out_shape)]``, the ``num_classes`` its config says, while ``body`` keeps the graph's shape)
and recurrence (a cycle of edges, or snnTorch's nested recurrent subgraph), refused naming the cycle
instead of "feeds 2 nodes"."""

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402
from edgesnn.training.data import Split  # noqa: E402
from edgesnn.training.loop import evaluate  # noqa: E402

DT = 1e-4


def _lif(shape):
    f = lambda v: np.full(shape, v, np.float32)  # noqa: E731
    return nir.LIF(tau=f(3 * DT), r=f(1.0), v_leak=f(0.0), v_threshold=f(0.5), v_reset=f(0.0))


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": DT})


def _grid_graph():
    """input [2, 4] -> Affine (on the last dim) 4 -> 5 -> LIF -> output [2, 5]."""
    rng = np.random.RandomState(0)
    fc = nir.Affine(rng.rand(5, 4).astype(np.float32), rng.rand(5).astype(np.float32) * 0.2)
    return _graph({"input": nir.Input(np.array([2, 4])), "fc": fc, "lif": _lif((2, 5)), "output": nir.Output(np.array([2, 5]))},
                  [("input", "fc"), ("fc", "lif"), ("lif", "output")])


def test_a_non_1d_output_gives_flat_logits_of_num_classes(tmp_path):
    m = enir.load(_grid_graph(), timesteps=4, backend="torch")
    x = torch.rand(9, 2, 4, generator=torch.Generator().manual_seed(1)) * 3
    with torch.no_grad():
        spikes = m.body(x.unsqueeze(0).expand(4, *x.shape))
        logits = m(x)
    assert spikes.shape == (4, 9, 2, 5)  # the body keeps the graph's output shape (what a NIR simulator gives)
    assert logits.shape == (9, m.config["num_classes"]) == (9, 10)
    assert torch.equal(logits, spikes.mean(0).flatten(1))
    assert 0 < float(spikes.sum()) < spikes.numel()  # some spikes, not all: the comparison means something
    y = torch.arange(9) % 10  # labels over all 10 classes the config promises
    assert torch.isfinite(torch.nn.functional.cross_entropy(m(x), y))
    right = torch.arange(9) % 2 == 0  # 5 of the 9 labels are the model's top class
    y = torch.where(right, logits.argmax(1), (logits.argmax(1) + 1) % 10)
    assert evaluate(m, Split(x, y), batch_size=4) == 5 / 9
    # export writes the graph's own output shape back, and the loaded copy computes the same logits
    path = enir.write(m, tmp_path / "grid.nir")
    g = nir.read(str(path), type_check=False)  # nir 1.0.8 infers an Affine on [2, 4] as taking [4]
    assert list(g.nodes["output"].output_type["output"]) == [2, 5]
    again = enir.load(path, backend="torch")
    with torch.no_grad():
        assert torch.equal(again(x), logits)


def test_a_conv_output_gives_flat_logits():
    rng = np.random.RandomState(2)
    conv = nir.Conv2d(input_shape=(6, 6), weight=rng.rand(3, 2, 3, 3).astype(np.float32), stride=2, padding=1,
                      dilation=1, groups=1, bias=np.zeros(3, np.float32))
    g = _graph({"input": nir.Input(np.array([2, 6, 6])), "c": conv, "lif": _lif((3, 3, 3)),
                "output": nir.Output(np.array([3, 3, 3]))}, [("input", "c"), ("c", "lif"), ("lif", "output")])
    m = enir.load(g, timesteps=2, backend="torch")
    x = torch.rand(5, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert m(x).shape == (5, m.config["num_classes"]) == (5, 27)
        assert m.body(x.unsqueeze(0).expand(2, *x.shape)).shape == (2, 5, 3, 3, 3)


def _recurrent(self_loop=False):
    n = 3
    nodes = {"input": nir.Input(np.array([n])), "fc": nir.Affine(np.eye(n, dtype=np.float32), np.zeros(n, np.float32)),
             "lif": _lif((n,)), "output": nir.Output(np.array([n]))}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "output")]
    if self_loop:
        edges.append(("lif", "lif"))
    else:
        nodes["w_rec"] = nir.Linear(np.eye(n, dtype=np.float32) * 0.5)
        edges += [("lif", "w_rec"), ("w_rec", "lif")]
    return _graph(nodes, edges)


@pytest.mark.parametrize("self_loop, cycle", [(False, "lif -> w_rec -> lif"), (True, "lif -> lif")])
def test_a_recurrent_layer_is_refused_naming_its_cycle(tmp_path, self_loop, cycle):
    g = _recurrent(self_loop)
    message = rf"^graph: the edges form the recurrent cycle {cycle} \(a recurrent layer\); .*no recurrence$"
    with pytest.raises(enir.NIRError, match=message) as err:
        enir.load(g)
    assert "feeds" not in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "rec.nir"
    nir.write(str(path), g)  # the same from a file (edge ends come back as NumPy text)
    with pytest.raises(enir.NIRError, match=message):
        enir.load(path)


def test_a_branch_is_still_a_branch():
    g = _recurrent()
    g.edges[:] = [e for e in g.edges if e != ("w_rec", "lif")] + [("w_rec", "output")]  # lif fans out, no cycle
    with pytest.raises(enir.NIRError, match=r"^graph: node lif feeds 2 nodes; edgesnn loads feed-forward chains only$"):
        enir.load(g)


@pytest.mark.parametrize("ends", ["key", "dotted"])
def test_a_nested_recurrent_subgraph_is_refused_naming_its_cycle(ends):
    n = 3  # as snnTorch's export_to_nir writes an RSynaptic (and nirtorch names the ends "rsyn.input" / "rsyn.output")
    sub = nir.NIRGraph(nodes={"input": nir.Input(np.array([n])), "lif": _lif((n,)),
                              "w_rec": nir.Linear(np.eye(n, dtype=np.float32)), "output": nir.Output(np.array([n]))},
                       edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")], type_check=False)
    into, out_of = ("rsyn", "rsyn") if ends == "key" else ("rsyn.input", "rsyn.output")
    g = _graph({"input": nir.Input(np.array([n])), "fc": nir.Affine(np.eye(n, dtype=np.float32), np.zeros(n, np.float32)),
                "rsyn": sub, "output": nir.Output(np.array([n]))},
               [("input", "fc"), ("fc", into), (out_of, "output")])
    with pytest.raises(enir.NIRError, match=r"^node rsyn: nested nir\.NIRGraph with the recurrent cycle lif -> w_rec -> lif "
                                            r"\(a recurrent layer, .*no recurrence$"):
        enir.load(g)
    sub.edges.remove(("w_rec", "lif"))  # a feed-forward subgraph: still not loaded, and said so
    with pytest.raises(enir.NIRError, match=r"^node rsyn: nested nir\.NIRGraph \(a subgraph\); edgesnn loads one flat chain"):
        enir.load(g)
