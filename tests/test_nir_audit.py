"""NIR audit: malformed graph fields (non-integer kernel / stride / padding / groups / Flatten dims,
weights beyond float32, complex weights, neuron arrays of the wrong size) are refused in one line
naming the node and field instead of being truncated or cast silently; ``to_nir`` / ``write`` name
the layer for an ``in_shape`` that does not fit, and ``write`` takes ``in_shape``."""

import numpy as np
import pytest
import torch

nir = pytest.importorskip("nir")

from edgesnn import nir as enir  # noqa: E402
from edgesnn.nn import LIF, SeqToANN  # noqa: E402

from _nir_reference import nir_simulate  # noqa: E402  (tests/ helper)

DT = 1e-4


def _full(shape, v):
    return np.full(shape, v, dtype=np.float32)


def _lif(shape):
    return nir.LIF(tau=_full(shape, 2.5 * DT), r=_full(shape, 1.0), v_leak=_full(shape, 0.0),
                   v_threshold=_full(shape, 0.5), v_reset=_full(shape, 0.0))


def _chain(nodes):
    keys = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(keys[:-1], keys[1:])), type_check=False, metadata={"dt": DT})


def _conv(**kw):
    args = dict(input_shape=(6, 6), weight=np.ones((2, 1, 3, 3), np.float32), bias=np.zeros(2, np.float32),
                stride=np.array([1, 1]), padding=np.array([0, 0]), dilation=np.array([1, 1]), groups=1)
    args.update(kw)
    return nir.Conv2d(**args)


def _conv_graph(node, out_shape):
    return _chain({"input": nir.Input(np.array([1, 6, 6])), "n": node, "lif": _lif(out_shape),
                   "output": nir.Output(np.array(out_shape))})


def _mlp(weight=None, lif=None, bias=None):
    w = np.random.RandomState(0).randn(4, 3).astype(np.float32) if weight is None else weight
    return _chain({"input": nir.Input(np.array([3])), "fc": nir.Affine(w, np.zeros(4, np.float32) if bias is None else bias),
                   "lif": lif or _lif(4), "output": nir.Output(np.array([4]))})


@pytest.mark.parametrize("field, node, out_shape", [
    ("kernel_size", nir.AvgPool2d(np.array([2.5, 2.5]), np.array([2, 2]), np.array([0, 0])), (1, 3, 3)),
    ("stride", nir.AvgPool2d(np.array([2, 2]), None, np.array([0, 0])), (1, 3, 3)),
    ("stride", _conv(stride=np.array([1.7, 1.7])), (2, 4, 4)),
    ("padding", _conv(padding=np.array([0.5, 0.5])), (2, 4, 4)),
    ("dilation", _conv(dilation=np.array([1.5, 1.5])), (2, 4, 4)),
    ("groups", _conv(groups=1.5), (2, 4, 4)),
])
def test_non_integer_pool_and_conv_fields_are_refused_not_truncated(field, node, out_shape):
    # old code: int(2.5) -> 2, int(1.7) -> 1, int(0.5) -> 0 gave a different network without a word
    with pytest.raises(enir.NIRError, match=rf"^node n: nir\.\w+ {field}: expected [^\n]*integer"):
        enir.load(_conv_graph(node, out_shape))


@pytest.mark.parametrize("value", [1.5, "a"])
def test_non_integer_flatten_dims_are_one_line_errors(value):
    flat = nir.Flatten(input_type=None, start_dim=0)
    flat.start_dim = value  # old code: a TypeError traceback from torch or from ">="
    g = _chain({"input": nir.Input(np.array([2, 3])), "fl": flat, "lif": _lif(6), "output": nir.Output(np.array([6]))})
    with pytest.raises(enir.NIRError, match=r"^node fl: nir\.Flatten start_dim: expected an integer, got"):
        enir.load(g)


def test_integer_fields_given_as_whole_floats_still_load_and_match_nir():
    g = _conv_graph(_conv(stride=np.array([2.0, 2.0]), padding=np.array([1.0, 1.0]), groups=1.0), (2, 3, 3))
    x = torch.rand(4, 2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        mine = enir.load(g, timesteps=4).body(x)
    assert mine.shape == (4, 2, 2, 3, 3) and mine.sum() > 0
    ref = _conv_graph(_conv(stride=np.array([2, 2]), padding=np.array([1, 1])), (2, 3, 3))  # same graph, ints
    assert torch.equal(mine, nir_simulate(ref, x, DT).float())


def test_weights_beyond_float32_are_refused_not_loaded_as_inf():
    w = np.random.RandomState(0).randn(4, 3) * 1e300  # finite in float64, Inf once cast to float32
    with pytest.raises(enir.NIRError, match=r"^node fc: nir\.Affine weight holds 12 value\(s\) of 12 beyond the float32"):
        enir.load(_mlp(weight=w))
    with pytest.raises(enir.NIRError, match=r"^node fc: nir\.Affine bias holds 1 value\(s\) of 4 beyond"):
        enir.load(_mlp(bias=np.array([0.0, 0.0, 1e39, 0.0])))


def test_complex_weights_are_refused_not_cut_to_their_real_part():
    w = np.random.RandomState(0).randn(4, 3).astype(np.complex64) * (1 + 1j)
    with pytest.raises(enir.NIRError, match=r"^node fc: nir\.Affine weight is not real numbers \(ndarray of complex64\)$"):
        enir.load(_mlp(weight=w))


@pytest.mark.parametrize("field", ["v_reset", "v_leak"])
def test_neuron_arrays_of_the_wrong_size_are_refused(field):
    lif = _lif(4)
    setattr(lif, field, _full(7, 0.0))  # 7 values for a 4-neuron layer: a broken graph, loaded before
    with pytest.raises(enir.NIRError, match=rf"^node lif: nir\.LIF {field} holds 7 values, its input has shape \(4,\)"):
        enir.load(_mlp(lif=lif))


def _body():
    torch.manual_seed(0)
    return torch.nn.Sequential(SeqToANN(torch.nn.Linear(3, 5)), LIF(tau=3.0, v_threshold=0.5, step_mode="m"))


def test_to_nir_names_the_layer_when_in_shape_does_not_fit():
    with pytest.raises(enir.NIRError, match=r"^layer 0\.module: Linear cannot take one sample of shape \(4,\) "
                                            r"\(in_shape \(4,\)\): .*mat1 and mat2"):  # torch 2.15 says 'addmm: mat1 ...'
        enir.to_nir(_body(), in_shape=(4,))


@pytest.mark.parametrize("bad", [(-3,), "3", (2.5,), (0, 3)])
def test_to_nir_refuses_a_bad_in_shape_in_one_line(bad):
    with pytest.raises(enir.NIRError, match=r"^to_nir: in_shape \(one sample's shape\): expected 1 to 8 integers >= 1, got"):
        enir.to_nir(_body(), in_shape=bad)


def test_write_takes_in_shape_for_a_plain_body(tmp_path):
    body = _body()
    path = enir.write(body, tmp_path / "b.nir", in_shape=(3,))  # old code: no in_shape parameter at all
    x = torch.rand(6, 2, 3, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        assert torch.equal(enir.load(path).body(x), body(x))
