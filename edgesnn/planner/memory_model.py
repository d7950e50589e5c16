"""Bytes that one training step of a multi-step model keeps for backward, from shapes and dtypes.

The model is read as a chain (``model.body``, an ``nn.Sequential`` on ``[T, B, ...]``). Tensors are
tracked as *storages*: a layer's output is a new storage unless the layer is a view (``Flatten``,
``Identity``, the ``SeqToANN`` reshapes). A storage counts once however many layers save it, as
``torch.autograd.graph.saved_tensors_hooks`` sees it (:class:`edgesnn.memory.SavedTensorCounter`).

What each layer saves, read from PyTorch's ``derivatives.yaml`` and edgesnn's own autograd
functions, and checked against saved-tensor measurements in ``tests/test_planner_memory.py``:

=====================  ===================================================================
Linear, ConvNd         its input (for the weight gradient); the weight is a parameter
BatchNormNd (train)    its input + ``save_mean``/``save_invstd`` (2 x C floats, per batch)
AvgPoolNd              its input (``avg_pool2d_backward`` takes ``self``)
MaxPoolNd              its input + int64 indices of the output's size
AdaptiveAvgPool, Flatten, Identity, Unflatten: nothing (views or shape-only backward)
ReLU / LeakyReLU       its output
LIF (torch)            ``h_seq``: 1 x its input (``T x B x N x dtype`` bytes)
LIF (numba, cuda)      its input (1 x) and the initial state ``v0`` (``B x N x dtype``)
LIF (reference)        measured once on a tiny tensor (depends on surrogate and reset)
RevLIF (exact)         its output ``y`` (shared with the next layer), the final state ``v_T``
                       (``B x N x dtype``, independent of T) and packed bits (``ceil(T/8)`` bytes
                       per neuron)
RevLIF (float)         ``y``, ``v_T`` and int32 spike counts (4 bytes per neuron)
anything else          measured with saved-tensor hooks on a probe input (linear fit in size)
=====================  ===================================================================

Layers before the first trainable parameter (a node or pooling fed the input, a frozen layer) save
nothing: the input needs no gradient, so PyTorch records no graph there (:meth:`ChainModel.records`).
The model input ``[B, ...]`` is expanded over T and copied by the first ``SeqToANN`` reshape
(``T x B x input`` bytes; with one sample, or T = 1, the expanded view reshapes without a copy and
the batch itself, ``B x input``, is what the first layer saves: :attr:`Cost.repeat`); an event
input (``ChainModel(events=True)``, ``[T, B, ...]`` already) is used as is (``T x B x input``). The
fused kernels' RevLIF saves one 1-element placeholder for the tensor its mode does not use (4 bytes of
int32 counts in exact mode, 1 byte of bits in float mode: :func:`placeholder_cost`). The loss saves
``log_softmax`` (``B x classes x 4``) and the int64 targets. All sizes are :class:`Cost` objects,
linear in B (this is what gives the closed-form largest batch). The probes draw their inputs from a
generator of their own (:func:`probe_input`), not from the caller's random stream.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..memory import SavedTensorCounter, _storage_key
from ..models import parse_neuron_spec
from ..nn import LIF, RevLIF, SeqToANN
from ..nn.neurons import _SpikingNode
from ..shape_probe import probe_output
from ..user_state import random_stream_kept
from .checks import check_in_shape, check_int, unsupported_layer
from .costs import ZERO, Cost, Layer
from .layer_types import CONV_TYPES, MAX_POOL_TYPES, first_recording

__all__ = ["Cost", "ZERO", "Layer", "ChainModel", "describe", "option_cost", "placeholder_cost", "resolved_backend",
           "NUMBA_RUNTIME_BYTES", "OPTIMIZER_STATES", "kernel_runtime_bytes"]

#: optimizer state tensors kept per parameter (each the parameter's size)
OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd-momentum": 1, "sgd": 0}

#: Resident bytes a training process adds once any Numba kernel runs in it: Numba and llvmlite
#: (~53 MiB) and the JIT-loaded kernels. Measured as the peak-RSS difference of one small training
#: step with the nodes on ``backend="numba"`` vs ``"torch"`` (x86-64 host, torch 2.13: 116 MiB for
#: LIF / RevLIF nodes, 123 MiB for an ``optimize_memory`` model, whose BatchNorm and bit-packing
#: kernels are Numba too). The device profiles' runtime overhead was measured with the torch backend.
NUMBA_RUNTIME_BYTES = 120 * 2**20

_VIEW_TYPES = (nn.Flatten, nn.Identity, nn.Unflatten)
_SAVE_INPUT_TYPES = (nn.Linear,) + CONV_TYPES + (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_NO_SAVE_TYPES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SAVE_OUTPUT_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)


def probe_input(shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A standard-normal leaf of ``shape`` that requires grad, drawn from a generator of its own (seed 0):
    a probe's input never draws from (nor rewinds) the caller's global random stream."""
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0), requires_grad=True)


def _probe(module: nn.Module, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[bool, bool, Cost]:
    """Measure what an unknown stateless module saves: ``(saves_input, saves_output, private)``.

    Runs it on ``[n, *in_shape]`` inputs for n = 2 and 4 (with gradients) and fits bytes = a*n + c.
    The input is a non-leaf tensor (a clone of the leaf), as in a model, so in-place modules run.
    A ``Dropout`` in training mode draws its mask from a copy of the random state
    (:func:`edgesnn.user_state.random_stream_kept`): planning leaves the caller's stream where it was.
    """
    pkeys = {_storage_key(p) for p in module.parameters()} | {_storage_key(b) for b in module.buffers()}
    res = []
    for n in (2, 4):
        x = probe_input((n, *in_shape), dtype).clone()
        with SavedTensorCounter() as c, random_stream_kept(module):
            y = module(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"it returned {type(y).__name__}, not one tensor")
        keys = set(c.storages) - pkeys
        si, so = _storage_key(x) in keys, _storage_key(y) in keys
        priv = sum(c.storages[k] for k in keys if k not in (_storage_key(x), _storage_key(y)))
        c._keep.clear()
        res.append((si, so, priv))
    a = (res[1][2] - res[0][2]) / 2.0
    return res[1][0], res[1][1], Cost(step=a, const=max(0.0, res[0][2] - 2 * a))


def _reference_factor(node: nn.Module, dtype: torch.dtype) -> Tuple[float, bool, bool]:
    """``(bytes per neuron-step, saves input, saves output)`` of the store-everything (``reference``) loop of
    ``node``'s kind with its parameters, measured on a tiny input: LIF ``[2, 1, 16]``, RevLIF ``[4, 1, 4 x groups]``."""
    if isinstance(node, RevLIF):
        x, probe = probe_input((4, 1, 4 * node.groups), dtype), RevLIF(groups=node.groups, backend="reference")
    else:
        x, probe = probe_input((2, 1, 16), dtype), LIF(backend="reference")
    probe.params = node.params
    with SavedTensorCounter() as c:
        y = probe(x)
    n = c.bytes(exclude=(x, y))
    si, so = _storage_key(x) in c.storages, _storage_key(y) in c.storages
    c._keep.clear()
    return n / x.numel(), si, so


def resolved_backend(module: Optional[nn.Module], dtype: torch.dtype = torch.float32) -> str:
    """The backend a node's ``backend`` setting runs on CPU tensors of ``dtype`` (``"torch"``, ``"numba"``...)."""
    from ..kernels import dispatch

    backend = getattr(module, "backend", "auto")
    params = getattr(module, "params", None)
    try:
        return dispatch.resolve_backend(backend, torch.empty(0, dtype=dtype), params)
    except TypeError:  # older dispatch without the params argument
        return dispatch.resolve_backend(backend, torch.empty(0, dtype=dtype))


def kernel_runtime_bytes(chain: "ChainModel") -> int:
    """:data:`NUMBA_RUNTIME_BYTES` when a spiking layer of ``chain`` runs the Numba kernels, else 0."""
    modules = [getattr(L, "module", None) for L in chain.spiking]
    return NUMBA_RUNTIME_BYTES if any(resolved_backend(mod) == "numba" for mod in modules) else 0


def node_as(mod: nn.Module, cls: type) -> nn.Module:
    """``mod`` when it is a ``cls`` node, else a default ``cls`` on ``mod``'s backend: the node an
    option that switches the layer to ``cls`` builds (what its costs and backend follow). The
    default node is built once per ``(cls, backend)`` and shared: callers only read it (building
    one per call was two thirds of a 50-layer plan's time)."""
    return mod if isinstance(mod, cls) else _default_node(cls, str(getattr(mod, "backend", "auto")))


@functools.lru_cache(maxsize=None)
def _default_node(cls: type, backend: str) -> nn.Module:
    """A default ``cls`` node on ``backend`` (read-only: shared by every :func:`node_as` call)."""
    return cls(backend=backend)


def option_cost(layer: Layer, option: str, dtype_bytes: int = 4) -> Tuple[bool, bool, Cost, Cost, Cost]:
    """What a spiking layer saves under ``option`` (``"lif"``, ``"revlif"``, ``"revlif:G"``).

    Returns ``(saves_input, saves_output, private, work, bwork)``: whether it keeps its input /
    output storage, its other saved bytes and its forward / backward workspace (bytes, as
    :class:`Cost`). Workspace of the PyTorch-op loops is a handful of per-step ``[B, N]``
    temporaries (peak RSS measured on a conv net: LIF forward 9, backward 8 beyond ``grad_x``;
    RevLIF assumed 10, plus, in exact mode, 3 input-sized temporaries of ``quantize_input``). The
    fused kernels (``numba``, ``cuda``) quantize inside the kernel: LIF has no workspace, RevLIF
    one ``[B, N]`` state in forward (the fresh initial state) and four in backward (the zero
    ``grad_v_T``, ``grad_v0``, the reconstructed ``v0`` and the fresh state it is checked
    against). The group count
    does not change the bytes (the final state and the bits are per neuron); it only changes the
    time model. Factors per backend, from the autograd functions:

    * LIF ``torch`` (``_LIFTorchFunction``): ``h_seq``, a fresh ``[T, B, N]`` tensor (1 x input).
    * LIF ``numba``/``cuda`` (``edgesnn::lif_fwd``): its input ``x`` (recomputes ``h``) and ``v0``
      ``[B, N]``.
    * LIF ``reference``: measured on a tiny tensor (3-6 x input, depends on surrogate and reset).
    * RevLIF exact (all backends): see the module table; float mode adds int32 counts, no bits.
    """
    kind, _ = parse_neuron_spec(option)
    n = layer.in_elems
    mod = layer.module
    dtype = torch.float32 if dtype_bytes == 4 else torch.float64
    if kind == "lif":
        backend = resolved_backend(node_as(mod, LIF), dtype)
        if backend == "reference":
            factor = _reference_factor(mod if isinstance(mod, LIF) else LIF(), dtype)[0]
            return False, False, Cost(step=factor * n * dtype_bytes / 4), ZERO, Cost(sample=8 * n * dtype_bytes)
        if backend in ("numba", "cuda"):
            return True, False, Cost(sample=n * dtype_bytes), ZERO, ZERO
        return False, False, Cost(step=n * dtype_bytes), Cost(sample=9 * n * dtype_bytes), Cost(sample=8 * n * dtype_bytes)
    mode = mod.params.mode if isinstance(mod, RevLIF) else "exact"
    backend = resolved_backend(node_as(mod, RevLIF), dtype)
    if backend == "reference":
        factor, si, so = _reference_factor(mod if isinstance(mod, RevLIF) else RevLIF(), dtype)
        return si, so, Cost(step=factor * n * dtype_bytes / 4), ZERO, Cost(sample=10 * n * dtype_bytes)
    # RevLIFFunction: y (the output), v_T [B, N] and, in exact mode, bits uint8 [ceil(T/8), B, N]
    # (float mode: int32 spike counts [B, N])
    private = Cost(sample=n * dtype_bytes, packed=n) if mode == "exact" else Cost(sample=n * dtype_bytes + 4 * n)
    if backend in ("numba", "cuda"):  # quantization in the kernel; see the docstring for the [B, N] states
        return False, True, private, Cost(sample=n * dtype_bytes), Cost(sample=4 * n * dtype_bytes)
    tmp = Cost(sample=10 * n * dtype_bytes)
    if mode == "exact":
        # the torch forward's quantize_input = round(clamp(x) * 2^16) / 2^16 holds up to 3 input-sized temporaries
        return False, True, private, Cost(step=3 * n * dtype_bytes) + tmp, tmp
    return False, True, private, tmp, tmp


def placeholder_cost(layer: Layer, option: str, dtype_bytes: int = 4) -> Cost:
    """Bytes a spiking layer under ``option`` saves beside :func:`option_cost`'s ``private``: the
    fused kernels' RevLIF (``numba``, ``cuda``) saves a 1-element placeholder for the tensor its
    mode does not use (``edgesnn.kernels.custom_ops``): int32 counts in exact mode (4 bytes), uint8
    bits in float mode (1 byte). Zero for LIF and for the ``torch`` / ``reference`` loops."""
    kind, _ = parse_neuron_spec(option)
    if kind != "revlif":
        return ZERO
    mod = layer.module
    node = node_as(mod, RevLIF)
    if resolved_backend(node, torch.float32 if dtype_bytes == 4 else torch.float64) not in ("numba", "cuda"):
        return ZERO
    mode = mod.params.mode if isinstance(mod, RevLIF) else "exact"
    return Cost(const=4 if mode == "exact" else 1)


def _out_shape(module: nn.Module, in_shape: Tuple[int, ...], dtype: torch.dtype) -> Tuple[int, ...]:
    """One sample's output shape (:func:`~edgesnn.shape_probe.probe_output`; a module meta tensors
    cannot run is measured on a real sample)."""
    y = probe_output(module, tuple(in_shape), dtype, real_if_meta_fails=True)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"it returned {type(y).__name__}, not one tensor")
    return tuple(y.shape[1:])


def _classify(idx: int, name: str, module: nn.Module, in_shape, dtype, dtype_bytes) -> Layer:
    try:
        out_shape = _out_shape(module, in_shape, dtype)
    except Exception as exc:  # a shape the layer cannot take, or not one tensor out
        raise unsupported_layer(name, module, tuple(in_shape), f"{type(exc).__name__}: {exc}") from None
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    L = Layer(idx, name, type(module).__name__, tuple(in_shape), out_shape, params=params, module=module)
    if isinstance(module, _VIEW_TYPES):
        L.view = True
    elif isinstance(module, _SAVE_INPUT_TYPES):
        L.saves_input = True
        if isinstance(module, CONV_TYPES):
            # oneDNN convolutions on the CPU reorder into blocked layouts: peak RSS measured on
            # [128, C, 32, 32] (C 3-32) is 2 x output in forward and grad_input + 2 x output in backward
            out_b = dtype_bytes * math.prod(out_shape)
            L.work, L.bwork = Cost(step=out_b), Cost(step=2 * out_b)
    elif isinstance(module, _BN_TYPES):
        L.saves_input = True
        L.private = Cost(const=2 * module.num_features * 4)  # save_mean, save_invstd (float32)
    elif isinstance(module, MAX_POOL_TYPES):
        L.saves_input = True
        L.private = Cost(step=8 * math.prod(out_shape))  # int64 indices
    elif isinstance(module, _NO_SAVE_TYPES):
        pass
    elif isinstance(module, _SAVE_OUTPUT_TYPES):
        L.saves_output = True
        # in place (ReLU(inplace=True)): no new storage; it saves its output, which is its input's storage
        L.view = bool(getattr(module, "inplace", False))
    else:
        L.kind += "(measured)"
        try:
            L.saves_input, L.saves_output, L.private = _probe(module, tuple(in_shape), dtype)
        except Exception as exc:
            raise unsupported_layer(name, module, tuple(in_shape), f"{type(exc).__name__}: {exc}") from None
    return L


class ChainModel:
    """A model's body as a chain of :class:`Layer` s with storage bookkeeping.

    Args:
        model: a :class:`edgesnn.models.SpikingClassifier` (or anything with ``body``,
            an ``nn.Sequential`` on ``[T, B, ...]``, and ``in_shape``) with at least one LIF /
            RevLIF node directly in ``body``.
        in_shape: one sample's shape, ints >= 1 (defaults to ``model.in_shape``).
        num_classes: logits width, an int >= 2 (defaults to the last layer's output size).
        dtype: activation dtype (float32 or float64).
        events: the model is fed event data ``[T, B, ...]`` (used as is) instead of a static batch
            ``[B, ...]`` that it repeats over T (the default; see :attr:`Cost.repeat`).

    Raises:
        TypeError: ``model`` has no ``body`` ``nn.Sequential``.
        ValueError: a bad ``in_shape`` / ``num_classes`` / ``dtype``, a ``body`` entry the planner
            cannot read (other spiking nodes, nodes nested in a container, layers returning several
            tensors), or no spiking layer; one line naming it.
    """

    def __init__(self, model: nn.Module, in_shape: Optional[Sequence[int]] = None, num_classes: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, events: bool = False) -> None:
        body = getattr(model, "body", None)
        if not isinstance(body, nn.Sequential):
            raise TypeError("model: the planner needs a model with a `body` nn.Sequential on [T, B, ...] "
                            "(see edgesnn.models.build_model)")
        if in_shape is None and not hasattr(model, "in_shape"):
            raise ValueError("in_shape: the model has no in_shape attribute; pass in_shape=(one sample's shape)")
        shape = check_in_shape(in_shape if in_shape is not None else model.in_shape,
                               "in_shape" if in_shape is not None else "model.in_shape")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64 (activation dtype), got {dtype!r}")
        if num_classes is not None:
            check_int(num_classes, "num_classes", 2)
        if not isinstance(events, bool):
            raise ValueError(f"events: expected True (event input [T, B, ...]) or False (a static batch repeated over T), "
                             f"got {events!r}")
        self.events = events
        self.in_shape = shape
        self.dtype = dtype
        self.dtype_bytes = torch.empty(0, dtype=dtype).element_size()
        self.layers: List[Layer] = []
        k = 0
        for i, mod in enumerate(body):
            name = f"body.{i}"
            if isinstance(mod, (LIF, RevLIF)):
                self.layers.append(Layer(i, name, "spiking", shape, shape, spiking=k, module=mod))
                k += 1
                continue
            nested = [m for m in mod.modules() if isinstance(m, _SpikingNode)]
            if nested:
                if nested[0] is mod:  # (a ParametricLIF, SpikingJelly's nodes: the planner chooses LIF or RevLIF only)
                    why = "a spiking node the planner cannot choose for: it plans LIF / RevLIF layers only"
                else:
                    why = (f"it holds a {type(nested[0]).__name__}, a spiking node the planner cannot choose for: "
                           "LIF / RevLIF must be entries of model.body themselves")
                raise unsupported_layer(name, mod, shape, why)
            inner = mod.module if isinstance(mod, SeqToANN) else mod
            L = _classify(i, name, inner, shape, dtype, self.dtype_bytes)
            self.layers.append(L)
            shape = L.out_shape
        self.out_shape = shape
        self.num_classes = int(num_classes if num_classes is not None else math.prod(shape))
        self.spiking = [L for L in self.layers if L.spiking is not None]
        if not self.spiking:
            raise ValueError("model: model has no spiking layers (LIF/RevLIF in body); the planner chooses a neuron "
                             "per spiking layer")
        self.params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
        self._edges()

    # -- storages ---------------------------------------------------------------------------
    def _edges(self) -> None:
        """Assign storage ids: edge 0 is the (copied) model input; views keep their input's id."""
        self.in_edge: List[int] = []
        self.out_edge: List[int] = []
        self.edge_bytes: List[float] = [self.dtype_bytes * math.prod(self.in_shape)]  # per step and sample
        self.edge_producer: List[Optional[int]] = [None]
        cur = 0
        for j, L in enumerate(self.layers):
            self.in_edge.append(cur)
            if not L.view:
                self.edge_bytes.append(self.dtype_bytes * L.out_elems)
                self.edge_producer.append(j)
                cur = len(self.edge_bytes) - 1
            self.out_edge.append(cur)
        self.first_recording: Optional[int] = first_recording(L.params > 0 or (
            L.module is not None and any(p.requires_grad for p in L.module.parameters())) for L in self.layers)
        # edges saved by fixed (non-spiking) layers: counted in the fixed part
        self.fixed_saved = set()
        for j, L in enumerate(self.layers):
            if L.spiking is None and self.records(j):
                if L.saves_input:
                    self.fixed_saved.add(self.in_edge[j])
                if L.saves_output:
                    self.fixed_saved.add(self.out_edge[j])

    def records(self, j: int) -> bool:
        """Whether layer ``j`` records autograd's graph: it or a layer before it has a trainable parameter
        (else it saves nothing, has no backward, and what it would save is a forward temporary)."""
        return self.first_recording is not None and j >= self.first_recording

    def input_copy_bytes(self, options: Sequence[str]) -> float:
        """Bytes per step and sample of the forward's ``[T, B, ...]`` copy of the model input: none for
        events (used as is), a ``torch`` / ``reference`` node first (it reads the input step by step)
        or a node on the Numba kernels first (they read the expanded input's one step at every step)."""
        first = self.layers[0] if self.layers else None
        if self.events:
            return 0.0
        if first is not None and first.spiking is not None:
            kind, _ = parse_neuron_spec(options[first.spiking])
            node = node_as(first.module, LIF if kind == "lif" else RevLIF)
            if resolved_backend(node, self.dtype) in ("torch", "reference", "numba"):
                return 0.0
        return self.edge_bytes[0]

    def edge_cost(self, e: int) -> Cost:
        """Bytes of storage ``e`` when saved: a ``[T, B, ...]`` tensor; edge 0 of a static input
        is the repeated batch (:attr:`Cost.repeat`: not copied for one sample)."""
        if e == 0 and not self.events:
            return Cost(repeat=self.edge_bytes[0])
        return Cost(step=self.edge_bytes[e])

    def fixed_cost(self) -> Cost:
        """Saved bytes that no neuron choice changes: layer inputs, BN stats, the loss."""
        c = ZERO
        for e in sorted(self.fixed_saved):
            c = c + self.edge_cost(e)
        for j, L in enumerate(self.layers):
            if L.spiking is None and self.records(j):
                c = c + L.private
        return c + Cost(sample=4 * self.num_classes + 8, const=4)  # log_softmax, int64 target, loss

    def layer_option_cost(self, spiking_index: int, option: str) -> Cost:
        """Extra saved bytes of one spiking layer under ``option``, on top of :meth:`fixed_cost`."""
        L = self.spiking[spiking_index]
        if not self.records(L.index):
            return ZERO
        saves_in, saves_out, private, _, _ = option_cost(L, option, self.dtype_bytes)
        c = private + placeholder_cost(L, option, self.dtype_bytes)
        for flag, e in ((saves_in, self.in_edge[L.index]), (saves_out, self.out_edge[L.index])):
            if flag and e not in self.fixed_saved:
                c = c + self.edge_cost(e)
        return c

    def activation_cost(self, options: Sequence[str]) -> Cost:
        """All saved bytes for one neuron option per spiking layer."""
        self._check(options)
        c = self.fixed_cost()
        for i, opt in enumerate(options):
            c = c + self.layer_option_cost(i, opt)
        return c

    def _check(self, options: Sequence[str]) -> None:
        if len(options) != len(self.spiking):
            raise ValueError(f"options: the model has {len(self.spiking)} spiking layers, got {len(options)} options")

    @property
    def has_batchnorm(self) -> bool:
        """Whether a layer of the chain is a BatchNorm (micro-batches then need 3 samples or more)."""
        return any(L.kind.startswith("BatchNorm") for L in self.layers)

    def static_bytes(self, optimizer: str = "adam") -> int:
        """Parameters + gradients + optimizer state (:data:`OPTIMIZER_STATES`) + buffers (bytes, float32 parameters)."""
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZER_STATES:
            raise ValueError(f"optimizer: expected one of {sorted(OPTIMIZER_STATES)}, got {optimizer!r}")
        return 4 * self.params * (2 + OPTIMIZER_STATES[optimizer]) + self.buffer_bytes

    def describe(self, options: Optional[Sequence[str]] = None) -> List[Dict]:
        """One row per layer (name, kind, output shape, option) for tables."""
        rows = []
        for L in self.layers:
            opt = options[L.spiking] if (options is not None and L.spiking is not None) else None
            rows.append(dict(index=L.index, name=L.name, kind=L.kind, out_shape=list(L.out_shape), option=opt))
        return rows


def describe(model: nn.Module, **kwargs: Any) -> ChainModel:
    """Shorthand for :class:`ChainModel` ``(model, **kwargs)``."""
    return ChainModel(model, **kwargs)
