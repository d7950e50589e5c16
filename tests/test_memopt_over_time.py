"""``edgesnn.checkpoint_over_time``: a model's own per-time-step code (a spiking self-attention)
run ``chunk`` time steps at a time and recomputed per chunk in backward: the same values and
gradients as calling it plainly, never more than ``chunk`` steps of its intermediates at once,
spike inputs kept as bits (not the caller's dense tensor), and a one-line error for a function it
cannot recompute (mixing time steps, random numbers, BatchNorm in training, hidden parameters).
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, SeqToANN

T, B, N, C, H = 6, 3, 5, 8, 2


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 0.25) -> torch.Tensor:
    """Spikformer-style attention per time step on ``[t, B, N, C]`` (H heads), no softmax."""
    t, b = q.shape[:2]
    q, k, v = (z.reshape(t, b, N, H, C // H).transpose(2, 3) for z in (q, k, v))
    return ((q @ k.transpose(-2, -1)) * scale @ v).transpose(2, 3).reshape(t, b, N, C)


class _Attention(nn.Module):
    """The attention with a trainable gain and a Linear on its output (parameters of ``fn``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.out = nn.Linear(C, C)
        self.steps_seen: list = []

    def forward(self, q, k, v):
        self.steps_seen.append(q.shape[0])
        return self.out(_attention(q, k, v) * self.gain)


def _qkv(x: torch.Tensor, lin: nn.Module, lif: nn.Module):
    s = lif(lin(x))
    q, k, v = s.chunk(3, -1)
    return q, k, v * 0.5 + 0.125  # q, k spikes; v not binary (kept as it is)


def _run(fn, chunk, use, x, lin, lif, params):
    for p in params:
        p.grad = None
    x = x.clone().requires_grad_(True)
    q, k, v = _qkv(x, lin, lif)
    y = edgesnn.checkpoint_over_time(fn, q, k, v, chunk=chunk) if use else fn(q, k, v)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view(y.shape)).sum().backward()
    return [y.detach(), x.grad] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("chunk", [1, 2, 4, 6])
@pytest.mark.parametrize("module", [True, False])
def test_values_and_gradients_match_the_plain_call(chunk, module):
    torch.manual_seed(0)
    lin, lif = nn.Linear(C, 3 * C).double(), LIF(backend="torch", step_mode="m")
    att = _Attention().double()
    fn = att if module else _attention
    params = list(lin.parameters()) + (list(att.parameters()) if module else [])
    x = torch.randn(T, B, N, C, dtype=torch.float64) * 2
    plain = _run(fn, chunk, False, x, lin, lif, params)
    att.steps_seen.clear()
    chunked = _run(fn, chunk, True, x, lin, lif, params)
    for a, b in zip(plain, chunked):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), (a - b).abs().max()
    if module:  # forward chunks, the 2-chunk check, backward chunks: never the whole run
        assert max(att.steps_seen) <= min(2 * chunk, T) and len(att.steps_seen) >= 2 * -(-T // chunk)


def test_spike_inputs_are_kept_as_bits_not_as_the_callers_tensor():
    """The caller's dense spike tensors can be freed after the forward: only their bits stay."""
    torch.manual_seed(1)
    w = torch.randn(C, C, requires_grad=True)
    q = (torch.rand(T, B, N, C) > 0.5).float() @ w.detach()  # any producer that needs a gradient
    q = (q > 0).float() + 0 * (q * w.sum())  # 0/1 values with a gradient path to w
    k = q.detach().flip(0).requires_grad_(True)
    v = torch.randn(T, B, N, C)  # not binary: kept as it is
    ref_q, ref_k = weakref.ref(q), weakref.ref(k)
    y = edgesnn.checkpoint_over_time(_attention, q, k, v, chunk=2)
    k_leaf = k
    del q, k
    gc.collect()
    assert ref_q() is None  # not held by the graph: packed to bits
    assert ref_k() is not None  # (a leaf the caller still holds)
    y.sum().backward()
    assert w.grad is not None and k_leaf.grad is not None and k_leaf.grad.shape == (T, B, N, C)


def test_inside_an_optimized_model_gradients_match():
    """``optimize_memory`` traces the model on fake tensors (the function runs plainly there) and
    the optimized model with its attention recomputed over time trains like the plain model."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Sequential(SeqToANN(nn.Linear(C, 3 * C), nn.BatchNorm1d(N)), LIF(backend="torch", step_mode="m"))
            self.proj = nn.Sequential(SeqToANN(nn.Linear(C, C), nn.BatchNorm1d(N)), LIF(backend="torch", step_mode="m"))

        def forward(self, x):
            q, k, v = self.qkv(x).chunk(3, -1)
            return self.proj(edgesnn.checkpoint_over_time(_attention, q, k, v, chunk=2))

    torch.manual_seed(2)
    plain = nn.Sequential(Block(), Block()).double()
    opt = copy.deepcopy(plain)
    x = torch.rand(T, B, N, C, dtype=torch.float64) * 3
    plan = edgesnn.optimize_memory(opt, x, chunk=2)
    assert len(plan.blocks) == 4  # qkv and proj of both blocks
    grads = []
    for model in (plain, opt):
        xx = x.clone().requires_grad_(True)
        model(xx).square().sum().backward()
        grads.append([xx.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_without_gradients_it_runs_in_chunks_with_the_same_values():
    q, k, v = (torch.rand(T, B, N, C) for _ in range(3))
    with torch.no_grad():
        assert torch.allclose(edgesnn.checkpoint_over_time(_attention, q, k, v, chunk=4), _attention(q, k, v),
                              rtol=1e-6, atol=1e-6)


def _fn_error(case):
    x = torch.rand(4, 2, requires_grad=True)
    lin = nn.Linear(2, 2)
    cases = {
        "mixes": (lambda a: a.cumsum(0), (x,), "fn: gives other values on 2 time steps at once"),
        "random": (lambda a: torch.nn.functional.dropout(a, 0.5), (x,), "fn: draws random numbers"),
        "hidden": (lambda a: lin(a), (x,), "fn: uses tensors that need a gradient other than its inputs"),
        "bn": (nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), (x,), "fn's BatchNorm1d at '1': BatchNorm in training"),
        "node": (nn.Sequential(nn.Linear(2, 2), LIF()), (x,), "fn's LIF at '1': a spiking node"),
        "shape": (lambda a: a.sum(), (x,), "fn: expected one [k, ...] tensor for a chunk of k = 1"),
        "T": (lambda a, b: a + b, (x, torch.rand(3, 2)), "inputs[1]: expected T = 4 time steps"),
        "tensor": (lambda a: a, (3,), "inputs[0]: expected a [T, ...] tensor, got int"),
    }
    return cases[case]


@pytest.mark.parametrize("case", ["mixes", "random", "hidden", "bn", "node", "shape", "T", "tensor"])
def test_a_function_it_cannot_recompute_is_one_line(case):
    fn, args, expected = _fn_error(case)
    with pytest.raises(ValueError) as err:
        edgesnn.checkpoint_over_time(fn, *args)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def test_bad_chunk_and_second_backward_and_inplace_change_are_refused():
    x = torch.rand(4, 2, requires_grad=True)
    with pytest.raises(ValueError, match=r"^chunk: expected an integer >= 1, got 0$"):
        edgesnn.checkpoint_over_time(torch.sin, x, chunk=0)
    y = edgesnn.checkpoint_over_time(torch.sin, x * 2)
    y.sum().backward(retain_graph=True)
    assert torch.allclose(x.grad, 2 * torch.cos(2 * x))
    with pytest.raises(RuntimeError, match="backward ran twice"):
        y.sum().backward()
    d = x.detach().clone().requires_grad_(True) * 1.5  # dense (not 0/1): kept as the caller's tensor
    y = edgesnn.checkpoint_over_time(torch.sin, d)
    d.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def _grads(fn, make, use, chunk=2, **kw):
    """Output and gradients (inputs needing one, then ``fn``'s parameters) of a weighted sum of
    ``fn(*make())``, called plainly or through ``checkpoint_over_time``."""
    torch.manual_seed(0)
    xs = make()
    y = edgesnn.checkpoint_over_time(fn, *xs, chunk=chunk, **kw) if use else fn(*xs)
    wrt = [x for x in xs if x.requires_grad] + (list(fn.parameters()) if isinstance(fn, nn.Module) else [])
    return [y.detach()] + list(torch.autograd.grad((y * torch.linspace(-1, 2, y.numel()).view(y.shape)).sum(), wrt))


def test_negative_zero_is_kept_as_it_is_not_as_bits():
    """-0.0 == 0, but bits unpack it as +0.0, and ``1 / x`` tells them apart: the recomputed
    gradient would differ from the forward's."""
    x = torch.tensor([[0.0, 1.0], [-0.0, 1.0], [1.0, -0.0], [-0.0, 0.0]])

    def fn(a, w):
        return w * (1 / a > 0).to(w.dtype)

    make = lambda: [x, torch.full((4, 2), 1.5, requires_grad=True)]  # noqa: E731
    for a, b in zip(_grads(fn, make, False), _grads(fn, make, True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("T, chunk, silent", [(5, 3, 0), (8, 1, 4), (9, 2, 5)])
def test_mixing_is_caught_below_two_chunks_and_after_silent_first_steps(T, chunk, silent):
    """T < 2 chunk was not checked at all; a run whose first steps hold no spikes hid the mixing."""
    x = (torch.rand(T, 3) > 0.3).float()
    x[:silent] = 0
    with pytest.raises(ValueError, match=r"^fn: gives other values on \d+ time steps at once than in chunks"):
        edgesnn.checkpoint_over_time(lambda a: a.cumsum(0), x, chunk=chunk)


def test_nan_and_inf_neither_break_nor_void_the_check():
    x = torch.rand(6, 2)
    x[0, 0] = float("nan")
    y = edgesnn.checkpoint_over_time(lambda a: a * 2, x, chunk=2)
    assert torch.equal(y.isnan(), (x * 2).isnan()) and torch.equal(y[1:], x[1:] * 2)
    x[0, 0] = float("inf")  # an Inf (where fn is per step) made the tolerance infinite: any value passed
    with pytest.raises(ValueError, match="^fn: gives other values on 4 time steps"):
        edgesnn.checkpoint_over_time(lambda a: torch.cat([a[:, :1], a[:, 1:].cumsum(0)], 1), x, chunk=2)


def test_zero_time_steps_is_the_plain_call():
    x = torch.rand(0, 3, requires_grad=True)
    y = edgesnn.checkpoint_over_time(torch.sin, x)
    assert y.shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 3)


class _Scaled(nn.Module):
    """``x * w`` after ``pre`` (a plain function of ``x``)."""

    def __init__(self, pre=lambda a: a) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), 1.5))
        self.pre = pre

    def forward(self, a):
        return self.pre(a) * self.w


def test_in_place_change_of_an_input_is_refused():
    """Unchecked, the backward's recomputation doubled the caller's tensor again: a wrong w.grad."""
    x = torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"^fn: modifies inputs\[0\] in place"):
        edgesnn.checkpoint_over_time(_Scaled(lambda a: a.mul_(2)), x, check=False)


def test_module_closing_over_a_tensor_that_needs_a_gradient_is_refused():
    outside = nn.Linear(2, 2)  # not a submodule of fn: its gradients were silently lost
    with pytest.raises(ValueError, match="^fn: uses tensors that need a gradient other than its inputs and its own"):
        edgesnn.checkpoint_over_time(_Scaled(lambda a: outside(a)), torch.rand(4, 2, requires_grad=True))


@pytest.mark.parametrize("node", ["edgesnn", "spikingjelly"])
def test_spiking_node_is_refused_in_eval_mode_too(node):
    if node == "edgesnn":
        lif = LIF(backend="torch", step_mode="m")
    else:  # SpikingJelly is a test extra only where it installs (torch >= 2.6, Python >= 3.11)
        lif = pytest.importorskip("spikingjelly.activation_based.neuron").LIFNode(step_mode="m")
    fn = nn.Sequential(nn.Linear(2, 2), lif).eval()
    with pytest.raises(ValueError, match="a spiking node carries its state over T"):
        edgesnn.checkpoint_over_time(fn, torch.rand(8, 3, 2) * 3, check=False)


def test_parameter_changed_between_forward_and_backward_is_refused():
    fn = nn.Linear(2, 2)
    y = edgesnn.checkpoint_over_time(fn, torch.rand(4, 2, requires_grad=True))
    with torch.no_grad():
        fn.weight.mul_(3)  # an optimizer step between the two
    with pytest.raises(RuntimeError, match="modified by an inplace operation: fn's parameter 'weight'"):
        y.sum().backward()


def test_backward_recomputes_in_the_forwards_train_eval_mode():
    fn = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).eval()
    x = torch.rand(16, 2, requires_grad=True)
    plain = torch.autograd.grad(fn(x).square().sum(), x)[0]
    y = edgesnn.checkpoint_over_time(fn, x)
    fn.train()
    assert torch.allclose(torch.autograd.grad(y.square().sum(), x)[0], plain, rtol=1e-6, atol=1e-7)
    assert fn[1].training


def test_chunk_whose_output_needs_no_gradient():
    fn = _Scaled(lambda a: a)
    fn.forward = lambda a: a * 2  # w unused
    x, z = torch.rand(4, 2), torch.rand(1, requires_grad=True)
    (edgesnn.checkpoint_over_time(fn, x).sum() + z.sum()).backward()
    assert z.grad is not None and fn.w.grad is None


def test_double_backward_is_refused_not_silently_first_order():
    x = torch.rand(4, 2, requires_grad=True)
    y = edgesnn.checkpoint_over_time(torch.sin, x * 1)
    with pytest.raises(RuntimeError, match="^checkpoint_over_time: no double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("check", [None, 0.0, "no", []])
def test_check_must_be_a_bool(check):
    # (None / 0.0 / [] switched the check off: a time-mixing fn returned [1, 2, 3, 4] for cumsum's [1, 3, 6, 10])
    with pytest.raises(TypeError, match=r"^check: expected True or False"):
        edgesnn.checkpoint_over_time(lambda a: a.cumsum(0), torch.ones(4, 1, requires_grad=True), check=check)


@pytest.mark.parametrize("transform", ["grad", "vmap"])
def test_torch_func_transforms_are_refused_in_one_line(transform):
    # (PyTorch's own error spoke of a setup_context staticmethod the user never wrote)
    x = torch.rand(4, 2)
    f = lambda a: edgesnn.checkpoint_over_time(torch.sin, a * 1).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match=r"^checkpoint_over_time: torch.func transforms .*inside the transform$"):
        (torch.func.grad(f) if transform == "grad" else torch.func.vmap(f))(x)


_ODD = {"half": 0.5, "-0.0": -0.0, "nan": float("nan"), "1 + ulp": None, "subnormal": None}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("odd", list(_ODD))
def test_spike_codec_reads_every_step_in_every_dtype_and_layout(dtype, odd):
    """The 0/1 test on bit patterns, a few steps at a time: one value that is not +0.0 or 1.0 in the
    last element of the last step (past the first slice) keeps the input dense, in any layout."""
    from edgesnn.memopt.over_time import _CODEC_SLICE, _codec

    info = torch.finfo(dtype)
    value = {"1 + ulp": 1 + info.eps, "subnormal": info.smallest_normal / 2}.get(odd, _ODD[odd])
    x = (torch.rand(3, 2, _CODEC_SLICE // 2 + 7) > 0.5).to(dtype)  # > _CODEC_SLICE elements per step
    assert _codec(x) == _codec(x.transpose(1, 2)) == _codec(x[:1].expand(3, *x.shape[1:])) == "bits"
    x[-1, -1, -1] = value
    reference = bool(((x == 1) | ((x == 0) & ~torch.signbit(x))).all())  # the definition, on values
    assert not reference
    assert _codec(x) == _codec(x.transpose(1, 2)) == _codec(x[2:].expand(3, *x.shape[1:])) == "dense"


def test_check_tolerance_matches_allclose_at_its_edges():
    """The check's comparison, decided first by max |a - b| <= atol: the same answers as allclose
    with that tolerance (NaN and Inf where they are equal, just above the tolerance, mixed dtypes)."""
    from edgesnn.memopt.over_time import _close

    torch.manual_seed(3)
    b = torch.randn(4, 50) * 10
    rtol = 1e-4
    atol = rtol * float(b.abs().amax())
    cases = {"rounding": (b + atol / 4, True),
             "just above": (b + torch.where(b.abs() == b.abs().amax(), 0.0, 2.2 * atol), False),
             "relative part": (b * (1 + 1.5 * rtol), True)}  # |a - b| > atol where |b| is largest
    for name, (a, close) in cases.items():
        assert torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True) == close, name
        assert _close(a, b) == close, name
    assert not _close(b.clone().index_fill_(1, torch.tensor([7]), 1e3), b)
    for special in (float("nan"), float("inf"), -float("inf")):
        a, c = b.clone(), b.clone()
        a[1, 2] = c[1, 2] = special
        assert _close(a, c)  # equal specials are close
        assert not _close(b, c) and not _close(c, b)  # against a finite value they are not
    with pytest.raises(RuntimeError):  # as allclose: no silent promotion
        _close(b.double(), b)


def test_check_runs_on_every_call_not_only_the_first():
    """A first call whose checked steps are silent (all 0) cannot show a mixing fn; the next call
    with the same fn, shapes and chunk must still check (the check is not cached)."""
    def mixes(a):
        return a.cumsum(0)

    silent, spikes = torch.zeros(6, 4), (torch.rand(6, 4) > 0.5).float()
    spikes[-3:] = 1
    assert torch.equal(edgesnn.checkpoint_over_time(mixes, silent, chunk=2), silent)
    with pytest.raises(ValueError, match=r"^fn: gives other values on 4 time steps at once than in chunks of 2"):
        edgesnn.checkpoint_over_time(mixes, spikes, chunk=2)


@pytest.mark.parametrize("spikes", [True, False])
def test_input_repeated_over_time_is_kept_once_with_the_same_gradients(spikes):
    """An ``expand``-ed input (not scanned for spikes: kept once whatever it holds) trains as the plain call."""
    torch.manual_seed(4)
    x0 = torch.rand(3, 2)
    x0 = ((x0 > 0.5).float() if spikes else x0).requires_grad_(True)
    w = torch.rand(6, 1, 2, requires_grad=True)
    grads = []
    for use in (False, True):
        x = x0.expand(6, 3, 2)
        y = edgesnn.checkpoint_over_time(torch.mul, x, w.expand(6, 3, 2), chunk=4) if use else x * w
        grads.append([y.detach()] + list(torch.autograd.grad((y * torch.linspace(-1, 2, y.numel()).view(y.shape)).sum(),
                                                             (x0, w))))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameter_gradients_are_summed_in_float32(dtype):
    """The chunks' parameter gradients were added in the parameter's dtype: one bfloat16 rounding per
    chunk, 3-5x the error of the plain call (0.85 against 0.18 on a weight gradient of 63)."""
    torch.manual_seed(0)
    T, B, N = 32, 16, 64
    lin64 = nn.Linear(N, 32).double()
    x = (torch.rand(T, B, N) > 0.5).double()
    g = torch.randn(T, B, 32, dtype=torch.float64)
    lin64(x).backward(g)
    errors = {}
    for ckpt in (False, True):
        lin = copy.deepcopy(lin64).to(dtype)
        lin.zero_grad()
        y = edgesnn.checkpoint_over_time(lin, x.to(dtype), chunk=1) if ckpt else lin(x.to(dtype))
        y.backward(g.to(dtype))
        assert lin.weight.grad.dtype == dtype
        errors[ckpt] = float((lin.weight.grad.double() - lin64.weight.grad).abs().max())
    assert errors[True] <= 1.5 * errors[False], errors
