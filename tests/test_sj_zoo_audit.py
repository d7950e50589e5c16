"""SpikingJelly's model zoo built with edgesnn's nodes passed as ``spiking_neuron``: the same outputs,
gradients and state_dict as with SpikingJelly's nodes, and ``optimize_memory`` on the zoo's models
(a VGG with BatchNorm runs optimized, set to single-step and back; a ResNet is refused in one line
that names where its nodes sit)."""

import copy
import importlib.util
import sys
import types
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import edgesnn
from edgesnn.nn import LIF, ParametricLIF
from conftest import rel_err
from _errors import one_line_error

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402
from spikingjelly.activation_based import neuron as sjn  # noqa: E402
from spikingjelly.activation_based.model import parametric_lif_net  # noqa: E402

T, B = 2, 2


def _no_download(*args, **kwargs):
    raise RuntimeError("pretrained weights are not used in these tests")


@pytest.fixture(scope="module")
def zoo() -> SimpleNamespace:
    """SpikingJelly's VGG and ResNet modules import torchvision only to download pretrained weights
    (never used here): without torchvision a stand-in is in ``sys.modules`` while they import."""
    mp = pytest.MonkeyPatch()
    if importlib.util.find_spec("torchvision") is None:
        tv, utils = types.ModuleType("torchvision"), types.ModuleType("torchvision._internally_replaced_utils")
        utils.load_state_dict_from_url = _no_download
        mp.setitem(sys.modules, "torchvision", tv)
        mp.setitem(sys.modules, "torchvision._internally_replaced_utils", utils)
    try:
        from spikingjelly.activation_based.model import sew_resnet, spiking_resnet, spiking_vgg
    finally:
        mp.undo()
    return SimpleNamespace(vgg=spiking_vgg, resnet=spiking_resnet, sew=sew_resnet)


def _small_vgg(zoo, node, **kwargs) -> nn.Sequential:
    """The zoo's VGG feature builder (conv -> BatchNorm -> node, max-pools) with a small head."""
    features = zoo.vgg.SpikingVGG.make_layers(cfg=[8, "M", 16, "M"], batch_norm=True, neuron=node, **kwargs)
    return nn.Sequential(features, layer.Flatten(), layer.Linear(16 * 8 * 8, 10))


def _build(zoo, arch: str, node, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    if arch == "cifar10net":
        return parametric_lif_net.CIFAR10Net(channels=8, spiking_neuron=node, **kwargs)
    if arch == "vgg":
        return _small_vgg(zoo, node, **kwargs)
    if arch == "resnet18":
        return zoo.resnet.spiking_resnet18(spiking_neuron=node, num_classes=10, **kwargs)
    return zoo.sew.sew_resnet18(spiking_neuron=node, num_classes=10, cnf="ADD", **kwargs)


def _run(net: nn.Module, x: torch.Tensor, g: torch.Tensor = None):
    """Multi-step forward + backward of ``(y * g).sum()``; the output, input gradient and parameter gradients."""
    x = x.clone().requires_grad_(True)
    torch.manual_seed(1)  # the same Dropout masks for both models
    y = net(x)
    g = torch.randn_like(y, generator=torch.Generator().manual_seed(2)) if g is None else g
    (y * g).sum().backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
    net.zero_grad(set_to_none=True)
    functional.reset_net(net)
    return y.detach(), x.grad, grads


def _grads_close(a: dict, b: dict, rtol: float) -> bool:
    """Per parameter ``||a - b|| <= rtol ||b|| + 1e-5``: a conv bias before BatchNorm has a gradient of
    zero up to rounding (~1e-7), which the two orders of summation round differently."""
    return a.keys() == b.keys() and all(float((a[k] - b[k]).norm()) <= rtol * float(b[k].norm()) + 1e-5 for k in b)


def _single_steps(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.set_step_mode(net, "s")
    functional.reset_net(net)
    with torch.no_grad():
        torch.manual_seed(1)
        out = torch.stack([net(x[t]) for t in range(x.shape[0])])
    functional.reset_net(net)
    functional.set_step_mode(net, "m")
    return out


NODES = {"LIF": (sjn.LIFNode, LIF, {"tau": 2.0}),
         "ParametricLIF": (sjn.ParametricLIFNode, ParametricLIF, {"init_tau": 2.0})}


@pytest.mark.parametrize("arch", ["cifar10net", "vgg", "resnet18", "sew_resnet18"])
@pytest.mark.parametrize("kind", sorted(NODES))
def test_zoo_model_with_edgesnn_nodes_matches_spikingjelly(zoo, arch, kind):
    sj_node, our_node, tau = NODES[kind]
    kwargs = dict(tau, surrogate_function=surrogate.ATan(), detach_reset=True, v_threshold=0.25)
    theirs, ours = _build(zoo, arch, sj_node, **kwargs), _build(zoo, arch, our_node, **kwargs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    for net in (theirs, ours):
        functional.set_step_mode(net, "m")
    x = torch.rand(T, B, 3, 32, 32) * 3
    y0, gx0, gw0 = _run(theirs, x)
    y1, gx1, gw1 = _run(ours, x)
    assert torch.equal(y0, y1) and y0.abs().sum() > 0  # spikes reach the output
    assert rel_err(gx1, gx0) < 1e-5
    assert _grads_close(gw1, gw0, 1e-4)
    assert torch.equal(_single_steps(ours, x), _single_steps(theirs, x))
    back = _build(zoo, arch, sj_node, **kwargs)
    back.load_state_dict(ours.state_dict())  # and back into SpikingJelly's model
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))


def test_optimized_zoo_vgg_keeps_gradients_and_switches_to_single_step_without_warning(zoo):
    """A set_step_mode(net, 's') after optimize_memory warned 'changed after optimize_memory (a hook,
    stateful=True or a replaced child)' and advised re-planning; the blocks run again once set back to 'm'."""
    kwargs = dict(surrogate_function=surrogate.ATan(), detach_reset=True, v_threshold=0.5)
    plain = _build(zoo, "vgg", LIF, **kwargs)
    functional.set_step_mode(plain, "m")
    opt = copy.deepcopy(plain)
    x = torch.rand(T, B, 3, 32, 32) * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = edgesnn.optimize_memory(opt, x)
    assert len(plan.blocks) == 2
    y0, gx0, gw0 = _run(plain, x)
    y1, gx1, gw1 = _run(opt, x)
    assert torch.equal(y0, y1) and rel_err(gx1, gx0) < 1e-5
    assert _grads_close(gw1, gw0, 1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(_single_steps(opt, x), _single_steps(plain, x))
        y2, gx2, gw2 = _run(opt, x)  # multi-step again: the blocks run as planned, still no warning
    assert torch.equal(y2, y1) and torch.equal(gx2, gx1) and all(torch.equal(gw2[k], gw1[k]) for k in gw1)
    seq = opt[0]
    assert all(b.unchanged(list(seq)) for b in seq._memopt_blocks)
    opt[0][2].register_forward_hook(lambda *a: None)  # a real change still warns
    with pytest.warns(UserWarning, match=r"^optimize_memory: the LIF block \(children 0-3\) changed after"):
        _run(opt, x)


@pytest.mark.parametrize("arch, block", [("resnet18", "SpikingResNet"), ("sew_resnet18", "SEWResNet")])
def test_optimize_memory_on_a_zoo_resnet_names_where_its_nodes_sit(zoo, arch, block):
    """It said 'the LIF at 'sn1' is not supported (LIF and RevLIF only)' of a LIF."""
    net = _build(zoo, arch, LIF, surrogate_function=surrogate.ATan(), detach_reset=True)
    functional.set_step_mode(net, "m")
    msg = one_line_error(ValueError, lambda: edgesnn.optimize_memory(net, torch.rand(T, B, 3, 32, 32)),
                         f"the LIF at 'sn1' is a child of {block}, not of a plain nn.Sequential")
    assert "LIF and RevLIF only" not in msg
    one_line_error(ValueError, lambda: edgesnn.optimize_memory(LIF(), torch.rand(T, B, 3)),
                   "the LIF at 'the top' is the model itself")


def test_optimize_memory_on_spikingjelly_nodes_names_the_switch():
    """It said only 'no nn.Sequential with edgesnn LIF/RevLIF nodes found to optimize'."""
    net = nn.Sequential(layer.Linear(4, 4, step_mode="m"), sjn.LIFNode(step_mode="m"))
    one_line_error(ValueError, lambda: edgesnn.optimize_memory(net, torch.rand(T, B, 4)),
                   "the LIFNode at '1' is SpikingJelly's (only edgesnn's nodes are rewritten); use edgesnn.nn.LIF")
