"""Planner activation bytes vs saved-tensor hooks on configurations a random audit found wrong.

Each case is predicted by :func:`edgesnn.planner.solver.predict` and measured as
``tools/validate_planner.py`` measures it (unique saved storages, parameters and buffers excluded).
"""

import pytest
import torch

from _saved_bytes import saved_bytes_of_step
from edgesnn.models import build_model
from edgesnn.planner.costs import Cost
from edgesnn.planner.memory_model import ChainModel
from edgesnn.planner.solver import predict

try:
    import numba  # noqa: F401 - only whether it imports
    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False



def _check(name, shape, T, B, neuron, backend, events=False, revlif=None, **kw):
    torch.manual_seed(0)
    m = build_model(name, shape, 10, T, neuron=neuron, node={"backend": backend}, revlif=revlif, **kw)
    chain = ChainModel(m, events=events)
    opts = [neuron] * len(chain.spiking) if isinstance(neuron, str) else list(neuron)
    pred = predict(chain, opts, T, B, 0)
    x = torch.randn(T, B, *shape) if events else torch.randn(B, *shape)
    meas = saved_bytes_of_step(m, x)
    assert pred["activation_bytes"] == meas, (pred["activation_bytes"], meas)
    return chain, pred


# batch 1, static input repeated over T: the expanded view reshapes without a copy (old: +(T-1) x input)
@pytest.mark.parametrize("name,shape,T,neuron,kw", [
    ("mlp", (2, 4, 4), 4, ["lif", "revlif", "revlif:4"], dict(hidden=[8, 4, 4])),
    ("convnet", (3, 8, 8), 7, ["lif", "revlif"], dict(channels=[4, 8], pool="max")),
    ("vgg11", (1, 2, 2), 4, "lif", dict(batchnorm=False)),
])
def test_batch_one_repeated_input_is_not_copied(name, shape, T, neuron, kw):
    _check(name, shape, T, 1, neuron, "torch", **kw)


@pytest.mark.parametrize("B", [1, 2, 5])
def test_event_input_is_saved_as_is(B):
    chain, _ = _check("convnet", (1, 8, 8), 5, B, ["lif", "revlif:4"], "torch", events=True, channels=[8, 12])
    assert chain.events


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("mode,neuron", [("exact", ["revlif:4", "revlif", "lif"]), ("float", ["revlif:2", "revlif:4"])])
def test_fused_revlif_placeholder_is_counted(mode, neuron):
    # exact mode saves a 4-byte int32 counts placeholder per RevLIF layer, float mode a 1-byte bits one (old: missing)
    _check("mlp", (16,), 3, 2, neuron, "numba", revlif={"mode": mode}, hidden=[16, 12, 32][:len(neuron)], batchnorm=False)


def test_repeat_cost_counts_one_step_for_one_sample():
    c = Cost(step=1, repeat=10)
    assert c.bytes(8, 2) == 2 * 8 * 11
    assert c.bytes(8, 1) == 8 * 1 + 10  # the batch itself, not a T-step copy
    assert c.bytes(1, 1) == c.bytes(1, 1) == 11
    assert (c + c).bytes(8, 1) == 2 * c.bytes(8, 1) and c.scale(3).bytes(4, 3) == 3 * c.bytes(4, 3)


def test_events_flag_is_checked():
    m = build_model("mlp", (8,), 10, 2, hidden=[8])
    with pytest.raises(ValueError, match="^events: expected True"):
        ChainModel(m, events="yes")


def test_a_plan_for_an_event_dataset_counts_its_input_as_is():
    """``make_plan(dataset="shd")`` plans event data ([T, B, ...], not a repeated static batch): at batch 1 its
    activation bytes are what training on one event sample saves (a static plan would count one step)."""
    from edgesnn.devices import load_device
    from edgesnn.planner.plan import make_plan

    torch.manual_seed(0)
    m = build_model("mlp", (700,), 20, 6, neuron="lif", hidden=[16], node={"backend": "torch"}, batchnorm=False)
    device = load_device("raspberry-pi-5-8gb")
    events = make_plan(m, device, 6, 1, kinds=("lif",), dataset="shd")
    static = make_plan(m, device, 6, 1, kinds=("lif",), dataset_bytes=0)
    meas = saved_bytes_of_step(m, torch.randn(6, 1, 700))
    assert events.predicted["activation_bytes"] == meas
    assert static.predicted["activation_bytes"] == meas - 5 * 700 * 4  # the static batch itself: one step
