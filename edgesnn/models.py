"""Model builders: MLP, a small conv net and VGG-11 (CIFAR-shaped), each with LIF or RevLIF nodes.

Every model is a :class:`SpikingClassifier`: it repeats a static input over ``T`` time steps
(direct encoding), runs a ``body`` (``nn.Sequential`` of multi-step layers on ``[T, B, ...]``) and
averages the logits over time. Spiking nodes are chosen per layer by a *neuron spec*:
``"lif"``, ``"revlif"`` (2 groups) or ``"revlif:G"`` (``G`` groups); ``neuron`` takes one spec
for all layers or a list with one per spiking layer (in order). The builder arguments are kept in
``model.config`` so a checkpoint can rebuild the model.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import UsageError
from .functional.checks import check_int
from .nn import LIF, RevLIF, SeqToANN

__all__ = ["MODEL_NAMES", "POOLS", "SpikingClassifier", "build_model", "check_pool", "int_list", "layer_layout", "parse_neuron_spec", "spiking_layers", "make_neuron"]

MODEL_NAMES = ("mlp", "convnet", "vgg11")
#: The conv models' pooling layers (``build_model(pool=...)``, ``--pool``).
POOLS = ("avg", "max")
NeuronArg = Union[str, Sequence[str]]


def check_pool(model: str, pool: str, flag: str = "pool") -> None:
    """Refuse a ``pool`` that is not one of :data:`POOLS`, or a non-default one for the mlp (which has none).

    ``flag`` names the parameter in the message: ``"pool"`` for :func:`build_model`, ``"--pool"``
    for the command lines. Raises :class:`~edgesnn.errors.UsageError` (a ``ValueError``).
    """
    if pool not in POOLS:
        raise UsageError(f"{flag}: expected one of {', '.join(POOLS)}, got {pool!r}")
    if pool != "avg" and model == "mlp":
        shown = f"pool={pool!r}" if flag == "pool" else f"{flag} {pool}"
        raise UsageError(f"{flag}: the mlp model has no pooling layer ({shown} is for convnet and vgg11)")

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def layer_layout(name: str, widths: Sequence[int] = ()) -> Tuple[Union[int, str], ...]:
    """A built-in model's spiking layers in order: each layer's width (the mlp's hidden units, a conv
    model's channels) and ``"M"`` for a 2x2 pool. ``widths``: the mlp's ``hidden`` or the convnet's
    ``channels`` (vgg11 has :data:`VGG11_CFG`); the convnet ends in one pool."""
    if name == "vgg11":
        return VGG11_CFG
    return tuple(widths) + (("M",) if name == "convnet" else ())


def parse_neuron_spec(spec: str) -> Tuple[str, int]:
    """``"lif"`` -> ("lif", 0); ``"revlif"`` -> ("revlif", 2); ``"revlif:4"`` -> ("revlif", 4)."""
    if not isinstance(spec, str):
        raise TypeError(f"neuron: expected 'lif', 'revlif' or 'revlif:G', got {spec!r}")
    kind, colon, groups = spec.strip().lower().partition(":")
    if kind == "lif" and not colon:
        return "lif", 0
    if kind == "revlif":
        try:
            g = 2 if not colon else int(groups.strip() or "x")  # ("revlif:" names no count: an error)
        except ValueError:
            raise ValueError(f"neuron: bad group count in {spec!r}; expected 'revlif:G' with an integer G >= 2") from None
        if g < 2:
            raise ValueError(f"neuron: RevLIF needs at least 2 groups, got {spec!r}")
        return "revlif", g
    raise ValueError(f"neuron: unknown neuron {spec!r}; expected 'lif', 'revlif' or 'revlif:G'")


def make_neuron(spec: str, channels: int, layer: str = "", revlif: Optional[Dict] = None,
                **node_kwargs: Any) -> nn.Module:
    """A spiking node for ``channels`` channels from a neuron spec (see module docstring).

    ``node_kwargs`` go to every node; ``revlif`` (a dict) holds extra arguments for RevLIF nodes only
    (``alpha``, ``beta``, ``gamma``, ``mode``)."""
    kind, groups = parse_neuron_spec(spec)
    if kind == "lif":
        return LIF(**node_kwargs)
    if channels % groups:
        raise ValueError(f"neuron: {groups} groups do not divide the {channels} channels of spiking layer {layer or '?'}")
    return RevLIF(groups=groups, **node_kwargs, **(revlif or {}))


class SpikingClassifier(nn.Module):
    """Direct-encoding classifier: ``[B, ...]`` -> repeat over T -> body -> mean logits ``[B, classes]``.

    An input that already has a time dim (``[T, B, ...]``, ``x.dim() == len(in_shape) + 2``) is
    used as is (event data).

    ``config`` holds the arguments the model was built with (what a checkpoint rebuilds it from);
    assigning ``timesteps`` updates it. Node settings assigned after building (``node.tau = 5.0``)
    are in neither ``config`` nor the ``state_dict``: a checkpoint then rebuilds the built ones, so
    pass them to :func:`build_model` (``node=dict(tau=5.0)``) instead.
    """

    def __init__(self, body: nn.Sequential, timesteps: int, in_shape: Sequence[int], config: Dict) -> None:
        super().__init__()
        self.body = body
        self.config = dict(config)
        self.timesteps = timesteps
        self.in_shape = tuple(in_shape)

    @property
    def timesteps(self) -> int:
        """T, the number of time steps an input ``[B, ...]`` is repeated over; assigning it updates
        ``config["timesteps"]`` when the config records it (a checkpoint rebuilds the model with it)."""
        d = self.__dict__
        return d["_timesteps"] if "_timesteps" in d else d["timesteps"]  # (pickled before: a plain attribute)

    @timesteps.setter
    def timesteps(self, value: int) -> None:
        value = check_int(value, "timesteps", 1)  # (NumPy integers too, as build_model takes them)
        self.__dict__["_timesteps"] = value
        if "timesteps" in self.config:
            self.config["timesteps"] = int(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, *in_shape]`` (repeated over T as a view) or ``[T, B, *in_shape]`` (event data) ->
        logits ``[B, classes]``, the body's output averaged over T."""
        nd = len(self.in_shape)
        if x.dim() == nd + 1:
            if tuple(x.shape[1:]) != self.in_shape:
                raise ValueError(f"input: expected [B, {', '.join(map(str, self.in_shape))}], got {tuple(x.shape)}")
            x = x.unsqueeze(0).expand(self.timesteps, *x.shape)
        elif x.dim() != nd + 2 or tuple(x.shape[2:]) != self.in_shape:
            raise ValueError(
                f"input: expected [B, {', '.join(map(str, self.in_shape))}] or [T, B, ...], got {tuple(x.shape)}"
            )
        return self.body(x).mean(0)


def spiking_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every LIF/RevLIF node, in forward order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (LIF, RevLIF))]


def _neuron_list(neuron: NeuronArg, count: int) -> List[str]:
    if isinstance(neuron, str):
        specs = [neuron] * count
    elif isinstance(neuron, (list, tuple)):
        specs = list(neuron)
        if len(specs) != count:
            raise ValueError(f"neuron: this model has {count} spiking layers, got {len(specs)} neuron specs")
    else:
        raise TypeError(f"neuron: expected a spec ('lif', 'revlif', 'revlif:G') or a list of {count}, got {neuron!r}")
    for s in specs:
        parse_neuron_spec(s)
    return specs


def int_list(values: Sequence[int], what: str) -> Tuple[int, ...]:
    """A non-empty sequence of integers >= 1 (layer widths, sample dims), else one line naming ``what``."""
    if (isinstance(values, (str, bytes)) or not hasattr(values, "__iter__")
            or (isinstance(values, torch.Tensor) and values.dim() == 0)):  # (a 0-d tensor cannot be iterated)
        raise ValueError(f"{what}: expected a sequence of integers >= 1, got {values!r}")
    values = tuple(values)
    if not values:
        raise ValueError(f"{what}: expected at least one integer >= 1, got {list(values)}")
    try:
        return tuple(check_int(v, what, 1) for v in values)
    except ValueError:
        raise ValueError(f"{what}: expected integers >= 1, got {list(values)}") from None


_NODE_KEYS = frozenset(inspect.signature(LIF.__init__).parameters) - {"self"}
_REVLIF_KEYS = frozenset(inspect.signature(RevLIF.__init__).parameters) - {"self", "groups"}


def _kwargs_arg(value, what: str, allowed) -> Dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a dict of node arguments or None, got {value!r}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        hint = " (the group count comes from the neuron spec 'revlif:G')" if "groups" in unknown else ""
        raise ValueError(f"{what}: unknown argument(s) {', '.join(unknown)}{hint}; expected some of {sorted(allowed)}")
    return dict(value)


def _mlp(in_shape, num_classes, specs, hidden, node_kwargs, revlif_kwargs, batchnorm: bool = True) -> nn.Sequential:
    layers: List[nn.Module] = [SeqToANN(nn.Flatten())]
    width = int(math.prod(in_shape))
    for i, h in enumerate(hidden):
        layers.append(SeqToANN(nn.Linear(width, h)))
        if batchnorm:
            layers.append(SeqToANN(nn.BatchNorm1d(h)))
        layers.append(make_neuron(specs[i], h, f"{i}", revlif_kwargs, **node_kwargs))
        width = h
    layers.append(SeqToANN(nn.Linear(width, num_classes)))
    return nn.Sequential(*layers)


def _conv_stack(in_shape, cfg, specs, node_kwargs, revlif_kwargs, batchnorm: bool = True,
                pool: str = "avg") -> Tuple[List[nn.Module], Tuple[int, int, int]]:
    c, h, w = in_shape
    layers: List[nn.Module] = []
    k = 0
    for item in cfg:
        if item == "M":
            if h >= 2 and w >= 2:
                layers.append(SeqToANN(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)))
                h, w = h // 2, w // 2
            continue
        # with BatchNorm the conv needs no bias (BN's shift replaces it); without, it keeps one
        layers.append(SeqToANN(nn.Conv2d(c, item, 3, padding=1, bias=not batchnorm)))
        if batchnorm:
            layers.append(SeqToANN(nn.BatchNorm2d(item)))
        layers.append(make_neuron(specs[k], item, f"conv{k}", revlif_kwargs, **node_kwargs))
        c = item
        k += 1
    return layers, (c, h, w)


def build_model(
    name: str,
    in_shape: Sequence[int],
    num_classes: int,
    timesteps: int,
    neuron: NeuronArg = "lif",
    hidden: Sequence[int] = (128, 128),
    channels: Sequence[int] = (16, 32),
    node: Optional[Dict] = None,
    batchnorm: bool = True,
    revlif: Optional[Dict] = None,
    pool: str = "avg",
) -> SpikingClassifier:
    """Build a spiking classifier.

    Args:
        name: ``"mlp"``, ``"convnet"`` or ``"vgg11"``.
        in_shape: one sample's shape: ``(features,)`` or ``(C, H, W)`` (conv models need 3 dims).
        num_classes: number of output classes.
        timesteps: T, the number of time steps the input is repeated for.
        neuron: one neuron spec for all spiking layers, or one per layer.
        hidden: MLP hidden widths. channels: conv-net channel widths (a pool follows the last).
        node: extra keyword arguments for every node (tau, v_threshold, surrogate, backend...).
        batchnorm: a BatchNorm after every Linear/Conv2d that feeds a spiking layer (default). Without
            it, convolutions get a bias; models then compute every sample independently of the batch,
            so data-parallel training on CPU gives the same weights as one process with the whole batch.
        revlif: extra keyword arguments for the RevLIF nodes only (``alpha``, ``beta``, ``gamma``, ``mode``).
        pool: the conv models' 2x2 pools, ``"avg"`` (default) or ``"max"`` (SpikingJelly's spiking
            VGG habit; a max over spikes is an OR). The mlp model has none.

    Sizes are integers >= 1 (``num_classes`` >= 2; NumPy integers accepted, not bool/float/str),
    ``hidden`` (mlp) and ``channels`` (convnet) non-empty, ``batchnorm`` a bool, ``node``/``revlif``
    dicts of node arguments; anything else is a one-line ``ValueError`` naming the parameter.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"model: unknown model {name!r}; expected one of {MODEL_NAMES}")
    in_shape = int_list(in_shape, "in_shape")
    if name != "mlp" and len(in_shape) != 3:
        raise ValueError(f"in_shape: model {name!r} needs (C, H, W), got {in_shape}")
    num_classes = check_int(num_classes, "num_classes", 2)
    timesteps = check_int(timesteps, "timesteps", 1)
    if not isinstance(batchnorm, bool):
        raise ValueError(f"batchnorm: expected True or False, got {batchnorm!r}")
    check_pool(name, pool)
    if name == "mlp":
        hidden = int_list(hidden, "hidden")
    elif name == "convnet":
        channels = int_list(channels, "channels")
    node_kwargs = _kwargs_arg(node, "node", _NODE_KEYS | _REVLIF_KEYS)
    revlif_kwargs = _kwargs_arg(revlif, "revlif", _REVLIF_KEYS)
    both = sorted(set(node_kwargs) & set(revlif_kwargs))
    if both:
        raise ValueError(f"revlif: {', '.join(both)} also given in node; give each argument once")
    config = dict(name=name, in_shape=list(in_shape), num_classes=num_classes, timesteps=timesteps,
                  neuron=neuron if isinstance(neuron, str) else list(neuron) if isinstance(neuron, (list, tuple)) else neuron,
                  hidden=list(hidden), channels=list(channels), node=node_kwargs)
    if not batchnorm:  # only recorded when off: configs (and checkpoints) of default models are unchanged
        config["batchnorm"] = False
    if revlif_kwargs:  # likewise only recorded when given
        config["revlif"] = revlif_kwargs
    if pool != "avg":  # likewise
        config["pool"] = pool
    if name == "mlp":
        specs = _neuron_list(neuron, len(hidden))
        body = _mlp(in_shape, num_classes, specs, tuple(hidden), node_kwargs, revlif_kwargs, batchnorm)
    else:
        cfg = layer_layout(name, channels)
        n_spiking = sum(1 for c in cfg if c != "M")
        specs = _neuron_list(neuron, n_spiking)
        layers, (c, h, w) = _conv_stack(in_shape, cfg, specs, node_kwargs, revlif_kwargs, batchnorm, pool)
        layers += [SeqToANN(nn.Flatten()), SeqToANN(nn.Linear(c * h * w, num_classes))]
        body = nn.Sequential(*layers)
    return SpikingClassifier(body, timesteps, in_shape, config)
