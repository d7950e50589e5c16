"""ParametricLIF across the planner: the BPTT replay (edgesnn.planner.bptt_peak) counts its saved
tensors and leaves the model's own node untouched."""

import torch

from edgesnn.memory import SavedTensorCounter, _storage_key
from edgesnn.models import build_model
from edgesnn.nn import ParametricLIF
from edgesnn.planner import bptt_peak


def _plif_mlp(T):
    torch.manual_seed(0)
    m = build_model("mlp", (16,), 4, T, neuron="lif", hidden=[32, 32])
    m.body[3] = ParametricLIF(learn_threshold=True)
    return m


def test_bptt_saved_bytes_counts_parametric_lif_and_keeps_model_usable():
    T, B = 4, 8
    m = _plif_mlp(T)
    pred = bptt_peak.saved_bytes(m, (16,), T, B)  # used to raise (probed as a stateless layer)
    x = torch.randn(B, 16)
    pk = {_storage_key(p) for p in m.parameters()} | {_storage_key(b) for b in m.buffers()}
    with SavedTensorCounter() as c:
        y = m(x)  # used to fail: the planner left the node holding a carried state .v
    meas = sum(n for k, n in c.storages.items() if k not in pk)
    c._keep.clear()
    assert y.shape == (B, 4)
    assert abs(pred - meas) <= 0.02 * meas, (pred, meas)
    assert bptt_peak.predict_peak(m, (16,), T, B).peak_bytes > 0
