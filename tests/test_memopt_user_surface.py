"""``optimize_memory`` as a user meets it: hooks, subclasses, inputs whose gradient is read,
in-place changes, autocast, pickling, slicing and argument checks.

Each case compares the optimized model with a plain copy of it: whatever the optimizer does not
run exactly (a subclass, a hook, a change after planning) must be left as it is, so the results
are the plain model's.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.memopt.layers import BaseForward, child_steps
from edgesnn.nn import LIF, SeqToANN

from _strong_convs import strong_convs

T, B = 4, 3


def _net(seed: int = 1) -> nn.Sequential:
    """Two blocks (conv, BatchNorm, LIF, max-pool | conv, BatchNorm, LIF) and a linear head, float64
    (no spike within rounding of its threshold); the first block hands its packed spikes on."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(), SeqToANN(nn.MaxPool2d(2)),
        SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(), SeqToANN(nn.Flatten(), nn.Linear(16, 3)),
    )
    return strong_convs(net)


def _x(seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.rand(T, B, 2, 4, 4, dtype=torch.float64) * 2


def _pair(chunk=2, x=None):
    base = _net()
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, _x() if x is None else x, chunk=chunk)
    return base, opt


def _loss(model, x):
    w = torch.linspace(-1, 1, 3 * B * T, dtype=torch.float64).view(T, B, 3)
    return (model(x) * w).sum()


def _assert_grads_equal(base, opt, tol=1e-10):
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=tol, atol=tol), (name, (a.grad - b.grad).abs().max())


# --------------------------------------------------------------------------------------------
# 1, 2: subclasses run as they are


def test_spikingjelly_layers_of_other_classes_are_left_as_they_are():
    """``TemporalEffectiveBatchNorm2d`` (a per-step scale) and ``WSConv2d`` (weight
    standardisation) are not their torch base class: the optimized model computes what they do."""
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    x = torch.randn(T, 2, 2, 4, 4)
    tebn = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), layer.TemporalEffectiveBatchNorm2d(T, 4), LIF())
    with torch.no_grad():
        tebn[1].scale.copy_(torch.linspace(0.5, 2, T).view(tebn[1].scale.shape))
    ws = nn.Sequential(layer.WSConv2d(2, 4, 3, padding=1, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"), LIF())
    for base in (tebn, ws):
        opt = copy.deepcopy(base)
        edgesnn.optimize_memory(opt, x)
        assert torch.equal(opt(x), base(x))
    assert child_steps(layer.WSConv2d(2, 4, 3, step_mode="m")) is None

    class Renamed(layer.Conv2d):  # overrides nothing but __init__: still SpikingJelly's Conv2d
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)

    steps = child_steps(Renamed(2, 4, 3, step_mode="m"))
    assert isinstance(steps[0].fn, BaseForward) and steps[0].fn.cls is nn.Conv2d


def test_torch_batchnorm_with_its_own_forward_is_left_as_it_is():
    class Shifted(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) + 0.25

    base = _net()
    base[0].module[1] = Shifted(4).double()
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, _x(), chunk=2)
    assert torch.equal(opt(_x()), base(_x()))


def test_node_subclasses_with_their_own_forward_or_run_are_left_alone():
    class Half(LIF):
        def forward(self, x):
            return super().forward(x) * 0.5

    class Doubled(LIF):
        def _run(self, x_seq, v0):
            out, v = super()._run(x_seq * 2, v0)
            return out, v

    for cls in (Half, Doubled):
        base = _net()
        base[1] = cls()
        opt = copy.deepcopy(base)
        edgesnn.optimize_memory(opt, _x(), chunk=2)
        assert all(b.node is not opt[1] for b in opt._memopt_blocks)
        _loss(base, _x()).backward()
        _loss(opt, _x()).backward()
        _assert_grads_equal(base, opt)
    alone = nn.Sequential(SeqToANN(nn.Linear(8, 8)), Half())
    with pytest.raises(ValueError, match=r"^model: no nn.Sequential .* the Half at '1' is a subclass with its own forward"):
        edgesnn.optimize_memory(alone, torch.randn(T, 2, 8))


# --------------------------------------------------------------------------------------------
# 3, 4: module hooks registered before optimize_memory


@pytest.mark.parametrize("where", ["bn_forward", "conv_forward", "conv_backward", "node_backward_pre"])
def test_hooked_modules_inside_a_block_are_left_as_they_are(where):
    """A forward hook on a layer inside a ``SeqToANN`` (BatchNorm: never called by the chunked
    path; conv: differentiated as if hook-free when held) and backward hooks (full backward hook,
    backward pre-hook) make that child unsupported: outputs and gradients are the plain model's."""
    base = _net()
    if where == "bn_forward":
        base[0].module[1].register_forward_hook(lambda m, i, o: o * 3 + 0.5)
    elif where == "conv_forward":
        base[0].module[0].register_forward_hook(lambda m, i, o: o * 3)
    elif where == "conv_backward":
        base[3].module[0].register_full_backward_hook(lambda m, gi, go: (gi[0] * 0,))
    else:
        base[1].register_full_backward_pre_hook(lambda m, go: (go[0] * 0,))
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, _x(), chunk=4)
    for b in opt._memopt_blocks:
        b.hold = True  # where the planner might hold: the layer's backward runs without autograd
    assert torch.equal(opt(_x()), base(_x()))
    _loss(base, _x()).backward()
    _loss(opt, _x()).backward()
    _assert_grads_equal(base, opt)


def test_global_module_hooks_count_as_hooks():
    """Registered before planning, a global hook leaves every node alone; registered after, every
    block runs as plain modules, so the hook sees every module the plain model calls."""
    from torch.nn.modules import module as torch_module

    handle = torch_module.register_module_full_backward_pre_hook(lambda m, go: None)
    try:
        with pytest.raises(ValueError, match="has hooks"):
            edgesnn.optimize_memory(_net(), _x())
    finally:
        handle.remove()
    base, opt = _pair(2)
    base_modules, opt_modules = list(base.modules()), list(opt.modules())
    calls = []
    handle = torch_module.register_module_forward_hook(lambda m, i, o: calls.append(m))
    try:
        with pytest.warns(UserWarning, match="runs as plain modules"):
            opt(_x())
        seen, calls[:] = list(calls), []
        base(_x())
    finally:
        handle.remove()
    assert [base_modules.index(m) for m in calls] == [opt_modules.index(m) for m in seen]


# --------------------------------------------------------------------------------------------
# 5, 12: parameter gradients pass through autograd once


@pytest.mark.parametrize("chunk,hold", [(1, False), (2, False), (2, True), (4, False)])
def test_parameter_hooks_see_the_whole_gradient_once(chunk, hold):
    base, opt = _pair(chunk)
    for b in opt._memopt_blocks:
        b.hold = hold
    calls = {}
    for name, p in opt.named_parameters():
        p.register_hook(lambda g, name=name: calls.setdefault(name, []).append(None if g is None else g.clone()))
    _loss(base, _x()).backward()
    _loss(opt, _x()).backward()
    _assert_grads_equal(base, opt)
    for name, p in opt.named_parameters():
        assert len(calls[name]) == 1 and torch.equal(calls[name][0], p.grad), name


def test_parameter_hooks_change_the_gradient_and_post_accumulate_hooks_run_once():
    base, opt = _pair(2)
    for model in (base, opt):
        model[0].module[1].weight.register_hook(lambda g: g * 0)
        model[3].module[0].weight.register_hook(lambda g: g * 2)
    seen = []
    opt[0].module[0].weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    _loss(base, _x()).backward()
    _loss(opt, _x()).backward()
    _assert_grads_equal(base, opt)
    assert not opt[0].module[1].weight.grad.any()
    assert len(seen) == 1 and torch.equal(seen[0], opt[0].module[0].weight.grad)


@pytest.mark.parametrize("x_kind", ["spikes", "repeated"])
def test_autograd_grad_returns_the_parameter_gradients(x_kind):
    x0 = torch.rand(B, 2, 4, 4, dtype=torch.float64) * 2
    x = x0.unsqueeze(0).expand(T, *x0.shape) if x_kind == "repeated" else _x()
    base, opt = _pair(2, x)
    _loss(base, x).backward()
    got = torch.autograd.grad(_loss(opt, x), list(opt.parameters()))
    for (name, p), g in zip(base.named_parameters(), got):
        assert torch.allclose(p.grad, g, rtol=1e-10, atol=1e-10), name
    assert all(p.grad is None for p in opt.parameters())  # autograd.grad leaves .grad alone


def test_shared_parameters_sum_and_frozen_parameters_get_none():
    base = _net()
    base[3].module[1].weight = base[0].module[1].weight  # one BatchNorm scale in both blocks
    base[0].module[0].bias.requires_grad_(False)
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, _x(), chunk=2)
    opt[3].module[0].bias.requires_grad_(False)  # frozen after planning
    base[3].module[0].bias.requires_grad_(False)
    seen = {"base": [], "opt": []}
    for key, model in (("base", base), ("opt", opt)):
        model[0].module[1].weight.register_hook(lambda g, key=key: seen[key].append(g.clone()))
    _loss(base, _x()).backward()
    _loss(opt, _x()).backward()
    _assert_grads_equal(base, opt)
    assert opt[0].module[0].bias.grad is None and opt[3].module[0].bias.grad is None
    assert len(seen["opt"]) == len(seen["base"]) == 1  # the hook sees the sum over both blocks, once
    assert torch.allclose(seen["opt"][0], seen["base"][0], rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# 6: changes after optimize_memory


def test_hooks_and_stateful_set_after_planning_run_the_block_as_plain_modules():
    torch.manual_seed(0)
    x = torch.rand(8, 2, 10) * 2
    base = nn.Sequential(SeqToANN(nn.Linear(10, 16)), LIF(tau=10.0), SeqToANN(nn.Linear(16, 3)))
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, x)
    calls = []
    opt[1].register_forward_hook(lambda *a: calls.append(1))
    with pytest.warns(UserWarning, match=r"^optimize_memory: the LIF block \(children 0-1\) changed after optimize_memory"):
        opt(x)
    assert calls == [1]
    for n in (opt[1], base[1]):
        n.stateful = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per container
        with torch.no_grad():
            a = torch.cat([opt(x[:4]), opt(x[4:])])
    with torch.no_grad():
        b = torch.cat([base(x[:4]), base(x[4:])])
    assert torch.equal(a, b)


@pytest.mark.parametrize("scope", ["module", "global"])
def test_hooks_added_between_forward_and_backward_are_not_called_by_the_recomputation(scope):
    """Plain autograd never calls a forward hook added after the forward; a block's recomputation
    called it once per chunk, and one that edits its output changed the gradients."""
    base, opt = _pair(chunk=2)
    calls = {}
    for name, m in (("plain", base), ("optimized", opt)):
        loss = _loss(m, _x())
        calls[name] = []

        def edit(mod, inp, out, seen=calls[name]):
            seen.append(1)
            return out * 2 if isinstance(mod, nn.Conv2d) else None

        h = (m[3].module[0].register_forward_hook(edit) if scope == "module"
             else torch.nn.modules.module.register_module_forward_hook(edit))
        try:
            loss.backward()
        finally:
            h.remove()
    assert calls == {"plain": [], "optimized": []}
    _assert_grads_equal(base, opt)


@pytest.mark.parametrize("changed", ["first_post", "second_node", "replaced_child"])
def test_a_changed_block_breaks_the_packed_handover(changed):
    """The first block hands its packed spikes to the second. A hook that scales the first
    block's pooled output (no longer spikes) or one on the second block's node (the first block
    must then return its output, not hand it over) runs both ways as the plain model."""
    base, opt = _pair(2)
    assert opt._memopt_blocks[0].next_block is opt._memopt_blocks[1]
    for model in (base, opt):
        if changed == "first_post":
            model[2].module.register_forward_hook(lambda m, i, o: o * 3)
        elif changed == "second_node":
            model[4].register_forward_hook(lambda m, i, o: o * 0.5)
    if changed == "replaced_child":
        opt[4] = copy.deepcopy(base[4])
    with pytest.warns(UserWarning, match="runs as plain modules"):
        assert torch.equal(opt(_x()), base(_x()))
    _loss(base, _x()).backward()
    _loss(opt, _x()).backward()
    _assert_grads_equal(base, opt)


# --------------------------------------------------------------------------------------------
# 7, 8: the input's own gradient, in-place changes


def test_a_repeated_input_whose_gradient_is_read_gets_it_per_step():
    x0 = torch.rand(B, 2, 4, 4, dtype=torch.float64) * 2
    base, opt = _pair(2, x0.expand(T, *x0.shape))
    xa = x0.expand(T, *x0.shape).requires_grad_()
    xb = x0.expand(T, *x0.shape).requires_grad_()
    _loss(opt, xa).backward()
    _loss(base, xb).backward()
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-10, atol=1e-12) and not torch.equal(xa.grad[0], xa.grad[1])
    grads = []
    for model in (opt, base):  # a non-leaf that retains its gradient, and the leaf before the expand
        s = x0.clone().requires_grad_()
        x = s.expand(T, *x0.shape)
        x.retain_grad()
        _loss(model, x).backward()
        grads.append((x.grad, s.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_repeated_view_read_only_after_the_forward_gets_its_mean_over_time_as_documented():
    """README: the view's own gradient, captured by autograd.grad (nothing the forward could see),
    is its mean over T at every step; its sum over T, the leaf's gradient, is the plain model's."""
    x0 = torch.rand(B, 2, 4, 4, dtype=torch.float64) * 2
    base, opt = _pair(2, x0.expand(T, *x0.shape))
    grads = []
    for model in (base, opt):
        s = x0.clone().requires_grad_()
        x = s.expand(T, *x0.shape)
        grads.append(torch.autograd.grad(_loss(model, x), [x, s]))
    (g_plain, s_plain), (g_opt, s_opt) = grads
    assert not torch.allclose(g_plain[0], g_plain[1])
    torch.testing.assert_close(g_opt, g_plain.mean(0, keepdim=True).expand_as(g_plain))
    torch.testing.assert_close(s_opt, s_plain)


@pytest.mark.parametrize("repeated", [False, True])
def test_an_input_changed_in_place_before_backward_raises(repeated):
    base, opt = _pair(2)
    x0 = torch.rand(B, 2, 4, 4, dtype=torch.float64) * 2
    x = x0.expand(T, *x0.shape) if repeated else _x().clone()
    out = _loss(opt, x)
    (x0 if repeated else x).mul_(0.5)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation: the input \[4, 3, 2, 4, 4\] .*is at "
                                           r"version 1; expected version 0 instead$"):
        out.backward()


# --------------------------------------------------------------------------------------------
# 9, 10, 11: autocast, pickling, slicing


def test_autocast_is_refused_in_training_and_evaluation_runs_as_the_plain_model():
    base, opt = _pair(2)
    base.float()
    opt.float()
    x = _x().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match=r"^optimize_memory: autocast is not supported; "):
            opt(x)
        with torch.no_grad():
            assert torch.equal(opt(x), base(x))


def test_pickled_spikingjelly_model_runs_as_before():
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    x = torch.randn(T, 2, 2, 4, 4)
    model = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"), LIF(),
                          layer.Flatten(step_mode="m"), layer.Linear(64, 3, step_mode="m"))
    edgesnn.optimize_memory(model, x, chunk=2)
    loaded = pickle.loads(pickle.dumps(model))
    assert torch.equal(loaded(x), model(x))
    loaded(x).sum().backward()
    model(x).sum().backward()
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_a_slice_is_a_plain_sequential_of_the_children():
    base, opt = _pair(2)
    head = opt[:3]
    assert type(head) is nn.Sequential and head[0] is opt[0] and len(head) == 3
    assert torch.equal(head(_x()), base[:3](_x()))
    assert opt[1] is opt._memopt_blocks[0].node


# --------------------------------------------------------------------------------------------
# 13, 14: argument checks


def test_zero_time_steps_are_refused_in_one_line():
    _, opt = _pair(2)
    with pytest.raises(ValueError, match=r"^x_seq: the number of time steps T \(dim 0\) must be >= 1, got shape \(0, 3"):
        opt(_x()[:0])
    with pytest.raises(ValueError, match=r"^example_input: the number of time steps T \(dim 0\) must be >= 1"):
        edgesnn.optimize_memory(nn.Sequential(SeqToANN(nn.Linear(3, 3)), LIF()), torch.randn(0, 2, 3))


def test_optimizer_bytes_and_sequential_subclasses_are_checked():
    def small():
        return nn.Sequential(SeqToANN(nn.Linear(3, 3)), LIF())

    x = torch.randn(T, 2, 3)
    for bad in (-3, "adam", float("nan"), float("inf"), True, None):
        with pytest.raises(ValueError, match="^optimizer_bytes_per_param: expected a finite number >= 0"):
            edgesnn.optimize_memory(small(), x, optimizer_bytes_per_param=bad)
    for ok in (0, 2, 0.5):
        edgesnn.optimize_memory(small(), x, optimizer_bytes_per_param=ok)

    class Stage(nn.Sequential):
        pass

    with pytest.raises(ValueError, match=r"^model: only plain nn.Sequential containers are rewritten, .* Stage"):
        edgesnn.optimize_memory(Stage(SeqToANN(nn.Linear(3, 3)), LIF()), x)
