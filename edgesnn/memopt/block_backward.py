"""The backward passes of a chunked block (:mod:`edgesnn.memopt.block`): one reverse pass when no
statistics span chunks, two with chunked BatchNorm (see that module's docstring for the passes).

Both read the block's output gradient chunk by chunk (``GradChunks`` or ``DenseGrad``), hand each
input-gradient chunk to ``sink(t0, t1, g)`` and accumulate parameter gradients into ``.grad`` of
the stand-ins the modules hold meanwhile (:mod:`edgesnn.memopt.paramgrads`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, List, Optional, Union

import torch

from .batchnorm import bn_normalize, compute_dtype, grad_sums, input_grad_
from .layer_grad import accumulate_grad, layer_backward
from .layers import Step
from .packing import SavedInput
from .steps import apply_recompute, apply_steps, merge_time, node_chunk_backward, split_time

if TYPE_CHECKING:  # pragma: no cover
    from .block import Block
    from .gradchunks import DenseGrad, GradChunks

__all__ = ["backward_plain", "backward_chunked_bn"]



def backward_plain(
    ctx: Any,
    block: Block,
    saved: SavedInput,
    grad_out: Union[GradChunks, DenseGrad],
    sink: Callable[[int, int, torch.Tensor], None],
    wants_input_grad: bool,
) -> None:
    """No batch statistics across chunks: one reverse pass over the chunks ``ctx.bounds`` (``(t0, t1)``
    step ranges, last first), each recomputed under autograd from ``saved`` and the node state
    ``ctx.checkpoints[c] [B, ...]``. Reads ``grad_out.get(t0, t1) [t1 - t0, B, ...]``; hands the input
    gradient ``[t1 - t0, B, ...]`` to ``sink(t0, t1, g)`` when ``wants_input_grad``."""
    g_v = None
    for c in range(len(ctx.bounds) - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        xl = saved.chunk(t0, t1).detach().requires_grad_(wants_input_grad)
        with torch.enable_grad():
            z = split_time(apply_recompute(block.steps, merge_time(xl)), k)
        g_v = _layers_node_backward(block, z, ctx.checkpoints[c], grad_out.get(t0, t1), g_v)
        del z
        grad_out.release_from(t0)
        # hand the input gradient on with the unpacked input chunk dropped: the sink may run the
        # previous block's backward, whose transient then does not sit beside it
        g_in = xl.grad if wants_input_grad else None
        del xl
        if g_in is not None:
            sink(t0, t1, g_in)
        del g_in


def _layers_node_backward(block: Block, z: torch.Tensor, v0: Optional[torch.Tensor], g_out: torch.Tensor,
                          g_v: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Back-propagate one chunk from its output gradient ``g_out`` (and the state gradient ``g_v``)
    through node and post layers, then through the layers that made the node input ``z [k, B, ...]``
    (recomputed under autograd: parameter and input gradients land in their ``.grad``); returns the
    gradient of the chunk's start state ``v0`` (``None`` for a fresh start). The node runs its fused
    kernel where one applies (:func:`node_chunk_backward`: no full-size spikes, max-pool indices or
    spike gradient beside the layers' recomputed chunk), else its own autograd path."""
    dz, dv0 = node_chunk_backward(block, z.detach(), v0, g_out, g_v)
    if z.requires_grad:
        torch.autograd.backward(z, dz)
    return dv0


def backward_chunked_bn(
    ctx: Any,
    block: Block,
    saved: SavedInput,
    grad_out: Union[GradChunks, DenseGrad],
    sink: Callable[[int, int, torch.Tensor], None],
    wants_input_grad: bool,
) -> None:
    """BatchNorm statistics across chunks: pass 1 runs the node backward and BatchNorm's sums, pass 2 the
    exact BatchNorm input gradient and the layers before it. ``grad_out`` (:class:`GradChunks` or
    :class:`DenseGrad`, chunks ``[t1 - t0, B, ...]``) is read twice, freed during pass 2; input-gradient
    chunks ``[t1 - t0, B, ...]`` go to ``sink(t0, t1, g)`` as in :func:`backward_plain`."""
    bn_i = block.bn_index()
    bn = block.steps[bn_i].module
    pre, mid = block.steps[:bn_i], block.steps[bn_i + 1:]
    mean, invstd, N = ctx.bn_mean, ctx.bn_invstd, ctx.bn_count
    n_chunks = len(ctx.bounds)
    held = ctx.held  # layer outputs kept from the forward (Block.hold), else None: recompute
    sum_dy = None
    sum_dy_xhat = None

    # One held chunk: pass 1 already has everything pass 2 would recompute (xhat in place of the
    # held output, the node's input gradient), so the BatchNorm backward finishes in one pass.
    single = held is not None and n_chunks == 1
    kept_dz = kept_xhat = None

    # pass 1: node backward, BatchNorm sums
    g_v = None
    for c in range(n_chunks - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        with torch.no_grad():
            if held is not None:
                z, xhat = bn_normalize(bn, held.pop(t0) if single else held[t0], mean, invstd, inplace=single)
            else:
                x_in = merge_time(saved.chunk(t0, t1))
                a = apply_steps(pre, x_in)
                # in place only on a fresh layer output: with no layer before BatchNorm (or only
                # views), ``a`` is the block's saved input, possibly the caller's own tensor
                z, xhat = bn_normalize(bn, a, mean, invstd, inplace=not _shares_storage(a, x_in))
                del a, x_in
            z = split_time(z, k)
        dz, g_v = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out.get(t0, t1), g_v)
        del z
        s1, s2 = grad_sums(merge_time(dz), xhat)
        sum_dy = s1 if sum_dy is None else sum_dy + s1
        sum_dy_xhat = s2 if sum_dy_xhat is None else sum_dy_xhat + s2
        if single:
            kept_dz, kept_xhat = dz, xhat
        del dz, xhat
    w = bn.weight.detach() if bn.weight is not None else torch.ones_like(invstd)
    # float16 / bfloat16: the per-channel coefficients stay float32 (input_grad_ computes in float32);
    # rounded to bfloat16 they shifted a whole channel's input gradient (its sum is no longer ~0)
    ct = compute_dtype(invstd.dtype)
    scale = (w * invstd) if ct == invstd.dtype else w.to(ct) * invstd.to(ct)
    c1 = (sum_dy / N).to(ct)
    c2 = (sum_dy_xhat / N).to(ct)
    accumulate_grad(bn.weight, sum_dy_xhat)  # the sums' last use: handed over to .grad
    accumulate_grad(bn.bias, sum_dy)
    del sum_dy, sum_dy_xhat

    # pass 2: exact BatchNorm input gradient, layers before BatchNorm. The node's backward runs
    # again, carrying the state gradient exactly as pass 1 did (same inputs, same values).
    g_v = None
    for c in range(n_chunks - 1, -1, -1):
        t0, t1 = ctx.bounds[c]
        k = t1 - t0
        if single:
            xl = saved.chunk(t0, t1).detach()
            a, dz, xhat = None, kept_dz, kept_xhat
            kept_dz = kept_xhat = None
        else:
            if held is not None:
                xl = saved.chunk(t0, t1).detach()
                a = held.pop(t0)
            else:
                xl = saved.chunk(t0, t1).detach().requires_grad_(wants_input_grad)
                with torch.enable_grad():
                    a = apply_steps(pre, merge_time(xl))
            with torch.no_grad():
                # the layers before BatchNorm (conv, linear, pooling) do not keep their output for
                # backward, so the output may become xhat in place (not when it is the input itself
                # or a view of it: the saved input, possibly the caller's own tensor)
                z, xhat = bn_normalize(bn, a.detach(), mean, invstd, inplace=not _shares_storage(a, xl))
                z = split_time(z, k)
            dz, g_v = _mid_node_backward(block, mid, z, ctx.checkpoints[c], grad_out.get(t0, t1), g_v)
            del z
        grad_out.release_from(t0)
        with torch.no_grad():
            da = merge_time(dz)
            input_grad_(da, xhat, c1, c2, scale)
        del dz, xhat
        g_in = None
        if held is not None:
            a = None
            g_in = layer_backward(pre[0].module, merge_time(xl), da, wants_input_grad)
            g_in = g_in.view(xl.shape) if g_in is not None else None
        elif a.requires_grad:
            torch.autograd.backward(a, da)
            g_in = xl.grad if wants_input_grad else None
        del a, da
        # hand the input gradient on with the unpacked input chunk dropped: the sink may run the
        # previous block's backward, whose transient then does not sit beside it
        del xl
        if g_in is not None:
            sink(t0, t1, g_in)
        del g_in


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` and ``b`` are views of one storage (writing into ``a`` would change ``b``)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _mid_node_backward(block: Block, mid: List[Step], z: torch.Tensor, v0, g_out, g_v):
    """Gradient w.r.t. the BatchNorm output ``z [k, B, ...]`` through mid layers, node and post."""
    if not mid:
        return node_chunk_backward(block, z, v0, g_out, g_v)
    k = z.shape[0]
    zl = z.detach().requires_grad_(True)
    with torch.enable_grad():
        zz = split_time(apply_steps(mid, merge_time(zl)), k)
    dzz, dv = node_chunk_backward(block, zz.detach(), v0, g_out, g_v)
    torch.autograd.backward(zz, dzz)
    return zl.grad, dv
