"""Differential checks of the inference exporters (NIR, ONNX, TorchScript) against the eager model:
minimal cases found by fuzzing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgesnn.models import SpikingClassifier
from edgesnn.nn import ParametricLIF, SeqToANN

nir = pytest.importorskip("nir")
import edgesnn.nir as enir  # noqa: E402


def _plif_model(w: float) -> SpikingClassifier:
    node = ParametricLIF(init_tau=3.0, step_mode="m")
    with torch.no_grad():
        node.w.fill_(w)
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    return SpikingClassifier(nn.Sequential(SeqToANN(lin), node), 1, (1,), {})


def test_nir_round_trip_of_a_parametric_lif_keeps_its_float32_tau_and_spikes():
    # 1 / sigmoid(w) is 3.2404732704 in float32 (what the node computes with) but 3.2404731181 in
    # float64, one float32 step apart: exported with the float64 value, a potential landing at the
    # threshold fired in the eager model and not in the loaded one
    model = _plif_model(-0.80668705701828)
    tau32 = np.float32(1.0 / torch.sigmoid(model.body[1].w.detach()).item())
    step = np.spacing(tau32)
    x = torch.tensor([tau32 + np.float32(k) * step for k in range(-20, 21)], dtype=torch.float32).reshape(1, -1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = enir.to_nir(model)
        loaded = enir.load(graph)
        with torch.no_grad():
            want, got = model.body(x), loaded.body(x)
    assert want.sum() > 0 and torch.equal(want, got)
    lif = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)][0]
    assert np.float32(np.ravel(lif.tau)[0] / enir.DEFAULT_DT) == tau32
    assert np.float32(loaded.body[1].params.tau) == tau32


def test_nir_round_trip_of_a_parametric_lif_with_a_float32_tau_of_one_still_loads_and_matches():
    # sigmoid(20) is 1 in float32: the node computes with tau = 1; NIR's LIF needs tau > 1, so the graph
    # keeps the float64 tau (just above 1), which the loaded LIF rounds to the same float32 1.0
    model = _plif_model(20.0)
    x = torch.linspace(-2, 2, 41).reshape(1, -1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = enir.load(enir.to_nir(model))
        with torch.no_grad():
            assert torch.equal(model.body(x), loaded.body(x))
