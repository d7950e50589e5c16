"""An ``optimize_memory`` block recomputes its layers in backward; what the plain model's saved
tensors guarantee must hold there too: the backward computes with the forward's train/eval modes,
refuses a weight changed in place since the forward, recomputes with a replaced one's forward
tensor (functional_call too), gives a parameter frozen in the forward no gradient, refuses
second-order gradients in one line, and a node holding a state from single-step calls starts from
it as in the plain model.

Each case compares the optimized model with a plain copy (float64: no spike within rounding of its
threshold), on a dense input and on one repeated over T (the time-invariant path), one chunk and
several.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, SeqToANN

from _strong_convs import strong_convs

T, B = 6, 3


def _net(backend: str = "auto") -> nn.Sequential:
    torch.manual_seed(1)
    net = nn.Sequential(
        SeqToANN(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(backend=backend), SeqToANN(nn.MaxPool2d(2)),
        SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(backend=backend),
        SeqToANN(nn.Flatten(), nn.Linear(4 * 4 * 6, 5)),
    )
    return strong_convs(net)


def _input(repeated: bool) -> torch.Tensor:
    torch.manual_seed(0)
    if repeated:
        return (torch.rand(B, 1, 8, 12, dtype=torch.float64) * 2).expand(T, B, 1, 8, 12)
    return torch.rand(T, B, 1, 8, 12, dtype=torch.float64) * 2


def _pair(x: torch.Tensor, chunk, backend: str = "auto"):
    base = _net(backend)
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, x, chunk=chunk)
    return base, opt


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, 5 * B * T, dtype=torch.float64).view(T, B, 5)
    return (model(x) * w).sum()


CASES = [(False, None), (False, 2), (False, T), (True, None), (True, 2)]


@pytest.mark.parametrize("repeated,chunk", CASES)
def test_backward_recomputes_in_the_forwards_modes(repeated, chunk):
    """``model.eval()`` and a validation pass between forward and ``loss.backward()``: the plain
    model back-propagates what its forward saved (training-mode BatchNorm), so must the blocks."""
    x = _input(repeated)
    base, opt = _pair(x, chunk)
    assert type(opt).__name__ == "MemoryOptimizedSequential"
    for model in (base, opt):
        loss = _loss(model, x)
        model.eval()
        with torch.no_grad():
            model(_input(False) * 0.5)
        loss.backward()
        assert not any(m.training for m in model.modules())  # the backward left the modes as it found them
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("repeated,chunk", CASES)
def test_a_weight_changed_in_place_before_backward_raises(repeated, chunk):
    """As PyTorch does for a saved weight: the recomputation would mix the old activations and the
    new weights (an optimizer step, an EMA or a weight clip before ``backward``)."""
    x = _input(repeated)
    base, opt = _pair(x, chunk)
    for model in (base, opt):
        loss = _loss(model, x)
        with torch.no_grad():
            model[3].module[0].weight.mul_(1.5)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
    loss = _loss(opt, x)
    with torch.no_grad():
        opt[0].module[0].weight.add_(0.1)  # the first block's: its backward may run inside the next one's
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation: the LIF block \(children 0-2\)'s "
                                           r"parameter '0\.module\.0\.weight' is at version \d+; expected version \d+ "
                                           r"instead \(an optimize_memory block recomputes its layers in backward\)$"):
        loss.backward()


@pytest.mark.parametrize("repeated,chunk", CASES)
def test_a_parameter_frozen_in_the_forward_gets_no_gradient_when_unfrozen_before_backward(repeated, chunk):
    """Plain autograd gives it none (the forward recorded nothing for it); the blocks' backward
    recomputed with the live parameter and wrote a ``.grad`` into it, even under autograd.grad
    asking for another parameter."""
    x = _input(repeated)
    base, opt = _pair(x, chunk)
    for model in (base, opt):
        w = model[0].module[0].weight
        w.requires_grad_(False)
        loss = _loss(model, x)
        w.requires_grad_(True)
        torch.autograd.grad(loss, [model[0].module[1].weight])
        assert w.grad is None
        loss = _loss(model, x)  # and a plain backward after unfreezing still matches
        loss.backward()
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize("repeated,chunk", CASES)
def test_a_parameter_replaced_before_backward_gets_the_gradient_as_in_the_plain_model(repeated, chunk):
    """Plain autograd gives the tensor the forward used its gradient, and the replacement none; the
    recomputation read the replacement (10.2 where the old parameter's is 2.7, with chunk 2) and gave
    it the gradient."""
    x = _input(repeated)
    base, opt = _pair(x, chunk)
    olds = []
    for model in (base, opt):
        loss = _loss(model, x)
        conv = model[3].module[0]
        olds.append(conv.weight)
        conv.weight = nn.Parameter(conv.weight.detach() * 1.5)
        loss.backward()
        assert conv.weight.grad is None
    torch.testing.assert_close(olds[1].grad, olds[0].grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("repeated,chunk", CASES)
def test_functional_call_gives_the_plain_models_gradients(repeated, chunk):
    """The forward under torch.func.functional_call used other tensors than the modules hold at the
    backward: the blocks' parameter gradients were None."""
    x = _input(repeated)
    base, opt = _pair(x, chunk)
    grads = []
    for model in (base, opt):
        p = {k: (v.detach() * 1.1).requires_grad_() for k, v in model.named_parameters()}
        w = torch.linspace(-1, 1, 5 * B * T, dtype=torch.float64).view(T, B, 5)
        loss = (torch.func.functional_call(model, p, (x,)) * w).sum()
        grads.append(torch.autograd.grad(loss, list(p.values())))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_a_linear_shared_by_a_repeated_input_block_and_the_next_matches_the_plain_model(chunk):
    """The first block's backward runs inside the second's, whose stand-in the shared Linear then
    holds: that is the same parameter, neither replaced (a false refusal) nor frozen (a lost gradient)."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 16).double()
    base = nn.Sequential(SeqToANN(lin), LIF(), SeqToANN(lin), LIF(), SeqToANN(nn.Linear(16, 5))).double()
    opt = copy.deepcopy(base)
    x = (torch.rand(B, 16, dtype=torch.float64) * 2).expand(T, B, 16)
    edgesnn.optimize_memory(opt, x, chunk=chunk)
    for model in (base, opt):
        (model(x).square().mean(0) * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name


def test_running_statistics_changed_before_backward_raise_in_eval_mode_only():
    """An eval-mode BatchNorm's recomputation reads its running statistics (refused when changed in
    place); in training mode it reads the batch's, and the forward itself updated the running ones."""
    x = _input(False)
    _, opt = _pair(x, 2)
    opt.eval()
    loss = _loss(opt, x)
    with torch.no_grad():
        opt[3].module[1].running_mean.add_(1.0)
    with pytest.raises(RuntimeError, match=r"buffer '3\.module\.1\.running_mean'"):
        loss.backward()
    opt.train()
    loss = _loss(opt, x)
    with torch.no_grad():
        opt[3].module[1].running_mean.add_(1.0)
    loss.backward()
    assert opt[0].module[0].weight.grad is not None


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("repeated", [False, True])
def test_second_order_gradients_are_refused_in_one_line(backend, repeated):
    """``create_graph=True`` (an input-gradient penalty): the blocks' recomputed gradients have no
    graph, so the penalty's own gradient would silently be dropped; one line says so instead."""
    x = _input(repeated)
    _, opt = _pair(x, 2, backend)
    xi = x.clone().requires_grad_()
    with pytest.raises(RuntimeError, match=r"^optimize_memory: second-order gradients \(create_graph=True, "
                                           r"differentiating a gradient\) do not go through an optimized block, .*"
                                           r"edgesnn\.memopt\.uninstall\(model\) to use plain autograd$"):
        torch.autograd.grad(_loss(opt, xi), xi, create_graph=True)
    g, = torch.autograd.grad(_loss(opt, xi), xi)  # first order: as the plain model
    base = _net(backend)
    g_base, = torch.autograd.grad(_loss(base, xi), xi)
    assert torch.allclose(g, g_base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False])
def test_a_state_held_from_single_step_calls_is_the_next_calls_start(grad):
    """After single-step calls and ``set_step_mode(..., 'm')`` a node starts its next multi-step call
    from the state it holds and holds none afterwards (as SpikingJelly does): the optimized model too."""
    x = _input(False)
    base, opt = _pair(x, 2)
    outs = []
    for model in (base, opt):
        node = model[1]
        node.step_mode = "s"
        with torch.no_grad():
            node(model[0](x[:1])[0])  # one step: the node now holds a state
        node.step_mode = "m"
        assert isinstance(node._v, torch.Tensor)
        with torch.set_grad_enabled(grad):
            outs.append(model(x))
        assert node._v is None
    assert torch.equal(outs[0], outs[1])
    with torch.set_grad_enabled(grad):  # and the next call starts fresh again, as a block
        assert torch.allclose(base(x), opt(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("node_cls", ["LIF", "RevLIF"])
@pytest.mark.parametrize("repeated,chunk", [(False, None), (False, 2), (True, 2)])
def test_node_settings_assigned_before_backward_do_not_change_the_gradients(node_cls, repeated, chunk):
    """A threshold schedule that sets ``v_threshold`` between forward and ``backward``: the plain
    model's backward uses the settings its forward ran with (the kernels keep them); the blocks
    recompute with those too, and the node has the new value afterwards."""
    from edgesnn.nn import RevLIF

    x = _input(repeated)
    torch.manual_seed(1)
    base = nn.Sequential(SeqToANN(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)),
                         LIF() if node_cls == "LIF" else RevLIF(),
                         SeqToANN(nn.Flatten(), nn.Linear(4 * 8 * 12, 5))).double()
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, x, chunk=chunk)
    for model in (base, opt):
        loss = _loss(model, x)
        model[1].v_threshold = 0.7
        loss.backward()
        assert model[1].v_threshold == 0.7
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name
