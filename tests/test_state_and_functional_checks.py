"""Second-order gradients refused by the hand-written backwards, carried state across a change of
step mode or ``stateful``, and the argument checks of the public step functions."""

from __future__ import annotations

import warnings

import pytest
import torch

from edgesnn.functional import LIFParams, RevLIFParams, lif_step, revlif_step, revlif_step_backward
from edgesnn.functional.grid import unpack_bit
from edgesnn.functional.revlif import ReconstructionError, revlif_step_inverse, to_groups
from edgesnn.functional.revlif_autograd import torch_forward
from edgesnn.kernels import custom_ops, dispatch
from edgesnn.nn import LIF, RevLIF

FAST_BACKENDS = ["torch"] + (["numba"] if dispatch.numba_available() else [])


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _penalty_setup(cls, backend: str, seed: int = 0):
    """The audit's input-gradient penalty: ``g = d(y * w).sum() / dx`` with ``create_graph=True``."""
    torch.manual_seed(seed)
    x = (torch.randn(4, 2, 4) * 1.5).requires_grad_(True)
    w = torch.linspace(-1, 1, x.numel()).reshape(x.shape).requires_grad_(True)
    y = cls(backend=backend)(x)
    gx, gw = torch.autograd.grad((y * w).sum(), [x, w], create_graph=True)
    return x, w, gx, gw


# ----------------------------------------------------------------------------- 1. second order


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_second_backward_through_fast_backward_raises(cls, backend):
    x, w, gx, _ = _penalty_setup(cls, backend)
    with pytest.raises(RuntimeError) as info:
        (gx * gx).sum().backward()
    msg = _one_line(info)
    assert f"{cls.__name__} backend {backend!r}" in msg and "second-order" in msg and "backend='reference'" in msg


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_create_graph_backward_not_through_the_node_works(cls, backend):
    """A create_graph=True backward works; differentiating what does not go through the node's
    gradient (here ``d/dw = y``, then back through the forward) gives the reference's values."""
    results = []
    for be in (backend, "reference"):
        x, w, gx, gw = _penalty_setup(cls, be)
        assert torch.equal(gw, cls(backend=be)(x.detach()))  # the first order is right
        g2, = torch.autograd.grad((gw * gw).sum(), [x])
        results.append((gx.detach(), g2))
    (gx_fast, g2_fast), (gx_ref, g2_ref) = results
    torch.testing.assert_close(gx_fast, gx_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2_fast, g2_ref, rtol=1e-4, atol=1e-5)
    assert float(g2_fast.abs().sum()) > 0


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_backward_create_graph_on_a_model_then_a_plain_step(backend):
    """``loss.backward(create_graph=True)`` on a model with a node must not raise by itself."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), LIF(backend=backend))
    x = torch.randn(3, 2, 4) * 2
    model(x).sum().backward(create_graph=True)
    weight_grad = model[0].weight.grad
    assert weight_grad is not None and weight_grad.requires_grad
    with pytest.raises(RuntimeError, match="second-order"):
        weight_grad.pow(2).sum().backward()
    model.zero_grad(set_to_none=True)  # break the parameter <-> gradient cycle


def _straight_through_lif(x_seq: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    """LIF (hard reset to 0, threshold 1, decay_input) written out with the spike as
    ``H(u) + sg(u) - stop(sg(u))`` (value H(u), derivative sg'(u), second derivative sg''(u), as
    SpikingJelly's surrogates differentiate): an independent oracle."""
    v, out = torch.zeros_like(x_seq[0]), []
    for x in x_seq:
        h = v + (x - v) / tau
        u = h - 1.0
        sg = torch.sigmoid(alpha * u)
        s = (u >= 0).to(u.dtype).detach() + (sg - sg.detach())
        v = s * 0.0 + (1.0 - s) * h
        out.append(s)
    return torch.stack(out)


def test_reference_second_order_gradients_are_right():
    """The reference backend (plain autograd) differentiates its own gradient: the input-gradient
    penalty's gradient equals the straight-through formulation's, written out independently."""
    torch.manual_seed(2)
    x0 = torch.randn(5, 3, 4, dtype=torch.float64) * 1.5 + 0.8
    w = torch.randn(5, 3, 4, dtype=torch.float64)
    grads = []
    for run in (lambda a: LIF(tau=2.0, backend="reference")(a), lambda a: _straight_through_lif(a, 2.0, 4.0)):
        x = x0.clone().requires_grad_(True)
        g, = torch.autograd.grad((run(x) * w).sum(), [x], create_graph=True)
        (g * g).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0
    for cls in (LIF, RevLIF):  # the audit's case: a non-zero second order (the fast backends raise instead)
        x2, _, gx, _ = _penalty_setup(cls, "reference")
        (gx * gx).sum().backward()
        assert float(x2.grad.abs().sum()) > 0


@pytest.mark.skipif(not dispatch.numba_available(), reason="numba not available")
def test_custom_op_path_refuses_second_order_too():
    """The registered ops (what torch.compile and tracing run) wire the same refusal."""
    torch.manual_seed(3)
    x = (torch.randn(4, 2, 6) * 1.5).requires_grad_(True)
    s, _ = custom_ops.lif_fwd(x, torch.zeros(2, 6), *custom_ops.lif_params_args(LIFParams()), "numba")
    g, = torch.autograd.grad((s * torch.arange(6.0)).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="LIF backend 'numba': second-order"):
        g.pow(2).sum().backward()
    xg = to_groups(x, 2)
    p = RevLIFParams()
    v0 = torch.zeros(2, 2, 3)
    y, *_ = custom_ops.revlif_fwd(xg, v0, 1, *custom_ops.revlif_params_args(p), "numba")
    g, = torch.autograd.grad(y.pow(2).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="RevLIF backend 'numba': second-order"):
        g.pow(2).sum().backward()
    with pytest.raises(RuntimeError, match="RevLIF backend 'numba': second-order"):
        torch.autograd.grad(g.pow(2).sum(), [x])  # (only the nodes on a path to x run)


# ----------------------------------------------------------------------------- 2. state across mode changes


def test_single_to_multi_step_continues_from_the_carried_state_like_spikingjelly():
    sjf = pytest.importorskip("spikingjelly.activation_based.functional")
    sjn = pytest.importorskip("spikingjelly.activation_based.neuron")
    outs = []
    for node in (sjn.LIFNode(step_mode="s"), LIF(step_mode="s")):
        net = torch.nn.Sequential(node)
        net(torch.full((1, 1), 1.2))  # one step: v = 0.6 carried
        sjf.set_step_mode(net, "m")
        outs.append(net(torch.full((3, 1, 1), 1.2)).flatten().tolist())
    assert outs[0] == outs[1] == [0.0, 1.0, 0.0]


@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_single_to_multi_step_then_v_is_what_the_next_call_uses(cls):
    torch.manual_seed(4)
    steps, seq = torch.randn(2, 3, 4) + 0.8, torch.randn(5, 3, 4) + 0.8
    node = cls(step_mode="s")
    for t in range(2):
        node(steps[t])
    held = node.v.clone()
    node.step_mode = "m"
    assert torch.equal(node.v, held)  # still the state the next call starts from
    out = node(seq)
    streamed = cls(stateful=True)
    streamed.v = held
    assert torch.equal(out, streamed(seq))  # continued from the carried state
    with pytest.warns(UserWarning, match="keeps no final state"):
        v_after = node.v
    assert v_after == node._fresh_value()  # nothing held any more: the next call starts fresh
    assert torch.equal(node(seq), cls()(seq))


def test_multi_to_single_step_keeps_a_stateful_nodes_state_like_spikingjelly():
    sjn = pytest.importorskip("spikingjelly.activation_based.neuron")
    torch.manual_seed(5)
    seq, step = torch.randn(4, 2, 3) + 0.8, torch.randn(2, 3) + 0.8
    theirs, ours = sjn.LIFNode(step_mode="m"), LIF(stateful=True)
    assert torch.equal(theirs(seq), ours(seq))
    theirs.step_mode = "s"
    ours.step_mode = "s"
    assert torch.equal(theirs(step), ours(step))
    assert torch.allclose(theirs.v, ours.v, atol=1e-6)


def test_multi_to_single_step_of_a_stateless_node_starts_from_its_v():
    torch.manual_seed(6)
    seq, step = torch.randn(4, 2, 3) + 0.8, torch.randn(2, 3) + 0.8
    node = LIF()
    node(seq)
    with pytest.warns(UserWarning, match="keeps no final state"):
        assert node.v == 0.0
    node.step_mode = "s"
    assert torch.equal(node(step), LIF(step_mode="s")(step))  # from .v (fresh), as reported


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("cls,backend", [(LIF, "reference"), (LIF, "numba"), (RevLIF, "torch")])
def test_checkpointing_a_step_of_a_node_carrying_its_state_is_refused(cls, backend, reentrant):
    """torch.utils.checkpoint recomputes a step during backward, from the state the node holds then
    (the last step's): LIF's input gradient was silently off by its own size, RevLIF blamed a kernel
    bug. A multi-step call from a fresh state checkpoints fine."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    x = (torch.randn(4, 2, 8) * 2).requires_grad_()
    node = cls(backend=backend, step_mode="s")
    ys = [checkpoint(node, x[t], use_reentrant=reentrant) for t in range(4)]
    with pytest.raises(RuntimeError, match=rf"^{cls.__name__}: called with its carried state .* during a backward"):
        torch.stack(ys).sum().backward()
    multi = cls(backend=backend)
    checkpoint(multi, x, use_reentrant=reentrant).sum().backward()
    got = x.grad.clone()
    x.grad = None
    multi(x).sum().backward()
    assert torch.equal(got, x.grad)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_a_function_that_resets_the_node_first_recomputes_exactly(reentrant):
    """The recomputation starts from the same fresh state as the forward, and its later steps from
    states it made itself: no refusal, the plain gradients."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    lin, node = torch.nn.Linear(8, 8), LIF(step_mode="s")
    x = torch.randn(6, 4, 8)

    def f(x_seq: torch.Tensor) -> torch.Tensor:
        node.reset()
        return torch.stack([node(lin(x_seq[t])) for t in range(6)])

    f(x).sum().backward()
    want = lin.weight.grad.clone()
    lin.weight.grad = None
    checkpoint(f, x.requires_grad_(reentrant), use_reentrant=reentrant).sum().backward()
    assert torch.equal(lin.weight.grad, want)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_a_multi_step_call_that_took_a_held_state_is_refused(reentrant):
    """The forward's call started from the state held from step_mode='s' calls and dropped it, so
    the recomputation started fresh: input gradients off by 1.29 of 2.0, without a word."""
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    node = LIF(step_mode="s")
    x = (torch.randn(6, 4, 8) * 2).requires_grad_()
    node(x[0])
    node.step_mode = "m"
    y = checkpoint(node, x[1:], use_reentrant=reentrant)
    with pytest.raises(RuntimeError, match=r"^LIF: recomputed during a backward \(torch\.utils\.checkpoint\) after its "
                                           r"forward call started from the state held"):
        y.sum().backward()


@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_stateful_false_drops_a_held_state_with_one_warning(cls):
    torch.manual_seed(7)
    seq = torch.randn(4, 2, 4) + 0.8
    node = cls(stateful=True)
    node(seq)
    assert isinstance(node.v, torch.Tensor)
    with pytest.warns(UserWarning) as record:
        node.stateful = False
    assert len(record) == 1 and "\n" not in str(record[0].message) and "dropped the carried state" in str(record[0].message)
    assert node.v == node._fresh_value()
    assert torch.equal(node(seq), cls()(seq))
    quiet = cls(stateful=True)
    quiet(seq)
    quiet.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.stateful = False  # nothing held: no warning


# ----------------------------------------------------------------------------- 3./4. revlif_step checks


@pytest.mark.parametrize("x_shape, v_shape", [((2, 4), (2, 4)), ((2, 3, 4), (2, 3, 4)), ((2, 2, 4), (2, 4)),
                                              ((2, 2, 4), (2, 2, 3))])
def test_revlif_step_rejects_ungrouped_or_mismatched_shapes(x_shape, v_shape):
    with pytest.raises(ValueError) as info:
        revlif_step(torch.randn(x_shape), torch.zeros(v_shape), RevLIFParams(groups=2))
    msg = _one_line(info)
    assert str(tuple(x_shape) if len(x_shape) != 3 or x_shape[1] != 2 else tuple(v_shape)) in msg
    if len(x_shape) != 3 or x_shape[1] != 2:
        assert "to_groups" in msg


def test_revlif_step_accepts_the_grouped_layout():
    y, v, bits = revlif_step(torch.zeros(2, 2, 4), torch.zeros(2, 2, 4), RevLIFParams(groups=2))
    assert y.shape == v.shape == bits.shape == (2, 2, 4)


def test_revlif_step_backward_exact_without_bits_is_explained():
    p = RevLIFParams()
    z = torch.zeros(2, 2, 3)
    for call in (lambda: revlif_step_backward(z, z, None, z, z, p), lambda: revlif_step_inverse(z, z, None, p)):
        with pytest.raises(ValueError) as info:
            call()
        msg = _one_line(info)
        assert msg.startswith("bits:") and "mode='exact'" in msg and "revlif_step" in msg
    # float mode needs none; the right bits still invert
    revlif_step_backward(z, z, None, z, z, RevLIFParams(mode="float"))
    xg = torch.randn(3, 2, 2, 3)
    y, vT, bits, _ = torch_forward(xg, torch.zeros(2, 2, 3), p)
    x_rec, _ = revlif_step_inverse(y[2], vT, unpack_bit(bits, 2), p)
    assert x_rec.shape == (2, 2, 3)


# ----------------------------------------------------------------------------- 5. Inf in v0


@pytest.mark.parametrize("backend", ["reference"] + FAST_BACKENDS)
def test_inf_in_initial_state_is_counted_as_inf(backend):
    node = RevLIF(step_mode="s", backend=backend)
    v0 = torch.zeros(2, 4)
    v0[0, 0] = float("inf")
    v0[1, 1] = float("-inf")
    node.v = v0
    with pytest.raises(ValueError, match=r"v0 holds non-finite values \(0 NaN, 2 \+-Inf of 8"):
        node(torch.randn(2, 4))
    x = torch.randn(2, 4)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x_seq holds non-finite values \(1 NaN"):  # the input is named first
        node(x)


# ----------------------------------------------------------------------------- 6. assigned .v mismatches


def test_assigned_state_mismatch_is_worded_per_cause():
    node = LIF(step_mode="s")
    node.v = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(TypeError) as info:
        node(torch.randn(2, 4))
    msg = _one_line(info)
    assert "float64" in msg and "float32" in msg and ".to(" in msg and "batch" not in msg
    node.v = torch.zeros(2, 4, device="meta")
    with pytest.raises(TypeError, match="meta") as info:
        node(torch.randn(2, 4))
    assert "batch" not in str(info.value)
    node.v = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"shape \(3, 4\).*\(2, 4\).*reset\(\).*new batch"):
        node(torch.randn(2, 4))
    with pytest.raises(TypeError, match="v: expected a floating-point tensor"):
        node.v = torch.zeros(2, 4, dtype=torch.int64)


# ----------------------------------------------------------------------------- 7. float-mode hint


def test_a_low_precision_state_meeting_autocast_says_the_node_casts_there():
    """A bfloat16 state from calls outside autocast, then the same bfloat16 input inside it: the
    message said the input was float32, which the user never passed."""
    node = LIF(step_mode="s")
    node(torch.rand(3, 8).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
            TypeError, match=r"inside torch\.autocast the node casts a float16/bfloat16 input to float32"):
        node(torch.rand(3, 8).bfloat16())


def test_float_mode_reconstruction_error_suggests_float64_only_when_not_used():
    p = RevLIFParams(mode="float", beta=0.75)
    torch.manual_seed(0)
    x = (torch.randn(64, 4, 8, dtype=torch.float64) * 3).requires_grad_(True)
    with pytest.raises(ReconstructionError) as info:
        dispatch.revlif_multistep(x, p, None, "torch")[0].sum().backward()
    assert "float64" not in str(info.value) and "mode='exact'" in str(info.value)
    x32 = x.detach().float().requires_grad_(True)
    with pytest.raises(ReconstructionError, match="float64"):
        dispatch.revlif_multistep(x32, p, None, "torch")[0].sum().backward()


# ----------------------------------------------------------------------------- 8. lif_step


def test_lif_step_rejects_broadcasting_and_promotion():
    p = LIFParams()
    with pytest.raises(ValueError, match=r"v: expected the shape \(2, 4\) and dtype float32 of x, got \(4,\) float64"):
        lif_step(torch.randn(2, 4), torch.zeros(4, dtype=torch.float64), p)
    with pytest.raises(ValueError, match="dtype float32"):
        lif_step(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.float64), p)
    with pytest.raises(ValueError, match=r"\(1, 4\)"):
        lif_step(torch.randn(2, 4), torch.zeros(1, 4), p)
    s, v = lif_step(torch.full((2, 4), 3.0), torch.zeros(2, 4), p)
    assert torch.equal(s, torch.ones(2, 4)) and torch.equal(v, torch.zeros(2, 4))


# ----------------------------------------------------------------------------- compile


@pytest.mark.parametrize("cls", [LIF, RevLIF])
def test_compile_fullgraph_torch_backend_with_a_held_state(cls):
    """torch.compile(fullgraph=True) of the torch backend, also for a multi-step call that starts
    from a state carried by single-step calls (the node drops it afterwards)."""
    torch.manual_seed(8)
    x = torch.randn(3, 2, 4) + 0.8
    node = cls(backend="torch")
    compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), cls(backend="torch")(x))
    node.step_mode = "s"
    node(x[0])
    held = node.v.clone()
    node.step_mode = "m"
    out = compiled(x)
    ref = cls(backend="torch", stateful=True)
    ref.v = held
    assert torch.equal(out, ref(x)) and node._v is None


@pytest.mark.parametrize("mode", ["exact", "float"])
def test_compile_fullgraph_backward_of_torch_backend_revlif(mode):
    """torch.compile(fullgraph=True) through the torch backend's backward: the reconstruction check
    is a graph op there (torch.equal on values broke the graph), gradients equal eager."""
    torch.manual_seed(3)
    x = (torch.randn(6, 2, 8, dtype=torch.float64) * 2).requires_grad_()
    node = RevLIF(backend="torch", mode=mode)
    compiled = torch.compile(node, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    got, x.grad = x.grad.clone(), None
    node(x).sum().backward()
    assert torch.equal(got, x.grad)
