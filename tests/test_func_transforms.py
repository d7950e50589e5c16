"""The nodes inside ``torch.func`` transforms: ``grad`` / ``grad_and_value`` / ``vjp`` over
``functional_call`` (how MAML-style inner loops and functional training loops are written) give the
ordinary backward's gradients on every CPU backend; a gradient of a gradient is computed by the
reference backend and a one-line error on the others (never silent zeros); ``vmap``, a backward run
batched (``jacrev``, ``is_grads_batched``) on the hand-written backwards and forward-mode AD
(``jvp``, ``jacfwd``, dual tensors) on every backend are one line (never a wrong Jacobian)."""

import pytest
import torch
from torch import nn

import torch.autograd.forward_ad as fwAD

from edgesnn.nn import LIF, ParametricLIF, RevLIF

NODES = [LIF, RevLIF]


def _net(make, backend):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 12), make(backend=backend), nn.Linear(12, 3))


def _loss(net, params, x):
    return torch.func.functional_call(net, params, (x,)).square().sum()


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_func_grad_equals_the_ordinary_backward(make, backend):
    net = _net(make, backend)
    x = torch.randn(6, 4, 10) * 2
    params = {k: v.detach() for k, v in net.named_parameters()}
    g_params, g_x = torch.func.grad(lambda p, xx: _loss(net, p, xx), argnums=(0, 1))(params, x)

    xr = x.clone().requires_grad_()
    _loss(net, dict(net.named_parameters()), xr).backward()
    for name, p in net.named_parameters():
        assert torch.allclose(g_params[name], p.grad, rtol=1e-5, atol=1e-6), name
    assert torch.allclose(g_x, xr.grad, rtol=1e-5, atol=1e-6)
    assert g_x.abs().sum() > 0


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
def test_func_vjp_and_grad_and_value(make):
    node = make(backend="numba")
    x = torch.randn(5, 3, 8) * 2
    out, vjp_fn = torch.func.vjp(node, x)
    w = torch.randn_like(out)
    (g,) = vjp_fn(w)
    xr = x.clone().requires_grad_()
    (node(xr) * w).sum().backward()
    assert torch.equal(out, node(x))
    assert torch.allclose(g, xr.grad, rtol=1e-6, atol=1e-7)

    g2, value = torch.func.grad_and_value(lambda xx: (node(xx) * w).sum())(x)
    assert torch.allclose(g2, xr.grad, rtol=1e-6, atol=1e-7) and value == (node(x) * w).sum()


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradient_of_a_gradient_is_refused_in_one_line(make, backend):
    node = make(backend=backend)
    x = torch.randn(4, 2, 6) * 2

    def inner(xx):
        return torch.func.grad(lambda z: node(z).square().sum())(xx).sum()

    with pytest.raises(RuntimeError) as e:
        torch.func.grad(inner)(x)
    msg = str(e.value)
    assert "\n" not in msg and "second-order" in msg and make.__name__ in msg


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_ordinary_autograd_through_a_func_grad_is_refused_in_one_line(make, backend):
    """MAML's meta-gradient written with ``torch.func.grad`` for the inner step and ``.backward()`` outside:
    the outer backward differentiates the node's gradient. It returned a meta-gradient without the node's
    second-order terms (0.12-0.19 off the reference backend's, relative); a first-order use of the inner
    gradient (detached) still gives the reference's values."""
    x = torch.randn(6, 4, 10) * 2
    results = {}
    for be in (backend, "reference"):
        net = _net(make, be)
        params = dict(net.named_parameters())  # (they require grad: plain autograd records below the transform)
        g = torch.func.grad(lambda p: _loss(net, p, x))(params)
        results[be] = g["0.weight"].detach()
        meta = _loss(net, {k: params[k] - 0.1 * g[k] for k in params}, x)
        if be == backend:
            with pytest.raises(RuntimeError) as e:
                meta.backward()
            msg = str(e.value)
            assert "\n" not in msg and f"{make.__name__} backend {backend!r}: second-order" in msg
            _loss(net, {k: params[k] - 0.1 * g[k].detach() for k in params}, x).backward()  # first order: fine
        else:
            meta.backward()
            assert float(params["0.weight"].grad.abs().sum()) > 0
    torch.testing.assert_close(results[backend], results["reference"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_func_grad_under_no_grad_returns_plain_gradients(make, backend):
    # (the refusal below the transform ignored the outer no_grad: the gradients required grad)
    node = make(backend=backend)
    x = (torch.randn(4, 2, 8) * 2).requires_grad_()  # (a leaf that requires grad: the node's saved input)
    with torch.no_grad():
        g = torch.func.grad(lambda z: node(z).square().sum())(x)
    assert not g.requires_grad and g.grad_fn is None


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_vmap_is_refused_in_one_line(make, backend):
    node = make(backend=backend)
    with pytest.raises(RuntimeError) as e:
        torch.func.vmap(node)(torch.randn(2, 4, 3, 6))
    msg = str(e.value)
    assert "\n" not in msg and "vmap" in msg and "torch.func.grad" in msg and repr(backend) in msg


def test_vmap_over_a_parametric_lif_is_refused_in_one_line():
    # it runs the reference path: the same refusal as LIF / RevLIF there, not PyTorch's generic
    # data-dependent-control-flow error from a value check
    with pytest.raises(RuntimeError) as e:
        torch.func.vmap(ParametricLIF())(torch.randn(2, 4, 3, 6))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ParametricLIF backend 'reference': torch.func.vmap"), msg


def test_vmap_over_a_parametric_lifs_parameters_is_refused_in_one_line():
    """Model ensembling (``stack_module_state``, the input not batched) batches the learnable decay only: the
    loop ran and died in the node's overflow check with PyTorch's ``.item()`` error."""
    import copy

    from torch.func import functional_call, stack_module_state

    models = [ParametricLIF(init_tau=t) for t in (1.5, 2.0, 4.0)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    with pytest.raises(RuntimeError) as e:
        torch.func.vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(
            params, buffers, torch.randn(5, 3, 8))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ParametricLIF backend 'reference': torch.func.vmap"), msg


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
def test_reference_backend_computes_the_gradient_of_a_gradient(make):
    node = make(backend="reference")
    x = torch.randn(4, 2, 6) * 2

    def penalty(xx):
        return torch.func.grad(lambda z: node(z).square().sum())(xx).square().sum()

    g = torch.func.grad(penalty)(x)
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(node(xr).square().sum(), xr, create_graph=True)
    gx.square().sum().backward()
    assert torch.allclose(g, xr.grad, rtol=1e-5, atol=1e-6) and g.abs().sum() > 0


def test_outside_transforms_the_kernel_backward_is_unchanged():
    node = RevLIF(backend="numba")
    x = torch.randn(4, 2, 6, requires_grad=True)
    y = node(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second-order"):  # the ordinary refusal still holds
        g.sum().backward()


def _optimized_conv_net():
    """``(model, x)``: a conv -> BatchNorm -> LIF net through ``optimize_memory``, its input ``[4, 2, 1, 8, 8]``."""
    import edgesnn
    from edgesnn.nn import SeqToANN

    torch.manual_seed(0)
    model = nn.Sequential(SeqToANN(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)), LIF(),
                          SeqToANN(nn.MaxPool2d(2)), SeqToANN(nn.Flatten(), nn.Linear(4 * 4 * 4, 3)))
    x = torch.rand(4, 2, 1, 8, 8)
    edgesnn.optimize_memory(model, x)
    return model, x


def test_optimize_memory_model_under_func_grad_is_one_line():
    model, x = _optimized_conv_net()
    params = {k: v.detach() for k, v in model.named_parameters()}
    with pytest.raises(RuntimeError) as e:
        torch.func.grad(lambda p: torch.func.functional_call(model, p, (x,)).sum())(params)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("optimize_memory: torch.func transforms") and "uninstall" in msg


def _one_line(e, *words):
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("make", NODES, ids=["LIF", "RevLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("T", [1, 3])
def test_jacrev_and_batched_gradients_are_refused_on_the_hand_written_backwards(make, backend, T):
    # their backward runs under vmap: the kernels read the batch of gradients as one gradient
    # (T = 1, numba: a wrong Jacobian without a word before)
    node = make(backend=backend)
    x = torch.randn(T, 1, 4) * 2
    with pytest.raises(RuntimeError) as e:
        torch.func.jacrev(node)(x)
    _one_line(e, "cannot run batched", "jacrev", "backend='reference'", repr(backend))
    xr = x.clone().requires_grad_()
    with pytest.raises(RuntimeError) as e:
        torch.autograd.grad(node(xr), xr, torch.randn(3, *x.shape), is_grads_batched=True)
    _one_line(e, "cannot run batched", "is_grads_batched", repr(backend))


@pytest.mark.parametrize("make", NODES + [lambda backend: ParametricLIF()], ids=["LIF", "RevLIF", "ParametricLIF"])
def test_reference_backend_jacrev_and_batched_gradients_equal_the_backward(make):
    node = make(backend="reference")
    x = torch.randn(2, 1, 4) * 2
    rows = []
    for i in range(x.numel()):
        xr = x.clone().requires_grad_()
        rows.append(torch.autograd.grad(node(xr).flatten()[i], xr)[0])
    expect = torch.stack(rows).reshape(*x.shape, *x.shape)
    assert expect.abs().sum() > 0
    assert torch.allclose(torch.func.jacrev(node)(x), expect, atol=1e-6)
    xr = x.clone().requires_grad_()
    eye = torch.eye(x.numel()).reshape(-1, *x.shape)
    (batched,) = torch.autograd.grad(node(xr), xr, eye, is_grads_batched=True)
    assert torch.allclose(batched.reshape(*x.shape, *x.shape), expect, atol=1e-6)


@pytest.mark.parametrize("make", NODES + [lambda backend: ParametricLIF()], ids=["LIF", "RevLIF", "ParametricLIF"])
@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_forward_mode_ad_is_refused_in_one_line(make, backend):
    # the reference backend's step function had a zero tangent: jacfwd was all zeros without a word
    node = make(backend=backend)
    x = torch.randn(3, 2, 4) * 2
    with pytest.raises(RuntimeError) as e:
        torch.func.jacfwd(node)(x)
    _one_line(e, "forward-mode AD", "backward")
    with pytest.raises(RuntimeError) as e:
        torch.func.jvp(node, (x,), (torch.ones_like(x),))
    _one_line(e, "forward-mode AD")
    with fwAD.dual_level(), pytest.raises(RuntimeError) as e:
        node(fwAD.make_dual(x, torch.ones_like(x)))
    _one_line(e, "forward-mode AD")


def test_optimize_memory_model_refuses_forward_mode_ad_in_one_line():
    model, x = _optimized_conv_net()
    with fwAD.dual_level(), pytest.raises(RuntimeError) as e:
        model(fwAD.make_dual(x, torch.ones_like(x)))
    _one_line(e, "optimize_memory: forward-mode AD")


def test_forward_mode_ad_on_a_parametric_lifs_own_parameters_is_refused():
    # the tangent on w (or a learnable threshold) came back silently zero: x_seq and v0 carry none
    node = ParametricLIF(learn_threshold=True)
    x = torch.randn(4, 3, 5) * 2
    params = {k: v.detach() for k, v in node.named_parameters()}
    assert len(params) == 2  # w and the threshold
    for name in params:
        tangents = {k: torch.ones_like(v) if k == name else torch.zeros_like(v) for k, v in params.items()}
        with pytest.raises(RuntimeError) as e:
            torch.func.jvp(lambda p: torch.func.functional_call(node, p, (x,)).sum(), (params,), (tangents,))
        _one_line(e, "forward-mode AD", "ParametricLIF")
