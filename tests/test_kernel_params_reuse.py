"""The ops rebuild a node's parameters from plain numbers, and the kernel wrappers turn them into
kernel arguments, on every call; both are done once per distinct parameters and then reused.
These tests pin that the reuse never hands out another node's values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgesnn.functional.lif import LIFParams
from edgesnn.functional.revlif import RevLIFParams
from edgesnn.functional.surrogate import ATan
from edgesnn.kernels import custom_ops as ops
from edgesnn.kernels import neuron_math as nm
from edgesnn.nn import LIF, RevLIF


def test_ops_build_params_once_per_argument_tuple():
    p = RevLIFParams(lif=LIFParams(tau=3.0, surrogate=ATan()), groups=4)
    args = ops.revlif_params_args(p) + (p.groups,)
    first = ops._rev(*args)
    assert first == p
    assert ops._rev(*args) is first
    other = ops._rev(*(ops.revlif_params_args(RevLIFParams()) + (2,)))
    assert other == RevLIFParams() and other is not first


def test_signed_zero_and_invalid_arguments_are_not_shared():
    plus = ops.lif_params_args(LIFParams(v_reset=0.0))
    minus = plus[:2] + (-0.0,) + plus[3:]
    assert math.copysign(1.0, ops._lif(*minus).v_reset) == -1.0
    assert math.copysign(1.0, ops._lif(*plus).v_reset) == 1.0
    bad = (0.5,) + plus[1:]  # tau must be > 1: raises on every call, nothing is kept
    for _ in range(2):
        with pytest.raises(ValueError, match="tau"):
            ops._lif(*bad)


def test_kernel_arguments_follow_each_params_object():
    a, b = LIFParams(v_reset=0.0), LIFParams(v_reset=-0.0)
    assert a == b  # equal dataclasses: the arguments are kept per object, not per value
    assert math.copysign(1.0, nm.charge_args(a)[2]) == 1.0
    assert math.copysign(1.0, nm.charge_args(b)[2]) == -1.0
    c = LIFParams(tau=4.0, surrogate=ATan(3.0))
    assert nm.charge_args(c)[0] == np.float32(4.0)
    kind, a_sg, b_sg = nm.vjp_args(c)[2:]
    assert kind == nm.SG_ATAN and a_sg == np.float32(math.pi / 2 * 3.0) and b_sg == np.float32(1.5)
    assert nm.mix_args(RevLIFParams(alpha=0.25))[1] == np.float32(0.25)


def test_nodes_with_changed_parameters_use_their_own_values():
    """Two nodes run alternately with different parameters: each matches its own reference."""
    torch.manual_seed(0)
    x = torch.randn(6, 2, 8) * 2
    fast, slow = LIF(tau=2.0), LIF(tau=8.0)
    ref_fast, ref_slow = LIF(tau=2.0, backend="reference"), LIF(tau=8.0, backend="reference")
    for _ in range(2):
        assert torch.equal(fast(x), ref_fast(x))
        assert torch.equal(slow(x), ref_slow(x))
    r1, r2 = RevLIF(groups=2), RevLIF(groups=4, alpha=0.5)
    for node in (r1, r2):
        ref = RevLIF(groups=node.params.groups, alpha=node.params.alpha, backend="reference")
        assert torch.equal(node(x.reshape(6, 2, 8)), ref(x.reshape(6, 2, 8)))
