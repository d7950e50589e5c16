"""NIR import of graphs other tools wrote (snnTorch / Norse / Sinabs style: per-neuron parameter
arrays, v_reset != 0, r = tau/dt, CubaLIF, grouped / dilated / rectangular Conv2d, AvgPool2d,
Flatten, odd edge order, dotted names): a seeded fuzz checks that every graph either loads with
NIR's semantics (float64 forward-Euler reference below, spikes over T steps) or is refused in one
NIRError line; plus the malformed-graph cases that used to give tracebacks or misleading messages."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402

DT = 1e-4


def _pair(v):
    return tuple(int(i) for i in np.broadcast_to(np.ravel(v), (2,)))


def _nir_reference(graph, chain, x, dt):
    """float64 NIR semantics of the chain ``chain`` (keys Input..Output): forward Euler with ``dt``,
    CubaLIF's current updated before the potential, fire at ``v > thr``, reset to ``v_reset``,
    start at ``v_reset``; per-neuron arrays applied element-wise. ``x`` is ``[T, B, ...]``."""
    def p(a, h):
        t = torch.as_tensor(np.asarray(a, dtype=np.float64))
        return t.reshape(()) if t.numel() == 1 else t.reshape(h.shape[1:])

    state, outs = {}, []
    for t in range(x.shape[0]):
        h = x[t].double()
        for k in chain[1:-1]:
            n = graph.nodes[k]
            w = torch.as_tensor(np.asarray(getattr(n, "weight", 0.0), dtype=np.float64))
            if isinstance(n, nir.Affine):
                h = h @ w.T + torch.as_tensor(np.asarray(n.bias, dtype=np.float64))
            elif isinstance(n, nir.Linear):
                h = h @ w.T
            elif isinstance(n, nir.Conv2d):
                pad = n.padding if isinstance(n.padding, str) else _pair(n.padding)
                h = F.conv2d(h, w, torch.as_tensor(np.asarray(n.bias, dtype=np.float64)), stride=_pair(n.stride),
                             padding=pad, dilation=_pair(n.dilation), groups=int(n.groups))
            elif isinstance(n, nir.AvgPool2d):
                h = F.avg_pool2d(h, _pair(n.kernel_size), _pair(n.stride), _pair(n.padding))
            elif isinstance(n, nir.Flatten):
                h = h.flatten(n.start_dim + 1 if n.start_dim >= 0 else n.start_dim,
                              n.end_dim + 1 if n.end_dim >= 0 else n.end_dim)
            else:  # LIF / CubaLIF
                vr = p(n.v_reset, h).expand_as(h)
                if isinstance(n, nir.CubaLIF):
                    v, i = state.get(k, (vr, torch.zeros_like(h)))
                    i = i + dt / p(n.tau_syn, h) * (-i + p(n.w_in, h) * h)
                    v = v + dt / p(n.tau_mem, h) * (p(n.v_leak, h) - v + p(n.r, h) * i)
                else:
                    v, i = state.get(k, (vr, None))
                    v = v + dt / p(n.tau, h) * (p(n.v_leak, h) - v + p(n.r, h) * h)
                h = (v > p(n.v_threshold, h)).double()
                state[k] = (torch.where(h > 0, vr, v), i)
        outs.append(h)
    return torch.stack(outs)


def _neuron(rng, shape, loadable):
    """A LIF or CubaLIF as other tools write them (arrays of the layer's shape); ``loadable=False``
    gives one of the variants edgesnn's LIF cannot represent."""
    tau = float(rng.choice([1.5, 2.5, 4.0, 10.0]))
    v_reset = float(rng.uniform(-0.4, 0.15))
    f = dict(tau=tau * DT, r=float(rng.choice([1.0, tau])), v_leak=v_reset, v_threshold=float(rng.uniform(0.2, 1.2)),
             v_reset=v_reset)
    vary = None
    if not loadable:
        bad = rng.randint(4)
        if bad == 0:
            f["tau"] = 0.5 * DT
        elif bad == 1:
            f["r"] = 0.5
        elif bad == 2:
            f["v_leak"] = v_reset + 0.2
        else:
            vary = str(rng.choice(["tau", "r", "v_leak", "v_threshold", "v_reset"]))
    arrs = {k: np.full(shape, v, np.float32) for k, v in f.items()}
    if vary:  # one value per neuron, really different
        arrs[vary] = arrs[vary] + np.linspace(0.01, 0.1, arrs[vary].size, dtype=np.float32).reshape(shape) * \
            max(abs(float(f[vary])), 1e-4)
    if rng.rand() < 0.3:
        return nir.CubaLIF(tau_syn=np.full(shape, DT, np.float32), tau_mem=arrs["tau"], r=arrs["r"], v_leak=arrs["v_leak"],
                           v_threshold=arrs["v_threshold"], v_reset=arrs["v_reset"], w_in=np.ones(shape, np.float32))
    return nir.LIF(**arrs)


def _random_graph(seed):
    """(graph, node keys Input..Output, input shape, expected to load)."""
    rng = np.random.RandomState(seed)
    loadable = rng.rand() < 0.7
    conv = rng.rand() < 0.5
    shape = (int(rng.randint(1, 4)), int(rng.randint(4, 10)), int(rng.randint(4, 10))) if conv else (int(rng.randint(2, 8)),)
    in_shape, nodes = shape, [("input", nir.Input(np.array(shape)))]
    for i in range(int(rng.randint(1, 4))):
        c = rng.rand()
        if len(shape) == 3 and c < 0.4:
            C, H, W = shape
            groups = int(rng.choice([g for g in (1, 2, 3) if C % g == 0]))
            kh, kw = int(rng.randint(1, min(3, H) + 1)), int(rng.randint(1, min(3, W) + 1))
            dil = int(rng.choice([1, 2])) if min(H, W) > 6 else 1
            pad = [0, 1, "same", "valid"][rng.randint(4)]
            w = (rng.randn(groups * int(rng.randint(1, 3)), C // groups, kh, kw) * 0.7).astype(np.float32)
            node = nir.Conv2d(input_shape=(H, W), weight=w, stride=1, padding=pad, dilation=dil, groups=groups,
                              bias=(rng.randn(w.shape[0]) * 0.1).astype(np.float32))
            with warnings.catch_warnings():  # torch: padding="same" with an even kernel
                warnings.simplefilter("ignore")
                shape = tuple(F.conv2d(torch.zeros(1, C, H, W), torch.as_tensor(w), None, 1, pad, dil, groups).shape[1:])
            nodes.append((f"features.{i}.conv", node))
        elif len(shape) == 3 and c < 0.55:
            nodes.append((f"pool{i}", nir.AvgPool2d(kernel_size=np.array([2, 1]), stride=np.array([2, 1]),
                                                    padding=np.array([0, 0]))))
            shape = (shape[0], shape[1] // 2, shape[2])
        elif len(shape) == 3 and c < 0.75:
            sd, ed = [(0, -1), (1, -1), (-2, -1), (0, 1)][rng.randint(4)]
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=sd, end_dim=ed)
            nodes.append((f"flat{i}", node))
            shape = tuple(int(s) for s in node.output_type["output"])
        elif len(shape) == 1 and c < 0.5:
            w = (rng.randn(int(rng.randint(2, 8)), shape[0]) * 0.8).astype(np.float32)
            nodes.append((f"fc.{i}", nir.Affine(w, (rng.randn(w.shape[0]) * 0.2).astype(np.float32)) if c < 0.35
                          else nir.Linear(w)))
            shape = (w.shape[0],)
        else:
            nodes.append((f"lif.{i}", _neuron(rng, shape, True)))
    nodes.append((f"lif.last", _neuron(rng, shape, loadable)))
    nodes.append(("output", nir.Output(np.array(shape))))
    keys = [k for k, _ in nodes]
    edges = list(zip(keys[:-1], keys[1:]))
    rng.shuffle(edges)  # edge order is not execution order
    items = nodes[:]
    rng.shuffle(items)
    return nir.NIRGraph(nodes=dict(items), edges=edges, type_check=False, metadata={"dt": DT}), keys, in_shape, loadable


def test_foreign_graphs_load_with_nir_semantics_or_are_refused_in_one_line(tmp_path):
    loaded = refused = 0
    for seed in range(40):
        g, keys, in_shape, loadable = _random_graph(seed)
        src = g
        if seed % 4 == 0:  # through the on-disk format too
            src = tmp_path / f"g{seed}.nir"
            nir.write(str(src), g)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's padding="same" note
            try:
                m = enir.load(src, timesteps=8, backend="torch")
            except enir.NIRError as e:
                assert not loadable, f"seed {seed}: refused a loadable graph: {e}"
                assert "\n" not in str(e) and str(e).startswith(("node lif.last:", "node lif.last ")), str(e)
                refused += 1
                continue
        assert loadable, f"seed {seed}: loaded a graph edgesnn cannot represent"
        x = torch.rand(8, 3, *in_shape, generator=torch.Generator().manual_seed(seed)) * 2.5 - 0.5
        ref = _nir_reference(g, keys, x, DT)
        with torch.no_grad():
            out = m.body(x).double()
        assert out.shape == ref.shape and torch.equal(out, ref), f"seed {seed}: spikes differ from NIR's"
        loaded += 1
    assert loaded >= 15 and refused >= 5


def _lif(shape=(3,)):
    f = lambda v: np.full(shape, v, np.float32)  # noqa: E731
    return nir.LIF(tau=f(3 * DT), r=f(1.0), v_leak=f(0.1), v_threshold=f(0.5), v_reset=f(0.1))


def _graph(nodes, edges):
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": DT})


@pytest.mark.parametrize("bad", [None, ("input", "lif", "output"), "input", "io"])
def test_an_edge_that_is_not_a_pair_is_a_one_line_error(bad):
    g = _graph({"input": nir.Input(np.array([3])), "lif": _lif(), "output": nir.Output(np.array([3])), "i": _lif(),
                "o": nir.Output(np.array([3]))}, [("input", "lif"), ("lif", "output"), bad])
    with pytest.raises(enir.NIRError, match=r"^graph: edge .* is not a \(source, target\) pair of node names$"):
        enir.load(g)


@pytest.mark.parametrize("field, value, message", [
    ("tau", "abc", r"^node lif: nir\.LIF tau is not real numbers \(str of <U3\)$"),
    ("v_reset", None, r"^node lif: v_reset: expected real numbers \(one value or one per neuron\), got None"),
    ("weight", "w", r"^node fc: nir\.Affine weight is not real numbers \(str of <U1\)$"),
])
def test_non_numeric_parameters_are_one_line_errors(field, value, message):
    fc, lif = nir.Affine(np.eye(3, dtype=np.float32), np.zeros(3, np.float32)), _lif()
    setattr(fc if field == "weight" else lif, field, value)
    g = _graph({"input": nir.Input(np.array([3])), "fc": fc, "lif": lif, "output": nir.Output(np.array([3]))},
               [("input", "fc"), ("fc", "lif"), ("lif", "output")])
    with pytest.raises(enir.NIRError, match=message):
        enir.load(g)


def test_node_names_with_a_slash_written_by_nir_get_a_clear_error(tmp_path):
    g = _graph({"input": nir.Input(np.array([3])), "net/lif": _lif(), "output": nir.Output(np.array([3]))},
               [("input", "net/lif"), ("net/lif", "output")])
    enir.load(g)  # in memory the name is fine
    path = tmp_path / "slash.nir"
    nir.write(str(path), g)  # stores "net/lif" as group "net" holding group "lif": nir.read cannot read it back
    with pytest.raises(enir.NIRError, match=r"^nir: .*slash\.nir: node group\(s\) \['net'\] hold no node type: "
                                            r"nir\.write stores a node name containing '/'"):
        enir.load(path)


def test_in_memory_graph_with_integer_node_keys_loads():
    g = _graph({0: nir.Input(np.array([3])), 1: _lif(), 2: nir.Output(np.array([3]))}, [(1, 2), (0, 1)])
    m = enir.load(g, timesteps=4, backend="torch")
    x = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        assert torch.equal(m.body(x).double(), _nir_reference(g, [0, 1, 2], x, DT))
