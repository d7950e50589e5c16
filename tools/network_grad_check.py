"""The whole-network benchmark's gradient-agreement check (``tools/bench_network_memory.py``
runs it in a fresh process per T): loss, parameter gradients and BatchNorm running statistics of
a model optimized by :func:`edgesnn.optimize_memory` against the same model unoptimized, in
float32 and float64, plus each model's conv/linear weight gradients against a float64 re-reduction."""

from __future__ import annotations

import statistics
from typing import Callable

from torch import nn

__all__ = ["check_gradients"]


def check_gradients(build: Callable[[], nn.Module], T: int, batch: int, threads: int) -> dict:
    """Loss, parameter gradients and BatchNorm running statistics: optimized vs unoptimized model
    (``build()``: a fresh plain model on [T, B, 3, 32, 32] inputs, made after seeding).

    float32 (the kernels the benchmark runs) and float64 (the torch backend): a BatchNorm output
    that differs in its last bit can move a membrane potential across the threshold; in float32
    that flips a spike now and then and the two runs part ways from there, in float64 it does not,
    so float64 shows whether the method itself is exact. Relative differences are per parameter
    tensor, ||a - b|| / ||a||, over tensors whose gradient is not ~0 (conv biases before BatchNorm).
    """
    import copy

    import torch
    import torch.nn.functional as F

    import edgesnn

    torch.set_num_threads(threads)
    out = {"T": T}
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(1)
        base = build()
        base = base.to(dtype)
        opt = copy.deepcopy(base)
        x0 = torch.rand(batch, 3, 32, 32, dtype=dtype)
        x = x0.unsqueeze(0).expand(T, *x0.shape)
        y = torch.randint(0, 10, (batch,))
        edgesnn.optimize_memory(opt, x)
        before_buffers = [b.detach().clone() for b in base.buffers()]
        res = []
        layers = _catch_layer_grads(base) if dtype == torch.float32 else None
        for m in (base, opt):
            loss = F.cross_entropy(m(x).mean(0), y)
            loss.backward()
            res.append((loss.item(), [p.grad for p in m.parameters()], [b for b in m.buffers()]))
        if layers is not None:
            for h in layers[1]:
                h.remove()  # before any copy of base below: deepcopy would copy the hooks
        scale = max(g.norm().item() for g in res[0][1])
        keep = [a.norm() > 1e-6 * scale for a in res[0][1]]
        rel = [((a - b).norm() / a.norm()).item() for a, b, k in zip(res[0][1], res[1][1], keep) if k]
        bn = max((a.double() - b.double()).abs().max().item() for a, b in zip(res[0][2], res[1][2]))
        key = str(dtype).replace("torch.", "")
        out[key] = {"loss_base": res[0][0], "loss_opt": res[1][0],
                    "loss_rel": abs(res[0][0] - res[1][0]) / abs(res[0][0]),
                    "grad_rel_max": max(rel), "grad_rel_median": statistics.median(rel), "bn_stats_max_abs": bn}
        if dtype == torch.float32 and threads > 1:
            # the unoptimized model's own float32 reproducibility: the same step on 1 thread
            # (another summation order inside PyTorch's kernels), a floor for the comparison above
            again = copy.deepcopy(base)
            again.zero_grad(set_to_none=True)
            for buf, val in zip(again.buffers(), before_buffers):
                buf.copy_(val)
            torch.set_num_threads(1)
            F.cross_entropy(again(x).mean(0), y).backward()
            torch.set_num_threads(threads)
            self_rel = [((a - p.grad).norm() / a.norm()).item()
                        for a, p, k in zip(res[0][1], again.parameters(), keep) if k]
            out[key]["plain_1_vs_%d_threads_grad_rel_max" % threads] = max(self_rel)
        if layers is not None:
            out[key].update(_float64_weight_check(base, opt, layers))
    return out


def _catch_layer_grads(model):
    """Forward hooks on every Conv2d / Linear of ``model``: each call's input and (retained)
    output, so that after the backward their weight gradient can be re-reduced in float64."""
    import torch.nn as nn

    caught = []

    def hook(mod, inp, out):
        out.retain_grad()
        caught.append((mod, inp[0].detach(), out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return caught, handles


def _float64_weight_check(base, opt, layers) -> dict:
    """How far each model's float32 conv / linear weight gradients lie from the same reduction in
    float64: ``sum over T x B (x H x W) of input x output-gradient``, with the plain model's own
    float32 input and output gradient of that layer. It separates the last reduction's float32
    rounding (which the chunked backward does in another order) from the method: per tensor
    ``||g - g64|| / ||g64||``, max over tensors, for the plain and the optimized model."""
    import torch
    import torch.nn as nn

    caught, _ = layers
    index = {id(p): i for i, p in enumerate(base.parameters())}
    opt_params = list(opt.parameters())
    worst = {"plain": (0.0, ""), "opt": (0.0, "")}
    names = {id(p): n for n, p in base.named_parameters()}
    for mod, inp, out in caught:
        dz = out.grad.double()
        xin = inp.double()
        if isinstance(mod, nn.Conv2d):
            g64 = torch.nn.grad.conv2d_weight(xin.reshape(-1, *xin.shape[-3:]), mod.weight.shape,
                                              dz.reshape(-1, *dz.shape[-3:]), stride=mod.stride,
                                              padding=mod.padding, dilation=mod.dilation, groups=mod.groups)
        else:
            g64 = dz.reshape(-1, dz.shape[-1]).T @ xin.reshape(-1, xin.shape[-1])
        n64 = g64.norm()
        if n64 == 0:
            continue
        for who, g in (("plain", mod.weight.grad), ("opt", opt_params[index[id(mod.weight)]].grad)):
            rel = ((g.double() - g64).norm() / n64).item()
            if rel > worst[who][0]:
                worst[who] = (rel, names[id(mod.weight)])
    return {"weight_grad_rel_to_float64_plain_max": worst["plain"][0],
            "weight_grad_rel_to_float64_opt_max": worst["opt"][0],
            "weight_grad_rel_to_float64_worst": {"plain": worst["plain"][1], "opt": worst["opt"][1]}}
