"""Audit of ``edgesnn.optimize_memory`` as a user switching from SpikingJelly's memopt meets it:
a second backward, SpikingJelly memory modules (Dropout), parts left unoptimized, and argument
errors that name the argument."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, ParametricLIF, RevLIF, SeqToANN

D = torch.float64


class _Head(nn.Module):
    """A non-Sequential top module: a one-block Sequential on a repeated input, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(SeqToANN(nn.Linear(5, 6)), LIF())
        self.h = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.h(self.f(x))


def _sj_net(dropout: bool = False) -> nn.Sequential:
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    torch.manual_seed(0)
    mods = [layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"), LIF(),
            layer.MaxPool2d(2, step_mode="m")]
    if dropout:
        mods.append(layer.Dropout(0.3, step_mode="m"))
    mods += [layer.Conv2d(4, 4, 3, padding=1, bias=False, step_mode="m"), layer.BatchNorm2d(4, step_mode="m"), LIF(),
             layer.Flatten(step_mode="m"), layer.Linear(36, 4, step_mode="m"), LIF()]
    return nn.Sequential(*mods).double()


@pytest.mark.parametrize("repeated", [True, False])
def test_a_second_backward_is_refused_not_silently_wrong(repeated):
    """Old: a repeated-input block returned the FIRST loss's parameter gradients again on a second
    backward (retain_graph=True) -- silently wrong; a time-varying one raised AttributeError
    ('NoneType' object has no attribute 'check_unmodified')."""
    torch.manual_seed(0)
    base = _Head().double()
    opt = copy.deepcopy(base)
    x0 = torch.rand(2, 5, dtype=D) * 3
    x = x0.unsqueeze(0).expand(4, 2, 5) if repeated else torch.rand(4, 2, 5, dtype=D) * 3
    edgesnn.optimize_memory(opt, x, chunk=2)
    w = torch.linspace(-3, 1, 4 * 2 * 3, dtype=D).view(4, 2, 3)
    y = base(x)
    y.sum().backward(retain_graph=True)
    (y * w).sum().backward()  # the plain model allows it
    y = opt(x)
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"^optimize_memory: backward ran a second time .*retain_graph=True") as e:
        (y * w).sum().backward()
    assert "\n" not in str(e.value)
    # a fresh forward trains as before, with the plain model's gradients
    base.zero_grad()
    opt.zero_grad()
    for m in (base, opt):
        (m(x) * w).sum().backward()
    for a, b in zip(base.parameters(), opt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_spikingjelly_dropout_mask_is_not_left_fake_by_the_trace():
    """Old: the shape trace on fake tensors stored a FakeTensor as SpikingJelly Dropout's mask;
    the first real forward failed ('.numpy() is not supported for tensor subclasses')."""
    functional = pytest.importorskip("spikingjelly.activation_based.functional")

    base = _sj_net(dropout=True)
    opt = copy.deepcopy(base)
    x = torch.rand(4, 2, 2, 7, 7, dtype=D) * 3
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        edgesnn.optimize_memory(opt, x, chunk=2)
    assert opt[4].mask is None
    sgd = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (base, opt)]
    for _ in range(2):
        for m, o in zip((base, opt), sgd):
            o.zero_grad()
            functional.reset_net(m)
            torch.manual_seed(5)  # the same Dropout mask for both
            y = m(x)
            (y * torch.linspace(-1, 1, y.numel(), dtype=D).view(y.shape)).sum().backward()
            o.step()
        for a, b in zip(base.parameters(), opt.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    for a, b in zip(base.buffers(), opt.buffers()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert base.state_dict().keys() == opt.state_dict().keys()
    with pytest.warns(UserWarning, match=r"Dropout at '4' \(not supported: a recomputation would draw a new mask\)"):
        edgesnn.optimize_memory(_sj_net(dropout=True), x, chunk=2)


def test_parts_left_unoptimized_are_named_in_one_warning():
    """Old: a ParametricLIF run (and the conv/BatchNorm before it) stayed plain modules without a word."""
    torch.manual_seed(0)
    net = nn.Sequential(SeqToANN(nn.Linear(3, 4)), LIF(), SeqToANN(nn.Linear(4, 4)), ParametricLIF(),
                        SeqToANN(nn.Linear(4, 4)), LIF(), SeqToANN(nn.Linear(4, 2)))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        plan = edgesnn.optimize_memory(net, torch.rand(3, 2, 3))
    msgs = [str(w.message) for w in rec if "left as plain modules" in str(w.message)]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert "SeqToANN at '2' (no LIF/RevLIF node follows it" in msgs[0]
    assert "ParametricLIF at '3' (not supported: LIF and RevLIF nodes only)" in msgs[0]
    assert "'6'" not in msgs[0]  # the head after the last block is not listed
    assert len(plan.blocks) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fully optimized model warns nothing
        edgesnn.optimize_memory(_Head(), torch.rand(3, 2, 5))


def test_only_parametric_lif_names_it():
    net = nn.Sequential(SeqToANN(nn.Linear(3, 4)), ParametricLIF())
    with pytest.raises(ValueError, match=r"^model: .*the ParametricLIF at '1' is not supported \(LIF and RevLIF only\)$"):
        edgesnn.optimize_memory(net, torch.rand(3, 2, 3))


@pytest.mark.parametrize("bad, match", [
    (lambda x: x[0], r"^example_input: the model's forward failed on it \(shape \(2, 2, 7, 7\).*expected x with shape"),
    (lambda x: x.double(), r"^example_input: the model's forward failed on it .*dtype torch.float64"),
    (lambda x: torch.rand(4, 2, 3, 7, 7), r"^example_input: the model's forward failed on it .*channels"),
    (lambda x: torch.tensor(1.0), r"^example_input: expected a tensor \[T, B, \.\.\.\], got a 0-d tensor$"),
])
def test_example_inputs_the_model_cannot_run_name_example_input(bad, match):
    """Old: the raw layer error (SpikingJelly's 'expected x with shape [T, N, C, H, W]', torch's
    dtype/channel errors, IndexError for a 0-d tensor), naming no argument."""
    net = _sj_net().float()
    with pytest.raises(ValueError, match=match) as e:
        edgesnn.optimize_memory(net, bad(torch.rand(4, 2, 2, 7, 7)))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64, torch.float16])
def test_an_example_input_the_model_cannot_take_is_refused_not_planned(dtype):
    """The trace's fake tensors check no dtypes: an int64 example for float32 layers was planned (another
    plan: 17.3 MiB predicted instead of 6.9) where the plain model refuses it."""
    x = (torch.rand(4, 2, 8) * 3).to(dtype)
    net = nn.Sequential(SeqToANN(nn.Linear(8, 16)), LIF(), SeqToANN(nn.Linear(16, 4)))
    with pytest.raises(ValueError, match=r"^example_input: the model's forward failed on it .*dtype") as e:
        edgesnn.optimize_memory(net, x)
    assert "\n" not in str(e.value)


def test_revlif_groups_that_do_not_divide_the_channels_are_an_example_input_error():
    # (the trace's stand-in nodes ran no check: a plan was returned, the first forward then failed)
    net = nn.Sequential(SeqToANN(nn.Linear(6, 5)), RevLIF(groups=2), SeqToANN(nn.Linear(5, 10)))
    with pytest.raises(ValueError, match=r"^example_input: the model's forward failed on it .*groups: 2 does not "
                                         r"divide the channel count 5"):
        edgesnn.optimize_memory(net, torch.rand(4, 3, 6))


def test_an_example_input_of_another_dtype_that_the_model_takes_is_planned():
    # token ids into an Embedding: int64 is the model's input dtype
    torch.manual_seed(0)
    net = nn.Sequential(SeqToANN(nn.Embedding(10, 16)), LIF(), SeqToANN(nn.Linear(16, 4)))
    ids = torch.randint(0, 10, (6, 3))
    want = net(ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edgesnn.optimize_memory(net, ids)
    assert torch.equal(net(ids), want)


class _Frames(nn.Module):
    """``[T * B, C]`` uint8 rows as a loader hands them -> ``[T, B, C]`` float (T fixed at 4)."""

    def forward(self, x):
        return (x.float() / 255).view(4, -1, x.shape[-1])


def test_an_input_of_another_dtype_that_only_the_whole_example_runs_is_planned():
    # (the dtype check ran the first row only, which this model cannot take: it was refused)
    torch.manual_seed(0)
    net = nn.Sequential(_Frames(), SeqToANN(nn.Linear(8, 16)), LIF(), SeqToANN(nn.Linear(16, 4)))
    x = torch.randint(0, 256, (12, 8), dtype=torch.uint8)
    want = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edgesnn.optimize_memory(net, x)
    assert torch.equal(net(x), want)


def test_spikingjelly_call_order_and_numpy_integers():
    """SpikingJelly's ``optimize_memory(model, targets, example)`` order names what differs; numpy
    integers are integers (old: 'chunk: expected an integer >= 1, got np.int64(2)')."""
    np = pytest.importorskip("numpy")
    layer = pytest.importorskip("spikingjelly.activation_based.layer")
    x = torch.rand(4, 2, 2, 7, 7)
    with pytest.raises(TypeError, match=r"^example_input: expected a tensor \[T, B, \.\.\.\], got module types: .*no targets"):
        edgesnn.optimize_memory(_sj_net().float(), (layer.Conv2d, LIF), x)
    edgesnn.optimize_memory(_sj_net().float(), x, chunk=np.int64(2))
    edgesnn.optimize_memory(_sj_net().float(), x, budget=np.int64(10**8), optimizer_bytes_per_param=np.float32(2))
    with pytest.raises(ValueError, match=r"^chunk: expected an integer >= 1, got np.int64\(0\)$"):
        edgesnn.optimize_memory(_sj_net().float(), x, chunk=np.int64(0))


def test_a_tiny_budget_names_sizes_it_can_show():
    """A budget under 1 MiB read '0.0 MiB cannot be met ... smallest budget accepted is 0.0 MiB'."""
    from edgesnn.models import build_model
    from edgesnn.planner.network import PlanningError

    m = build_model("convnet", (1, 8, 8), 10, 4)
    with pytest.raises(PlanningError) as info:
        edgesnn.optimize_memory(m.body, torch.rand(4, 2, 1, 8, 8), budget=1)
    msg = str(info.value)
    assert msg.startswith("budget: 1 bytes cannot be met") and "0.0 MiB" not in msg and " KiB" in msg, msg


def test_an_input_fake_tensors_cannot_run_logs_no_traceback(caplog):
    """Old: PyTorch's fake-tensor module logged a ~20-line traceback (to stderr, outside pytest) before
    the one-line error (the trace runs on fake tensors first)."""
    net = nn.Sequential(SeqToANN(nn.Linear(5, 4)), LIF())
    with caplog.at_level("DEBUG", logger="torch._subclasses.fake_tensor"):
        with pytest.raises(ValueError, match=r"^example_input: the model's forward failed on it") as e:
            edgesnn.optimize_memory(net, torch.rand(4, 2, 4))
    assert "\n" not in str(e.value)
    logged = [r for r in caplog.records if r.levelno >= 40]  # ERROR and above
    assert not logged, logged[0].getMessage()
