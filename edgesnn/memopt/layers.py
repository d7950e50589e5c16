"""What the memory optimizer knows about a layer: its kind, its per-step function, what it outputs.

A multi-step model applies stateless layers to every time step at once (``[T, B, ...]`` merged
to ``[T * B, ...]``), as edgesnn's :class:`~edgesnn.nn.SeqToANN` and SpikingJelly's multi-step
layers and ``SeqToANNContainer`` do. Here each such layer is reduced to a :class:`Step`: a
function on merged ``[N, ...]`` tensors plus its kind. Spiking nodes stay multi-step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from ..nn import LIF, RevLIF
from ..nn.layers import SeqToANN

__all__ = ["Step", "BaseForward", "child_steps", "block_steps", "own_forward", "output_codec", "is_node",
           "node_refusal", "hooked", "global_hooks", "runs_plain_forward", "pair", "recomputable_parametrizations",
           "leaf_step"]

# Kinds: "node" (LIF/RevLIF), "bn" (BatchNorm), "param" (a layer with parameters: conv, linear),
# "free" (no parameters, deterministic: pooling, flatten, activations without state).
_FREE_TYPES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity,
)
_PARAM_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Step:
    """One per-step layer: ``fn`` maps ``[N, ...]`` to ``[N, ...']``; ``module`` owns its parameters."""

    kind: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    module: nn.Module

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` on ``x [N, ...]``, calling no module hook. A block is chunked only while its layers
        have none (:func:`hooked`), so this equals ``fn(x)`` in the forward; a hook added later, between
        a forward and its backward, is not called by the block's recomputation, as autograd's saved
        tensors would not call it (it ran up to once per chunk, and one that edits its output changed
        the gradients)."""
        if self.fn is self.module:
            return type(self.module).forward(self.module, x)
        return self.fn(x)


@dataclass(frozen=True)
class BaseForward:
    """``cls.forward(module, x)``: a SpikingJelly layer's single-step computation, its torch base
    class's forward, on merged ``[T * B, ...]`` steps. Holds the class, not a bound method, so a
    pickled model (``torch.save(model)``) calls the same function after loading."""

    cls: type
    module: nn.Module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The base class's forward of ``module`` on ``x [T * B, ...]`` (steps merged into the batch)."""
        return self.cls.forward(self.module, x)


def _base_node_class(m: nn.Module) -> Optional[type]:
    return LIF if isinstance(m, LIF) else RevLIF if isinstance(m, RevLIF) else None


def is_node(m: nn.Module) -> bool:
    """An edgesnn LIF/RevLIF node the optimizer can chunk: multi-step, fresh state every call.

    A node that carries its state across calls (``step_mode='s'`` or ``stateful=True``) is left
    as it is: recomputing it from a fresh state would be wrong; so is a node with hooks
    (:func:`hooked`), which the kernels would bypass, and a subclass with its own ``forward`` or
    ``_run`` (the kernels compute the base class's).
    """
    base = _base_node_class(m)
    return (base is not None and type(m).forward is base.forward and type(m)._run is base._run
            and getattr(m, "step_mode", "m") == "m" and not getattr(m, "stateful", False) and not hooked(m))


def node_refusal(m: nn.Module) -> Optional[str]:
    """Why the LIF/RevLIF node ``m`` is left as it is (``None``: not such a node, or one :func:`is_node` accepts)."""
    base = _base_node_class(m)
    if base is None or is_node(m):
        return None
    if type(m).forward is not base.forward or type(m)._run is not base._run:
        return "is a subclass with its own forward or _run"
    if getattr(m, "step_mode", "m") != "m":
        return "is single-step (step_mode='s')"
    if getattr(m, "stateful", False):
        return "carries its state across calls (stateful=True)"
    return "has hooks (or a forward set on the instance)"


def global_hooks() -> bool:
    """Module hooks registered for every module (``torch.nn.modules.module.register_module_*_hook``)."""
    from torch.nn.modules import module as torch_module

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return any(getattr(torch_module, n, None) for n in names)


def hooked(m: nn.Module) -> bool:
    """``m`` has module hooks (forward, forward-pre, backward or backward-pre; its own or global
    ones), or a ``forward`` set on the instance: calling it may compute something its class does
    not say, or call code the optimizer's kernels and recomputations would skip or call per chunk.
    Such modules (and wrappers holding one) are left as they are."""
    own = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, getattr(m, "_backward_pre_hooks", None))
    return any(own) or "forward" in m.__dict__ or global_hooks()


def runs_plain_forward(step: Step, cls: type) -> bool:
    """``step`` computes exactly ``cls.forward`` (so a kernel may stand in for it): either its
    function is that forward applied to the module (:class:`BaseForward`: SpikingJelly's multi-step
    layers; no hooks run then), or it calls the module itself, whose class forward is
    ``cls.forward``, with no hook (its own or a global one) and no ``forward`` set on the instance."""
    m, fn = step.module, step.fn
    if isinstance(fn, BaseForward):
        return fn.cls.forward is cls.forward
    return fn is m and type(m).forward is cls.forward and not hooked(m)


def _torch_base(cls: type) -> Optional[type]:
    """The first torch.nn class in ``cls``'s MRO that defines ``forward`` (``nn.Conv2d`` for
    SpikingJelly's ``layer.Conv2d``, ``_BatchNorm`` for ``nn.BatchNorm2d``)."""
    for c in cls.__mro__:
        if c.__module__.startswith("torch.nn") and "forward" in c.__dict__:
            return c
    return None


#: SpikingJelly's multi-step layers whose multi-step forward is their torch base class's forward
#: on the merged ``[T * B, ...]`` steps (named, not imported: SpikingJelly is optional).
_SJ_LAYERS = ("Conv1d", "Conv2d", "Conv3d", "Linear", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "MaxPool1d",
              "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d", "AdaptiveAvgPool1d",
              "AdaptiveAvgPool2d", "Flatten")
_SJ_MODULE = "spikingjelly.activation_based.layer"


def _sj_class(cls: type) -> Optional[type]:
    """The supported SpikingJelly layer class ``cls`` is or derives from, if any."""
    for c in cls.__mro__:
        if c.__module__.startswith(_SJ_MODULE) and c.__qualname__ in _SJ_LAYERS:
            return c
    return None


def _sj_unchanged(cls: type, sj: type) -> bool:
    """``cls`` is ``sj``, or a subclass of it that overrides neither ``forward`` nor any other of
    ``sj``'s methods (``__init__`` and ``extra_repr`` aside): its multi-step forward is then ``sj``'s,
    the torch base forward on merged steps."""
    if cls is sj:
        return True
    names = {n for n, a in vars(sj).items() if callable(a)} - {"__init__", "extra_repr"} | {"forward"}
    below = cls.__mro__[:cls.__mro__.index(sj)]
    return not any(names & set(vars(c)) for c in below)


def _step_fn(m: nn.Module) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """What computes ``m`` on merged steps: the module itself (a torch layer), its torch base
    forward (:class:`BaseForward`: a supported SpikingJelly layer), or ``None`` (a SpikingJelly
    layer of another class, e.g. ``WSConv2d`` or ``TemporalEffectiveBatchNorm2d``, or a subclass
    that overrides its methods: the base forward would not compute it)."""
    if getattr(m, "step_mode", None) is None:
        return m
    sj = _sj_class(type(m))
    base = _torch_base(type(m))
    if sj is None or base is None or not _sj_unchanged(type(m), sj):
        return None
    return BaseForward(base, m)


def _is_seq_container(m: nn.Module) -> bool:
    return type(m).__name__ == "SeqToANNContainer" and isinstance(m, nn.Sequential)


def recomputable_parametrizations(m: nn.Module) -> bool:
    """``m`` has no parametrizations (``torch.nn.utils.parametrize``), or only torch's ``weight_norm``
    (no state, the same weight at every computation). A block computes a layer's weight again in
    every chunk and recomputation; ``spectral_norm``'s power iteration updates its vectors at each
    computation in training mode (measured on a small conv net in float64: gradients up to 5e-5
    off, its vectors up to 0.02 off after two steps), and a user's parametrization may draw random
    values, so other parametrizations leave the layer as it is."""
    if not parametrize.is_parametrized(m):
        return True
    weight_norm = getattr(parametrizations, "_WeightNorm", None)
    return all(type(f) is weight_norm for plist in m.parametrizations.values() for f in plist)


def leaf_step(m: nn.Module) -> Optional[Step]:
    """``m`` as a :class:`Step`, or ``None`` if unsupported: a layer with hooks (they would be
    bypassed or called per chunk), with a parametrization other than ``weight_norm``
    (:func:`recomputable_parametrizations`), a BatchNorm with its own forward (the chunked
    BatchNorm never calls it), an unknown SpikingJelly layer."""
    if hooked(m) or not recomputable_parametrizations(m):
        return None
    fn = _step_fn(m)
    if fn is None:
        return None
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        runs = fn.cls.forward if isinstance(fn, BaseForward) else type(m).forward
        return Step("bn", fn, m) if runs is nn.modules.batchnorm._BatchNorm.forward else None
    if isinstance(m, _PARAM_TYPES):
        return Step("param", fn, m)
    if isinstance(m, _FREE_TYPES):
        return Step("free", fn, m)
    return None


def _wrapped_steps(leaves: List[nn.Module]) -> Optional[List[Step]]:
    steps = [leaf_step(x) if not isinstance(x, nn.Sequential) else None for x in leaves]
    return None if any(s is None for s in steps) else steps  # type: ignore[return-value]


def child_steps(m: nn.Module) -> Optional[List[Step]]:
    """The per-step layers of one child of a multi-step ``nn.Sequential``, or ``None`` if unsupported.

    Supported: edgesnn ``SeqToANN`` and SpikingJelly ``SeqToANNContainer`` around conv, linear,
    BatchNorm, pooling and flatten layers (or an ``nn.Sequential`` of them); SpikingJelly's
    multi-step ``layer.Conv2d`` / ``BatchNorm2d`` / ``MaxPool2d`` / ``AvgPool2d`` / ``Linear`` /
    ``Flatten`` (``step_mode='m'``; exactly these classes, or subclasses that override none of their
    methods); edgesnn ``LIF`` / ``RevLIF`` nodes (kind ``node``). A module with hooks anywhere in
    the child (wrapper, inner ``nn.Sequential`` or layer) makes the child unsupported.
    Dropout is not supported (its recomputation would draw a new mask).
    """
    if is_node(m):
        return [Step("node", m, m)]
    if hooked(m):
        return None  # a wrapper's or SpikingJelly layer's hooks would be bypassed
    if isinstance(m, SeqToANN):
        if _overrides(type(m), SeqToANN):
            return None  # a subclass computing something else than its wrapped modules on merged steps
        if isinstance(m.module, nn.Sequential):
            return None if hooked(m.module) or type(m.module) is not nn.Sequential else _wrapped_steps(list(m.module))
        return _wrapped_steps([m.module])
    if _is_seq_container(m):
        return _wrapped_steps(list(m))
    if getattr(m, "step_mode", None) == "m":
        s = leaf_step(m)
        return None if s is None else [s]
    return None


def _overrides(cls: type, base: type) -> bool:
    """``cls`` (a subclass of ``base``) defines one of ``base``'s methods again (``__init__`` and
    ``extra_repr`` aside), or a ``forward``: its calls may compute something ``base``'s do not."""
    names = {n for n, a in vars(base).items() if callable(a)} - {"__init__", "extra_repr"} | {"forward"}
    below = cls.__mro__[:cls.__mro__.index(base)]
    return any(names & set(vars(c)) for c in below)


#: Methods of a torch layer that compute its output (a subclass defining one has its own computation).
_FORWARD_METHODS = frozenset({"forward", "_conv_forward"})


def own_forward(m: nn.Module) -> bool:
    """``m`` is a torch layer (no ``step_mode``) whose class defines its own ``forward`` (or
    ``_conv_forward``) below its torch base class (``class Noisy(nn.Conv2d)``). A block would call
    that code again per chunk in backward, so a random draw, a call count or a batch-dependent value
    would differ from the forward's (as for Dropout): such a layer is left as it is. SpikingJelly
    layers are judged by their own rule (:func:`_sj_unchanged`), BatchNorm by :func:`leaf_step`."""
    if getattr(m, "step_mode", None) is not None:
        return False
    base = _torch_base(type(m))
    if base is None:
        return False
    below = type(m).__mro__[:type(m).__mro__.index(base)]
    return any(_FORWARD_METHODS & set(vars(c)) for c in below)


def block_steps(m: nn.Module) -> Optional[List[Step]]:
    """:func:`child_steps` of a child a block may hold, or ``None``: also ``None`` when a layer in it
    has its own forward (:func:`own_forward`), which recomputation in chunks would run again."""
    steps = child_steps(m)
    if steps is None or any(s.kind != "node" and own_forward(s.module) for s in steps):
        return None
    return steps


def pair(v: Union[int, Tuple[int, ...], List[int]]) -> Tuple[int, ...]:
    """A 2-d layer's size argument as a tuple: ``2 -> (2, 2)``, ``(2, 3)`` and ``[2, 3]`` as they are."""
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pool_count(m: nn.Module) -> Optional[int]:
    """Window size of an average pool without padding (its output of spikes is count / size)."""
    if getattr(m, "divisor_override", None) is not None:
        return None
    if isinstance(m, nn.AvgPool2d) and m.padding in (0, (0, 0)) and not m.ceil_mode:
        k = pair(m.kernel_size)
        return int(k[0] * k[1])
    if isinstance(m, nn.AvgPool1d) and m.padding in (0, (0,)) and not m.ceil_mode:
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,)
        return int(k[0])
    return None


def output_codec(step: Step, codec: str) -> str:
    """What ``step`` outputs when its input holds ``codec`` values (``bits``, ``levels:n``, ``dense``)."""
    m = step.module
    if step.kind == "node":
        return "bits" if isinstance(m, LIF) else "dense"
    base = _torch_base(type(m))
    if base is None or not runs_plain_forward(step, base):
        return "dense"  # hooks or a forward of its own may change the values
    if isinstance(m, (nn.Flatten, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
        return codec
    n = _pool_count(m)
    if n is not None and codec in ("bits",) or (n is not None and codec.startswith("levels:")):
        have = 1 if codec == "bits" else int(codec.split(":")[1])
        total = have * n
        if total <= 128 and total & (total - 1) == 0:
            return f"levels:{total}"
    return "dense"
