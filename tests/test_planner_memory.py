"""Memory model vs saved-tensor measurements (unique storages, parameters excluded)."""

import pytest
import torch
from torch import nn

from edgesnn.memory import SavedTensorCounter, _storage_key
from edgesnn.models import build_model, spiking_layers
from edgesnn.planner.memory_model import ChainModel, Cost
from edgesnn.planner.peak import largest_batch, peak_lines, simulate_step


def measured_activation_bytes(model, B):
    shape = model.in_shape
    pk = {_storage_key(p) for p in model.parameters()} | {_storage_key(b) for b in model.buffers()}
    x = torch.randn(B, *shape)
    y = torch.randint(0, 10, (B,))
    with SavedTensorCounter() as c:
        loss = nn.functional.cross_entropy(model(x), y)
    n = sum(v for k, v in c.storages.items() if k not in pk)
    c._keep.clear()
    loss.backward()  # the saved graph must be usable
    return n


CASES = [
    ("mlp", (20,), 4, 3, "lif", "torch", {"hidden": [32, 24]}),
    ("mlp", (20,), 9, 2, ["revlif:4", "lif"], "torch", {"hidden": [32, 24]}),
    ("mlp", (20,), 5, 2, "revlif", "reference", {"hidden": [32, 24]}),
    ("mlp", (20,), 5, 2, "lif", "reference", {"hidden": [32, 24]}),
    ("convnet", (3, 12, 12), 4, 2, "lif", "torch", {"channels": [8, 16]}),
    ("convnet", (3, 12, 12), 3, 2, "revlif", "torch", {"channels": [8, 16]}),
    ("convnet", (3, 12, 12), 10, 2, ["lif", "revlif:4"], "auto", {"channels": [8, 16]}),
    ("convnet", (3, 12, 12), 4, 2, "lif", "auto", {"channels": [8, 16]}),
    ("vgg11", (3, 16, 16), 2, 2, ["lif", "revlif"] * 4, "torch", {}),
    # max pools (build_model(pool="max"), --pool max) save their input and int64 indices
    ("convnet", (3, 12, 12), 4, 2, "lif", "torch", {"channels": [8, 16], "pool": "max"}),
    ("convnet", (3, 13, 11), 3, 2, "revlif", "auto", {"channels": [8, 16], "pool": "max"}),
    ("vgg11", (3, 16, 16), 2, 2, ["revlif", "lif"] * 4, "torch", {"pool": "max"}),
]


@pytest.mark.parametrize("name,shape,T,B,neuron,backend,kw", CASES)
def test_predicted_activation_bytes_match_saved_tensor_hooks(name, shape, T, B, neuron, backend, kw):
    torch.manual_seed(0)
    m = build_model(name, shape, 10, T, neuron=neuron, node={"backend": backend}, **kw)
    chain = ChainModel(m)
    opts = [neuron] * len(chain.spiking) if isinstance(neuron, str) else neuron
    pred = chain.activation_cost(opts).bytes(T, B)
    meas = measured_activation_bytes(m, B)
    assert abs(pred - meas) <= 0.02 * meas, (pred, meas)  # target 10%; exact up to a few bytes here


def test_layer_chain_and_factors():
    m = build_model("convnet", (3, 8, 8), 10, 4, neuron="lif", node={"backend": "torch"}, channels=[4, 8])
    chain = ChainModel(m)
    assert len(chain.spiking) == len(spiking_layers(m)) == 2
    # LIF (torch) saves h: 1 x its input, 4 bytes per neuron-step
    assert chain.layer_option_cost(0, "lif") == Cost(step=4 * 4 * 64)
    # RevLIF: final state 4 B/neuron + 1 byte per 8 steps; its output is saved by the next conv anyway
    assert chain.layer_option_cost(0, "revlif:2") == Cost(sample=4 * 4 * 64, packed=4 * 64)
    # the group count does not change the bytes
    assert chain.layer_option_cost(1, "revlif:4") == chain.layer_option_cost(1, "revlif:2")


def test_cost_is_linear_in_batch_and_affine_in_t():
    c = Cost(step=10, sample=3, packed=2, const=7)
    assert c.bytes(8, 4) == 4 * (80 + 3 + 2) + 7
    assert c.bytes(9, 4) == 4 * (90 + 3 + 4) + 7


def test_replay_activations_and_closed_form_batch():
    m = build_model("convnet", (3, 8, 8), 10, 4, neuron="lif", node={"backend": "torch"}, channels=[4, 8])
    chain = ChainModel(m)
    opts = ["lif", "revlif:2"]
    step = simulate_step(chain, opts, 4, 3)
    assert step.activations == chain.activation_cost(opts).bytes(4, 3)
    assert step.dynamic_peak >= step.activations
    lines = peak_lines(chain, opts, 4)
    for B in (1, 5, 17):
        assert max(a * B + c for a, c in lines) == simulate_step(chain, opts, 4, B).dynamic_peak
    limit = simulate_step(chain, opts, 4, 13).dynamic_peak + 5
    assert largest_batch(lines, limit) == 13


def test_numba_runtime_is_counted_when_a_node_runs_the_kernels():
    from edgesnn import devices
    from edgesnn.kernels.dispatch import numba_available
    from edgesnn.planner.memory_model import NUMBA_RUNTIME_BYTES, kernel_runtime_bytes
    from edgesnn.planner.plan import make_plan

    if not numba_available():
        pytest.skip("numba not installed")
    dev = devices.load_device("raspberry-pi-4-4gb")
    plans = {}
    for backend in ("torch", "numba"):
        model = build_model("mlp", (64,), 10, 4, "lif", hidden=(32, 32), node={"backend": backend})
        assert kernel_runtime_bytes(ChainModel(model)) == (NUMBA_RUNTIME_BYTES if backend == "numba" else 0)
        plans[backend] = make_plan(model, dev, 4, 16, kinds=("lif",))
    t, n = plans["torch"].predicted, plans["numba"].predicted
    assert n["runtime_overhead_bytes"] - t["runtime_overhead_bytes"] == NUMBA_RUNTIME_BYTES
    # the peak moves by the runtime term (the two backends also save slightly different tensors)
    assert abs(n["peak_bytes"] - t["peak_bytes"] - NUMBA_RUNTIME_BYTES) < 0.05 * NUMBA_RUNTIME_BYTES
