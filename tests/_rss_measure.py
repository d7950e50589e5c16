"""Shared by the planner tests that compare a prediction with peak RSS measured in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Dict, Optional, Tuple

import pytest


def measured_and_predicted(script: str, timeout: int = 300, env: Optional[Dict[str, str]] = None) -> Tuple[int, int]:
    """Run ``script`` (Python source) in a fresh interpreter and return the ``[measured, predicted]``
    bytes it prints as JSON on its last line. A fresh process, because earlier tests leave freed
    heap a measured pass would reuse unseen. Skips where VmHWM cannot be read or reset, or where
    glibc's ``mallopt`` is missing (the script prints ``null``). ``env``: the child's environment
    (default: this process's)."""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        if "clear_refs" in proc.stderr or "VmHWM" in proc.stderr:
            pytest.skip("cannot read or reset VmHWM here")
        raise AssertionError(proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    if res is None:
        pytest.skip("needs glibc's mallopt (freed tensors returned to the OS)")
    return res[0], res[1]


_EVAL_PASS = """
import json, sys, torch
from edgesnn.planner.runtime import lean_allocator
if not lean_allocator():
    print(json.dumps(None)); sys.exit()
from edgesnn.memory import peak_rss_bytes, reset_peak_rss
from edgesnn.models import build_model
from edgesnn.planner.evalpass import eval_forward_peak
from edgesnn.planner.memory_model import ChainModel
from edgesnn.training.data import Split
from edgesnn.training.loop import evaluate
T, B = {T}, {B}
torch.manual_seed(0)
m = build_model({model!r}, {in_shape!r}, 10, T, neuron={neuron!r}, {widths}, node={{"backend": "numba"}})
split = Split(torch.rand(B, *{in_shape!r}), torch.randint(0, 10, (B,)))
evaluate(m, split, batch_size=B)  # warm up: kernels compiled, allocator settled
reset_peak_rss()
base = peak_rss_bytes()
evaluate(m, split, batch_size=B)
chain = ChainModel(m)
print(json.dumps([peak_rss_bytes() - base, eval_forward_peak(chain, [{neuron!r}] * len(chain.spiking), T, B)]))
"""


def eval_pass_script(model: str, in_shape: Tuple[int, ...], neuron: str, widths: str, T: int, B: int) -> str:
    """A script for :func:`measured_and_predicted`: ``evaluate()`` of ``build_model(model, in_shape,
    10 classes, T, neuron=neuron, <widths>)`` on the Numba kernels (``widths``: the keyword, e.g.
    ``"hidden=[1024, 1024]"``), peak RSS above the warmed-up process against ``eval_forward_peak``."""
    return _EVAL_PASS.format(model=model, in_shape=tuple(in_shape), neuron=neuron, widths=widths, T=T, B=B)


_STEP_PEAK = """
import json, os, sys
import torch
torch.set_num_threads(1)
from edgesnn.planner.runtime import lean_allocator
if not lean_allocator():
    print(json.dumps(None)); sys.exit()
from torch import nn
import edgesnn
from edgesnn.kernels import buffers
from edgesnn.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
from edgesnn.nn import LIF, RevLIF, SeqToANN
T, B, repeated = {T}, {B}, {repeated!r}
torch.manual_seed(0)
n = lambda: {node}(backend={backend!r})
model = {model}
x0 = torch.rand(B, 4, 32, 32) * 2
x = x0.unsqueeze(0).expand(T, *x0.shape) if repeated else torch.rand(T, B, 4, 32, 32) * 2
y = torch.randint(0, 10, (B,))
plan = edgesnn.optimize_memory(model, x, chunk={chunk!r})
def step():
    model.zero_grad(set_to_none=False)
    nn.functional.cross_entropy(model(x).mean(0), y).backward()
step(); step()  # warm up: kernels loaded, parameter gradients allocated
buffers.release()
base = rss_bytes(); reset_peak_rss()
step()
print(json.dumps([peak_rss_bytes() - base, plan.peak_bytes - plan.fixed_bytes]))
"""


def step_peak_script(T: int, B: int, repeated: bool, node: str, backend: str, model: str,
                     chunk: Optional[int] = None) -> str:
    """A script for :func:`measured_and_predicted`: one training step (cross-entropy of the output's
    mean over T) of ``model`` (Python source building an ``nn.Sequential``, where ``n()`` makes a
    ``node`` on ``backend``) optimized with ``optimize_memory`` on a ``[T, B, 4, 32, 32]`` input
    (``repeated``: one batch expanded over T); peak RSS above the warmed-up process against the
    plan's predicted peak (``plan.peak_bytes - plan.fixed_bytes``); ``chunk``: ``optimize_memory``'s
    forced chunk (``None``: the planner's choice)."""
    return _STEP_PEAK.format(T=T, B=B, repeated=repeated, node=node, backend=backend, model=model, chunk=chunk)
