"""``optimize_memory``'s predicted step peak for nodes that run PyTorch's step loop (``backend="torch"``).

The planner counted such a node as any node under autograd (terms fitted on the RevLIF's Numba
kernel): what the loop allocates per step was missing (the LIF keeps its charged potential for the
surrogate backward beside its spikes and writes its input gradient step by step; the RevLIF's loop
has many per-step temporaries), and a max-pool under autograd counted as an average pool. Step peaks
were predicted 7-45% below the measured ones (conv nets, T = 4-16, ``python tools/memopt_phases.py
--suite torch``; a RevLIF on the Numba kernel before a max-pool 8-20%). A linear layer was charged
a convolution's weight copies, and the weight gradient of a repeated-input block, made inside the
next block's backward, was missing (an MLP on a repeated input: 38% below).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.kernels.dispatch import numba_available
from edgesnn.nn import LIF, RevLIF, SeqToANN
from edgesnn.planner.network_model import block_shape

from _rss_measure import measured_and_predicted

_STEP_RSS = """
import json, os, sys
os.environ["NUMBA_NUM_THREADS"] = "1"
import torch
torch.set_num_threads(1)
from edgesnn.planner.runtime import lean_allocator
if not lean_allocator():
    print(json.dumps(None)); sys.exit()
from torch import nn
import edgesnn
from edgesnn.kernels import buffers
from edgesnn.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from edgesnn.models import build_model
from edgesnn.nn import LIF, SeqToANN
T, B, model_name, backend = {T}, {B}, {model!r}, {backend!r}
torch.manual_seed(0)
if model_name == "nodefirst":
    n = lambda: LIF(backend=backend)
    model = nn.Sequential(n(), SeqToANN(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)), n(), SeqToANN(nn.MaxPool2d(2)),
                          SeqToANN(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)), n(), SeqToANN(nn.MaxPool2d(2)),
                          SeqToANN(nn.Flatten(), nn.Linear(16 * 8 * 8, 10)))
    x = torch.rand(T, B, 3, 32, 32) * 2  # new at every step
    loss_of = lambda out: out.mean(0)
else:  # the built-in MLP on a batch repeated over T (its first block's backward runs inside the second's)
    model = build_model("mlp", (3, 32, 32), 10, T, hidden=[1024, 1024], node={{"backend": backend}})
    x = torch.rand(B, 3, 32, 32)
    loss_of = lambda out: out
y = torch.randint(0, 10, (B,))
plan = edgesnn.optimize_memory(model, x)
def step():
    model.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(loss_of(model(x)), y).backward()
step(); step()  # warm up: kernels loaded, parameter gradients allocated
buffers.release()
base = rss_bytes(); reset_peak_rss()
step()
print(json.dumps([peak_rss_bytes() - base, plan.peak_bytes - plan.fixed_bytes]))
"""

CASES = [("nodefirst", "torch", 4, 32)]  # before: -37%
CASES += [("mlp", "numba", 4, 32)] if numba_available() else []  # before: -38%


@pytest.mark.parametrize("model,backend,T,B", CASES)
def test_step_peak_is_not_under_predicted(model, backend, T, B):
    """Peak RSS of one training step of the optimized model above the process before it, against the
    plan's predicted peak: at most 10% below (a budget planned to 80% then holds) and at most 20%
    above (measured: -1% for the node-first conv net on the torch backend, +14% for the MLP)."""
    measured, predicted = measured_and_predicted(_STEP_RSS.format(model=model, backend=backend, T=T, B=B))
    assert 0.9 * measured <= predicted <= 1.2 * measured, (predicted, measured, predicted / measured - 1)


@pytest.mark.parametrize("neuron,backend,pool", [(LIF, "torch", nn.MaxPool2d), (RevLIF, "torch", nn.AvgPool2d),
                                                 (RevLIF, "numba", nn.MaxPool2d), (LIF, "numba", nn.AvgPool2d)])
def test_block_shapes_name_the_step_loop_and_the_max_pool(neuron, backend, pool):
    """The traced shapes say which node runs PyTorch's loop (and whether it is a RevLIF, whose loop keeps
    no per-step history), which pooling under autograd is a max-pool, and which parameters are a
    convolution's (the others' forward copies no weights)."""
    torch.manual_seed(0)
    net = nn.Sequential(SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), neuron(backend=backend),
                        SeqToANN(pool(2)), SeqToANN(nn.Flatten(), nn.Linear(16, 8)), neuron(backend=backend),
                        SeqToANN(nn.Linear(8, 3)))
    edgesnn.optimize_memory(net, torch.rand(3, 2, 2, 4, 4))
    s0, s1 = [block_shape(b, i) for i, b in enumerate(net._memopt_blocks)]
    loop = backend == "torch" or not numba_available()
    assert (s0.node_loop, s1.node_loop) == (loop, loop)
    assert (s0.reversible, s1.reversible) == (neuron is RevLIF,) * 2
    assert s0.max_pool == (pool is nn.MaxPool2d) and not s1.max_pool
    assert s0.conv_param_bytes == (4 * 2 * 9 + 4) * 4 and s0.param_bytes == s0.conv_param_bytes + 2 * 4 * 4
    assert s1.conv_param_bytes == 0 and s1.param_bytes == (16 * 8 + 8) * 4
