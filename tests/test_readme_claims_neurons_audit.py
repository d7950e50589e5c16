"""README claims audit ("Using the neurons" .. "RevLIF: equations and exactness"): the behaviours the
README states that were false or untested, checked as a user would meet them."""

from __future__ import annotations

import pickle

import pytest
import torch

from edgesnn.functional.revlif import to_groups
from edgesnn.nn import LIF, ParametricLIF, RevLIF

NODES = [LIF, RevLIF, ParametricLIF]


@pytest.mark.parametrize("cls", NODES)
@pytest.mark.parametrize("bad", ["no", 2, None, 1.0])
def test_assigned_check_finite_is_checked_as_the_constructor_checks_it(cls, bad):
    # README: "The flags check_finite (all nodes) ... take True / False (or 1 / 0); any other value
    # raises" -- an assigned 'no' used to be kept and, being true, turned the scan on
    node = cls()
    with pytest.raises(TypeError, match="check_finite: expected True or False"):
        node.check_finite = bad
    assert node.check_finite is False


@pytest.mark.parametrize("cls", NODES)
def test_assigned_check_finite_switches_the_scan(cls):
    x = torch.randn(3, 2, 4)
    x[1, 0, 0] = float("nan")
    node = cls()
    node.check_finite = 1
    assert node.check_finite is True
    with pytest.raises(Exception, match="NaN"):
        node(x)
    node.check_finite = False
    assert node.check_finite is False
    assert pickle.loads(pickle.dumps(node)).check_finite is False


def test_learn_threshold_reads_and_refuses_a_change_instead_of_ignoring_it():
    # assigning learn_threshold used to create a plain attribute the node never read (any value, silently)
    fixed, learned = ParametricLIF(), ParametricLIF(learn_threshold=True)
    assert fixed.learn_threshold is False and learned.learn_threshold is True
    learned.learn_threshold = 1  # the same value: nothing changes
    assert list(learned.state_dict()) == ["w", "v_threshold"]
    with pytest.raises(TypeError, match="learn_threshold: expected True or False"):
        fixed.learn_threshold = "no"
    with pytest.raises(ValueError, match="learn_threshold: fixed at construction") as e:
        fixed.learn_threshold = True
    assert "\n" not in str(e.value)
    assert list(fixed.state_dict()) == ["w"] and "v_threshold" not in dict(fixed.named_parameters())


@pytest.mark.parametrize("shape,channel_dim", [((4, 8), 2), ((8,), 1), ((3, 4, 8), 3)])
def test_to_groups_names_a_missing_channel_dim(shape, channel_dim):
    # README points to edgesnn.functional.revlif.to_groups for the grouped layout; a tensor without
    # the channel dim was an IndexError 'tuple index out of range'
    with pytest.raises(ValueError, match=rf"expected the channels at dim {channel_dim}.*got shape"):
        to_groups(torch.randn(*shape), 2, channel_dim)
    with pytest.raises(ValueError, match="groups: expected a positive integer"):
        to_groups(torch.randn(2, 3, 4), 0)  # was ZeroDivisionError


def test_to_groups_still_views_both_layouts():
    x = torch.randn(5, 3, 8, 2)
    assert to_groups(x, 2).shape == (5, 3, 2, 8)
    assert to_groups(x[0], 4, channel_dim=1).shape == (3, 4, 4)


def _manual_revlif(x: torch.Tensor, n: int, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """README's equations, written out: hard reset to 0, tau 2, threshold 1, decay_input."""
    T, B, C = x.shape
    v = torch.zeros(B, n, C // n, dtype=x.dtype)
    ys = []
    for t in range(T):
        xg = x[t].reshape(B, n, C // n)
        y, vn = torch.empty_like(xg), torch.empty_like(v)
        a, w = xg[:, n - 1], v[:, n - 1]  # group 1's source: (x_n, v_n)
        for i in range(n):
            h = w + (a - w) / 2.0
            s = (h >= 1.0).to(x.dtype)
            u = (1 - s) * h
            y[:, i], vn[:, i] = alpha * xg[:, i] + s, beta * v[:, i] + gamma * u
            a, w = y[:, i], vn[:, i]  # later groups: (y_{i-1}, v'_{i-1})
        v = vn
        ys.append(y.reshape(B, C))
    return torch.stack(ys)


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_float_mode_follows_the_readme_equations(backend):
    x = torch.randn(6, 2, 12, dtype=torch.float64) * 2
    for n, alpha, beta, gamma in [(2, 0.7, 0.9, 0.4), (3, 1.0, 1.0, 1.0)]:
        node = RevLIF(groups=n, alpha=alpha, beta=beta, gamma=gamma, mode="float", backend=backend)
        assert torch.allclose(node(x), _manual_revlif(x, n, alpha, beta, gamma), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kw", [dict(gamma=1.0), dict(tau=100.0, gamma=0.99), dict(tau=8.0, gamma=0.75)])
def test_exact_mode_refusing_a_non_contracting_state_gives_the_largest_allowed_gamma(kw):
    # README: exact mode "rejects parameters whose bound leaves the exact range ... with a one-line error
    # giving the largest allowed gamma"; a non-contracting state (an unbounded one) only said "lower gamma or tau"
    with pytest.raises(ValueError, match=r"contracting state.*expected gamma in \(0, ") as e:
        RevLIF(**kw)
    msg = str(e.value)
    assert "\n" not in msg
    largest = float(msg.split("expected gamma in (0, ")[1].split("]")[0])
    kw = dict(kw, gamma=largest)
    assert RevLIF(**kw).gamma == largest  # the suggested value is accepted...
    with pytest.raises(ValueError, match="gamma"):
        RevLIF(**dict(kw, gamma=min(1.0, largest + 2e-4)))  # ...and it is (to 4 decimals) the largest


def _sigmoid_slopes(u: torch.Tensor, a: float = 4.0):
    """Sigmoid surrogate ``sg'(u)`` and ``sg''(u)`` written out (alpha ``a``)."""
    p, q = torch.sigmoid(a * u), torch.sigmoid(-a * u)
    return a * p * q, a * a * p * q * (q - p)


@pytest.mark.parametrize("cls", NODES)
def test_reference_second_order_gradient_includes_the_surrogate_curvature(cls):
    # README: second-order gradients "need backend='reference'". One step from rest, decay_input=False:
    # s = H(x - 1), ds/dx = sg'(x - 1), so d/dx (ds/dx)^2 = 2 sg' sg''. The slope was computed without a
    # graph, so this came out 0 (silently wrong); now it is the formula's value
    x = torch.linspace(-0.5, 2.5, 16, dtype=torch.float64).reshape(1, 2, 8).requires_grad_()
    kw = dict(decay_input=False)
    node = cls(backend="reference", **kw) if cls is not RevLIF else None
    if node is None:  # RevLIF: group 1's spike is driven by group 2's input x_2 (y_1 = alpha x_1 + s_1)
        node = RevLIF(backend="reference", mode="float", groups=2, alpha=1.0, beta=1.0, gamma=1.0, **kw)
    y = node(x)
    sel = torch.zeros_like(y)
    sel[..., :4] = 1.0  # RevLIF: group 1's outputs; LIF/PLIF: the first 4 neurons
    (g,) = torch.autograd.grad((y * sel).sum(), x, create_graph=True)
    half = slice(4, 8) if cls is RevLIF else slice(0, 4)  # the inputs whose spikes were selected
    (gg,) = torch.autograd.grad(g[..., half].square().sum(), x)
    d1, d2 = _sigmoid_slopes(x.detach()[..., half] - 1.0)
    got = gg[..., half]
    assert got.abs().max() > 1e-3
    assert torch.allclose(got, 2 * d1 * d2, rtol=1e-10, atol=1e-12)


def test_reference_second_order_matches_spikingjelly_and_torch_func():
    sj_neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 8, dtype=torch.float64) * 1.5
    w0 = torch.randn(8, 8, dtype=torch.float64) * 0.5
    c = torch.linspace(-1, 1, x0.numel(), dtype=torch.float64).reshape(x0.shape)

    def penalty_grad(node):
        w, x = w0.clone().requires_grad_(), x0.clone().requires_grad_()
        (g,) = torch.autograd.grad((node(x @ w.T) * c).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), w)
        return gw

    ours, theirs = penalty_grad(LIF(backend="reference")), penalty_grad(sj_neuron.LIFNode(step_mode="m"))
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-12)
    # torch.func: grad of grad over the reference backend gives the same
    node = LIF(backend="reference")

    def loss_x(w, x):
        return (node(x @ w.T) * c).sum()

    gw_func = torch.func.grad(lambda w: torch.func.grad(loss_x, argnums=1)(w, x0).square().sum())(w0)
    assert torch.allclose(gw_func, ours, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
def test_reference_second_order_gradient_equals_finite_differences(surrogate):
    # with detach_reset=True the surrogate gradient is a smooth function of the weights between spike
    # flips, so the derivative of the input-gradient penalty is what central differences measure
    # (the old slope-without-graph gave -7.2 where the differences gave 1.74)
    torch.manual_seed(0)
    x0 = torch.randn(6, 3, 8, dtype=torch.float64) * 1.5
    w0 = torch.randn(8, 8, dtype=torch.float64) * 0.5
    c = torch.linspace(-1, 1, x0.numel(), dtype=torch.float64).reshape(x0.shape)
    d = torch.randn(8, 8, dtype=torch.float64)

    def penalty(w, create_graph):
        x = x0.clone().requires_grad_()
        node = LIF(backend="reference", detach_reset=True, surrogate=surrogate)
        (g,) = torch.autograd.grad((node(x @ w.T) * c).sum(), x, create_graph=create_graph)
        return g.square().sum()

    w = w0.clone().requires_grad_()
    penalty(w, True).backward()
    eps = 1e-6
    fd = (penalty(w0 + eps * d, False) - penalty(w0 - eps * d, False)) / (2 * eps)
    assert abs(float((w.grad * d).sum()) - float(fd)) <= 1e-6 * max(1.0, abs(float(fd)))
