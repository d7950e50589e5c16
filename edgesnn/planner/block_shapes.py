"""Per-step sizes of the blocks of :mod:`edgesnn.memopt` (:class:`BlockShape`), read from a traced
:class:`~edgesnn.memopt.block.Block`: what :mod:`edgesnn.planner.network_model` predicts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from torch import nn

from ..nn import RevLIF
from .layer_types import CONV_TYPES, MAX_POOL_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from ..memopt.block import Block

__all__ = ["BlockShape", "block_shape"]


@dataclass
class BlockShape:
    """Per-step sizes of one block (bytes of one time step for the whole batch); the upper-case
    names below are :mod:`edgesnn.planner.network_model`'s terms."""

    name: str
    T: int
    B: int                  # batch
    x_bytes: int            # block input, one step, dense
    x_saved_bytes: int      # block input as kept over all T (packed, once, or dense)
    a_bytes: int            # node input (layer output), one step
    o_bytes: int            # block output, one step
    static: bool            # input repeated over T: layers before the node run once
    has_bn: bool
    can_chunk: bool
    macs: int               # multiply-accumulates of the block's layers, one step
    hands_off: bool = False  # its output goes packed straight to the next block
    param_bytes: int = 0     # the block's parameters
    conv_param_bytes: int = 0  # ... of its convolutions (their kernels copy the weights per call: see BWD_PARAM)
    has_post: bool = True    # pooling/flatten after the node (else the output is the node's spikes)
    can_hold: bool = False   # its layer output may be held from forward to backward (Block.hold)
    sums_over_time: bool = False  # repeated input: the node's backward kernel sums its gradient over time
    unfused_pool: bool = False    # a pooling after the node that no fused kernel runs (see UNFUSED_POOL_*)
    pool_autograd: bool = False   # ... and the node and that pooling run under autograd (see AUTOGRAD_POOL_*)
    max_pool: bool = False        # ... a max-pool (see AUTOGRAD_MAXPOOL_BWD_A)
    node_autograd: bool = False   # no fused kernel runs the node: it runs under autograd (see AUTOGRAD_*)
    input_grad: bool = True  # its input needs a gradient (else, as for the model input, its backward makes none)
    records: bool = True     # autograd records it: input_grad, or trainable parameters of its own (else see PLAIN_*)
    has_layers: bool = True  # layers before its node (else the node reads the block's input)
    node_loop: bool = False  # the node's own forward is PyTorch's step loop (torch / reference backend)
    reversible: bool = False  # the node is a RevLIF (its loop keeps no per-step history: see LOOP_*)
    linear_post: bool = False  # a LIF whose kernel gets its spikes' gradient from linear layers after it
    #                            (an average pool, flatten: memopt.linear_post; see network_model._spike_grad_steps)
    head_param_bytes: int = 0  # the model's last block only: trainable parameters outside every block (the
    #                            head after it, run under autograd; see network_model._head_backward)


_MAX_POOLS = MAX_POOL_TYPES + (nn.AdaptiveMaxPool2d,)
_POOL_TYPES = _MAX_POOLS + (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                            nn.AdaptiveAvgPool3d)


def _pool_path(block, kind: Optional[str]) -> Optional[str]:
    """How the pooling after the block's node runs, given the runtime's fused ``kind``
    (:meth:`edgesnn.memopt.block.Block.traced_kind`): ``None`` (no pooling), ``"pool2"`` (fused
    with a LIF in one kernel), ``"lif_linear"`` (after the LIF kernels, its backward without
    spikes), or ``"autograd"`` (node and pooling under autograd)."""
    if not any(isinstance(getattr(s, "module", None), _POOL_TYPES) for s in block.post):
        return None
    return kind or "autograd"


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def _macs(block, T: int, B: int) -> int:
    """Multiply-accumulates of one time step of a block's layers (conv and linear)."""
    total = 0
    for s in block.steps:
        m = s.module
        if isinstance(m, CONV_TYPES):
            out = block.trace.get("pre_out") or block.trace["node_in"]
            # output positions: the last spatial dims (the output may be [T*B, C, ...] or [T, B, C, ...])
            positions = _prod(out[len(out) - len(m.kernel_size):])
            total += positions * B * m.out_channels * (m.in_channels // m.groups) * _prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            total += B * m.in_features * m.out_features
    return total


def block_shape(block: "Block", index: int) -> BlockShape:
    """Per-step sizes of a traced :class:`edgesnn.memopt.block.Block`."""
    in_shape, static, dtype = block.trace["in"]
    kind = block.traced_kind()
    pool = _pool_path(block, kind)
    e = 4 if str(dtype) == "torch.float32" else 8
    T, B = in_shape[0], in_shape[1]
    x_elems = _prod(in_shape[1:])
    if static:
        x_saved = x_elems * e
    elif block.in_codec == "bits":
        x_saved = T * (-(-x_elems // 8))
    elif block.in_codec.startswith("levels:"):
        x_saved = T * x_elems
    else:
        x_saved = T * x_elems * e
    # autograd records the block when its input needs a gradient (traced: the example input does, or a
    # trainable parameter ran before it) or it has trainable parameters; else it runs as plain modules
    input_grad = bool(block.trace.get("grad_in", True))
    records = input_grad or bool(block.params)
    return BlockShape(
        name=f"block{index}", T=T, B=B, x_bytes=x_elems * e, x_saved_bytes=x_saved,
        a_bytes=_prod(block.trace["node_in"][1:]) * e, o_bytes=_prod(block.trace["out"][1:]) * e,
        static=static, has_bn=block.bn_index() is not None, can_chunk=block.can_chunk() and records,
        macs=_macs(block, T, B), hands_off=block.next_block is not None and records,
        param_bytes=sum(p.numel() * p.element_size() for p in block.params),
        conv_param_bytes=sum(p.numel() * p.element_size() for s in block.steps if isinstance(s.module, CONV_TYPES)
                             for p in s.module.parameters() if p.requires_grad),
        has_post=bool(block.post), can_hold=block.can_hold() and records, unfused_pool=pool not in (None, "pool2"),
        pool_autograd=pool == "autograd", node_autograd=kind is None,
        max_pool=any(isinstance(getattr(s, "module", None), _MAX_POOLS) for s in block.post),
        sums_over_time=static and kind is not None, input_grad=input_grad, records=records,
        has_layers=bool(block.steps), node_loop=_node_loop(block.node, dtype, block.trace.get("device", "cpu")),
        reversible=isinstance(block.node, RevLIF), linear_post=kind == "lif_linear",
    )


def _node_loop(node: nn.Module, dtype, device: str) -> bool:
    """Whether ``node``'s own forward is PyTorch's step loop (the ``torch`` / ``reference`` backend) on
    ``device`` tensors of ``dtype`` (off the CPU: assumed, the larger transient)."""
    from .memory_model import resolved_backend

    return device != "cpu" or resolved_backend(node, dtype) in ("torch", "reference")
