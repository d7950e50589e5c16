"""What a PyTorch user expects of an ``nn.Module``, on edgesnn's nodes and on ``optimize_memory``'d
models, each checked against plain PyTorch (the un-optimized copy of the model) as the oracle:
copies (``copy.deepcopy``, pickle, ``torch.save``), ``state_dict`` round trips, dtype moves,
``no_grad`` / ``inference_mode``, module hooks, freezing, gradient clipping, parametrizations and
lazy modules.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import edgesnn
from edgesnn.nn import LIF, ParametricLIF, RevLIF, SeqToANN

T, B = 4, 3


def _net(node=LIF, dtype=torch.float64) -> nn.Sequential:
    """Two blocks (conv, BatchNorm, node, max-pool | conv, BatchNorm, node) and a linear head."""
    torch.manual_seed(1)
    net = nn.Sequential(
        SeqToANN(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), node(), SeqToANN(nn.MaxPool2d(2)),
        SeqToANN(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)), node(), SeqToANN(nn.Flatten(), nn.Linear(16, 3)),
    ).to(dtype)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3)
    return net


def _x(seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    torch.manual_seed(seed)
    return (torch.rand(T, B, 2, 4, 4) * 2).to(dtype)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = torch.linspace(-1, 1, 3 * B * T, dtype=x.dtype).view(T, B, 3)
    return (model(x) * w).sum()


def _pair(node=LIF, **kw):
    base = _net(node, **kw)
    opt = copy.deepcopy(base)
    edgesnn.optimize_memory(opt, _x(dtype=next(base.parameters()).dtype), chunk=2)
    return base, opt


def _blocks_in_graph(out: torch.Tensor) -> int:
    """How many optimized blocks the autograd graph of ``out`` holds."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        todo.extend(g for g, _ in f.next_functions)
    return sum("_BlockFunction" in type(f).__name__ for f in seen)


def _assert_grads_equal(base: nn.Module, opt: nn.Module, tol: float = 1e-10) -> None:
    for (name, a), b in zip(base.named_parameters(), opt.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=tol, atol=tol), (name, float((a.grad - b.grad).abs().max()))


def _torch_round_trip(m: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


_COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
           "torch.save": _torch_round_trip}


# --------------------------------------------------------------------------------------------
# copies and state_dict


@pytest.mark.parametrize("how", sorted(_COPIES))
def test_a_copy_of_an_optimized_model_stays_optimized_and_trains_like_the_plain_model(how):
    base, opt = _pair()
    twin = _COPIES[how](opt)
    assert [(b.start, b.stop) for b in twin._memopt_blocks] == [(0, 3), (3, 5)]
    assert twin._memopt_blocks[0].node is twin[1] and twin._memopt_blocks[0].node is not opt[1]
    loss = _loss(twin, _x())
    assert _blocks_in_graph(loss) == 2
    loss.backward()
    _loss(base, _x()).backward()
    _assert_grads_equal(base, twin)
    assert all(p.grad is None for p in opt.parameters())  # the copy's parameters are its own
    assert torch.equal(twin[0].module[1].running_mean, base[0].module[1].running_mean)


def test_state_dict_loads_from_plain_into_optimized_and_back_strictly():
    base, opt = _pair(RevLIF)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.01)
    assert list(opt.state_dict()) == list(base.state_dict())
    opt.load_state_dict(base.state_dict(), strict=True)
    plain = _net(RevLIF)
    plain.load_state_dict(opt.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), base.state_dict().values()))
    assert torch.equal(opt(_x()), base(_x()))


@pytest.mark.parametrize("backend", ["auto", "numba", "torch", "reference"])
@pytest.mark.parametrize("how", sorted(_COPIES))
def test_a_stateful_node_copied_mid_sequence_continues_as_the_original(backend, how):
    x = torch.randn(6, 3, 8) * 2
    for node in (LIF(stateful=True, backend=backend), RevLIF(stateful=True, backend=backend)):
        node(x[:3].clone().requires_grad_())  # a state with an autograd graph
        twin = _COPIES[how](node)
        assert twin.backend == backend and torch.equal(twin.v, node.v.detach())
        with torch.no_grad():
            assert torch.equal(twin(x[3:]), node(x[3:]))
        assert torch.equal(twin.v, node.v)


def test_parametric_lif_learned_parameters_survive_copies_and_state_dict():
    node = ParametricLIF(init_tau=3.0, learn_threshold=True)
    with torch.no_grad():
        node.w.add_(0.3)
        node.v_threshold.add_(0.1)
    x = torch.randn(5, 2, 6) * 2
    for how, f in _COPIES.items():
        twin = f(node)
        assert isinstance(twin.w, nn.Parameter) and twin.tau == node.tau, how
        assert torch.equal(twin.v_threshold, node.v_threshold) and torch.equal(twin(x), node(x)), how
    fresh = ParametricLIF(init_tau=2.0, learn_threshold=True)
    fresh.load_state_dict(node.state_dict(), strict=True)
    assert fresh.tau == node.tau and torch.equal(fresh(x), node(x))


# --------------------------------------------------------------------------------------------
# stateful nodes, hooks and lazy modules met by optimize_memory's shape trace


@pytest.mark.parametrize("make", [lambda: LIF(stateful=True), lambda: ParametricLIF(stateful=True)])
def test_a_stateful_node_left_as_it_is_still_runs_after_optimize_memory(make):
    """The trace's clean-up deleted the node's ``_v`` (None before the trace, a tensor after it):
    the next forward raised AttributeError."""
    x = torch.rand(8, 2, 10) * 2
    base = nn.Sequential(SeqToANN(nn.Linear(10, 16)), LIF(), SeqToANN(nn.Linear(16, 16)), make(),
                         SeqToANN(nn.Linear(16, 3)))
    opt = copy.deepcopy(base)
    with pytest.warns(UserWarning, match=r"^optimize_memory: left as plain modules \(no memory saving there\): "
                                         r"[A-Za-z]+ at '3'"):
        edgesnn.optimize_memory(opt, x)
    with torch.no_grad():
        assert torch.equal(torch.cat([opt(x[:4]), opt(x[4:])]), torch.cat([base(x[:4]), base(x[4:])]))
    assert torch.equal(opt[3].v, base[3].v)


def test_forward_hooks_registered_before_optimize_memory_do_not_see_its_trace():
    """A spike monitor's forward hooks used to receive the trace's call, on FakeTensors."""
    model = _net()
    seen = []
    model[5].module[1].register_forward_hook(lambda m, a, o: seen.append(o.detach()))  # the head: still optimized
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    edgesnn.optimize_memory(model, _x(), chunk=2)
    assert seen == []
    assert model._forward_pre_hooks and model[5].module[1]._forward_hooks  # put back
    out = model(_x())
    assert len(seen) == 2 and torch.equal(seen[1], out.detach().flatten(0, 1)) and _blocks_in_graph(out) == 2


def test_a_model_that_runs_only_with_its_hook_is_still_optimized():
    """A pre-hook that adds the time dimension: without it the trace cannot run, so the trace runs
    once more with the hooks, on the real input."""
    torch.manual_seed(0)
    model = nn.Sequential(SeqToANN(nn.Linear(10, 16)), LIF(), SeqToANN(nn.Linear(16, 3)))
    base = copy.deepcopy(model)
    for m in (model, base):
        m.register_forward_pre_hook(lambda mod, a: (a[0].unsqueeze(0).expand(5, *a[0].shape),))
    x = torch.rand(2, 10) * 2
    edgesnn.optimize_memory(model, x)
    out = model(x)
    assert _blocks_in_graph(out) == 1 and torch.equal(out, base(x))
    with pytest.raises(ValueError, match=r"^example_input: the model's forward failed on it \(shape \(2, 9\), "):
        edgesnn.optimize_memory(base, torch.rand(2, 9))  # with or without the hook: the error of the model as it runs


def test_a_lazy_module_is_refused_in_one_line_until_it_ran():
    x = torch.rand(4, 2, 10)
    model = nn.Sequential(SeqToANN(nn.LazyLinear(16)), LIF(), SeqToANN(nn.Linear(16, 3)))
    with pytest.raises(ValueError, match=r"^model: the LazyLinear at '0.module' has uninitialized \(lazy\) "
                                         r"parameters; run the model once \(model\(example_input\)\) before "):
        edgesnn.optimize_memory(model, x)
    model(x)
    edgesnn.optimize_memory(model, x)
    assert _blocks_in_graph(model(x)) == 1


# --------------------------------------------------------------------------------------------
# module hooks on nodes and inside optimized models


@pytest.mark.parametrize("backend", ["auto", "numba", "torch", "reference"])
def test_module_hooks_on_a_node_see_its_tensors_on_every_backend(backend):
    x0 = torch.randn(6, 3, 8) * 2
    for node in (LIF(backend=backend), RevLIF(backend=backend)):
        rec = {}
        node.register_forward_pre_hook(lambda m, a: rec.update(pre=a[0].detach().clone()))
        node.register_forward_hook(lambda m, a, o: rec.update(out=o.detach().clone()))
        node.register_full_backward_hook(lambda m, gi, go: rec.update(gi=gi[0].clone(), go=go[0].clone()))
        x = x0.clone().requires_grad_()
        y = node(x)
        g = torch.linspace(-1, 1, y.numel()).view_as(y)
        y.backward(g)
        assert torch.equal(rec["pre"], x0) and torch.equal(rec["out"], y.detach())
        assert torch.equal(rec["go"], g) and torch.equal(rec["gi"], x.grad)


def test_a_backward_hook_on_a_layer_inside_an_optimized_model_gets_the_plain_gradients():
    base, opt = _pair()
    rec = {"base": [], "opt": []}
    for name, model in (("base", base), ("opt", opt)):
        model[3].module[0].register_full_backward_hook(lambda m, gi, go, r=rec[name]: r.append((gi[0], go[0])))
    with pytest.warns(UserWarning, match="runs as plain modules"):
        _loss(opt, _x()).backward()
    _loss(base, _x()).backward()
    assert len(rec["opt"]) == len(rec["base"]) == 1
    for a, b in zip(rec["opt"][0], rec["base"][0]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    _assert_grads_equal(base, opt)


# --------------------------------------------------------------------------------------------
# dtype moves, no_grad / inference_mode, freezing, clipping


def test_dtype_moves_after_optimize_memory_give_the_plain_models_results():
    base, opt = _pair(dtype=torch.float32)
    b64, o64 = copy.deepcopy(base).double(), copy.deepcopy(opt).to(torch.float64)
    out = o64(_x())
    assert out.dtype == torch.float64 and _blocks_in_graph(out) == 2
    _loss(o64, _x()).backward()
    _loss(b64, _x()).backward()
    _assert_grads_equal(b64, o64)
    b16, o16 = copy.deepcopy(base).half(), copy.deepcopy(opt).half()
    assert torch.equal(o16(_x(dtype=torch.float16)), b16(_x(dtype=torch.float16)))
    back = copy.deepcopy(o64).float()
    assert torch.equal(back(_x(dtype=torch.float32)), base(_x(dtype=torch.float32)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_no_grad_and_inference_mode_give_the_same_outputs_and_save_nothing(mode):
    base, opt = _pair(RevLIF)
    x = torch.rand(12, B, 2, 4, 4, dtype=torch.float64) * 2  # T > 8: evaluation may stream
    for ctx in (torch.no_grad, torch.inference_mode):
        b2, o2 = copy.deepcopy(base), copy.deepcopy(opt)
        getattr(b2, mode)()
        getattr(o2, mode)()
        with ctx():
            y_opt, y_base = o2(x), b2(x)
        assert torch.equal(y_opt, y_base) and not y_opt.requires_grad and y_opt.grad_fn is None
        assert y_opt.is_inference() == (ctx is torch.inference_mode)
        for a, b in zip(o2.buffers(), b2.buffers()):
            assert torch.equal(a, b)


def test_freezing_a_layer_inside_an_optimized_model_and_gradients_upstream_only():
    base, opt = _pair()
    for model in (base, opt):
        model[3].module[0].requires_grad_(False)
    _loss(opt, _x()).backward()
    _loss(base, _x()).backward()
    assert opt[3].module[0].weight.grad is None and opt[3].module[0].bias.grad is None
    _assert_grads_equal(base, opt)
    first = [list(m[0].parameters()) for m in (base, opt)]
    ga = torch.autograd.grad(_loss(base, _x(1)), first[0])
    gb = torch.autograd.grad(_loss(opt, _x(1)), first[1])
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(ga, gb))


def test_zero_grad_clip_grad_norm_and_sgd_steps_match_the_plain_model():
    base, opt = _pair()
    sgd = {id(m): torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (base, opt)}
    for step in range(3):
        norms = []
        for m in (base, opt):
            sgd[id(m)].zero_grad()
            _loss(m, _x(step)).backward()
            norms.append(nn.utils.clip_grad_norm_(m.parameters(), 0.05))
            sgd[id(m)].step()
        assert torch.allclose(norms[0], norms[1], rtol=1e-10)
    for a, b in zip(base.parameters(), opt.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------
# parametrizations


def _parametrized_pair(kind: str):
    base = _net()
    for m in (base[0].module[0], base[3].module[0], base[5].module[1]):
        getattr(parametrizations, kind)(m)
    opt = copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edgesnn.optimize_memory(opt, _x(), chunk=2)
    return base, opt, [str(w.message) for w in caught]


def test_spectral_norm_layers_are_left_as_they_are():
    """Its power iteration ran again in every chunk and recomputation: gradients up to 5e-5 off
    and the iteration's vectors 0.02 off after two steps, without a word."""
    base, opt, said = _parametrized_pair("spectral_norm")
    for step in range(2):
        for m in (base, opt):
            m.zero_grad()
            _loss(m, _x(step)).backward()
        _assert_grads_equal(base, opt)
        for a, b in zip(base.buffers(), opt.buffers()):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
        with torch.no_grad():
            for m in (base, opt):
                for p in m.parameters():
                    p.sub_(0.1 * p.grad)
    assert any("SeqToANN at '0' (a parametrization other than weight_norm" in s for s in said)


def test_weight_norm_layers_stay_in_their_blocks_with_the_plain_gradients():
    base, opt, said = _parametrized_pair("weight_norm")
    assert not [s for s in said if "optimize_memory" in s]
    out = opt(_x())
    assert _blocks_in_graph(out) == 2
    _loss(opt, _x()).backward()
    _loss(base, _x()).backward()
    _assert_grads_equal(base, opt)


def test_spectral_norm_registered_after_optimize_memory_runs_the_block_as_plain_modules():
    base, opt = _pair()
    for m in (base, opt):
        parametrizations.spectral_norm(m[3].module[0])
    opt.load_state_dict(base.state_dict())  # the same starting vectors of the power iteration
    with pytest.warns(UserWarning, match="changed after optimize_memory"):
        _loss(opt, _x()).backward()
    _loss(base, _x()).backward()
    _assert_grads_equal(base, opt)
