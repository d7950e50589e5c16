"""Helper run in a subprocess by the CUDA tests: compare the CUDA kernels with the Numba CPU kernels.

Usage: python tests/_cuda_compare.py {sim|gpu} -> prints one JSON line with the results.
With ``sim`` the caller sets NUMBA_ENABLE_CUDASIM=1 (before numba is imported) and sizes stay tiny.
"""

import json
import sys

import torch

from edgesnn.functional.lif import LIFParams
from edgesnn.functional.revlif import RevLIFParams, to_groups
from edgesnn.functional.surrogate import ATan, Sigmoid
from edgesnn.kernels import cuda_kernels as C
from edgesnn.kernels import numba_cpu as K


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-30)


def eq(a, b):
    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


def _expanded_vs_contiguous(run, x0, v0, w):
    """``run(x [T, ...], v0 | None) -> (out, v_T)`` on ``x0`` repeated over ``T = len(w)`` steps as an
    expanded view and as a contiguous copy, loss ``(out * w).sum() + v_T.sum()``: whether outputs and
    gradients (of ``x0``, and of ``v0`` when given) are equal bit for bit, and their largest relative gap."""
    runs = []
    for contiguous in (False, True):
        leaf = x0.clone().requires_grad_()
        v = None if v0 is None else v0.clone().requires_grad_()
        x = leaf.unsqueeze(0).expand(w.shape[0], *x0.shape)
        out, vT = run(x.contiguous() if contiguous else x, v)
        ((out * w).sum() + vT.sum()).backward()
        runs.append((out, vT, leaf.grad) + (() if v is None else (v.grad,)))
    return {"fwd_equal": all(eq(a, b) for a, b in zip(runs[0][:2], runs[1][:2])),
            "grad_equal": all(eq(a, b) for a, b in zip(runs[0][2:], runs[1][2:])),
            "grad_rel": max(rel(a, b) for a, b in zip(runs[0][2:], runs[1][2:]))}


def main(kind):
    dev = "cuda" if kind == "gpu" else "cpu"
    if kind == "gpu":
        shapes_lif = [(1, 3, 5), (8, 7, 33), (64, 16, 4099)]
        shapes_rev = [(1, 2, 2 * 5), (8, 3, 3 * 17), (64, 16, 2 * 4099)]
    else:
        shapes_lif = [(1, 2, 3), (9, 2, 5)]
        shapes_rev = [(1, 1, 2 * 3), (9, 2, 3 * 2)]
    results = []
    g = torch.Generator().manual_seed(0)
    lifs = [LIFParams(), LIFParams(v_reset=None, surrogate=ATan(), detach_reset=True),
            LIFParams(tau=3.0, decay_input=False, v_reset=-0.25, surrogate=Sigmoid(2.5)),
            LIFParams(v_reset=None),  # soft reset, the reset's gradient through the spike (no detach)
            LIFParams(tau=1.7, v_reset=None, decay_input=False, surrogate=ATan())]  # soft reset, decay_input=False
    for shape in shapes_lif:
        for i, p in enumerate(lifs):
            x = torch.randn(shape, generator=g) * 1.5 + 0.4
            v0 = torch.randn(shape[1:], generator=g) * 0.3
            a = K.lif_forward(x, v0, p)
            b = C.lif_forward(x.to(dev), v0.to(dev), p)
            gs, gv = torch.randn(shape, generator=g), torch.randn(shape[1:], generator=g)
            c = K.lif_backward(x, v0, gs, gv, p)
            d = C.lif_backward(x.to(dev), v0.to(dev), gs.to(dev), gv.to(dev), p)
            results.append({"op": "lif", "shape": shape, "cfg": i, "fwd_equal": all(eq(u, w) for u, w in zip(a, b)),
                            "grad_rel": max(rel(d[0], c[0]), rel(d[1], c[1])), "spikes": float(a[0].sum())})
    for shape in shapes_rev:
        for groups, mode, lif in ((2, "exact", lifs[0]), (3, "exact", lifs[1]), (2, "float", lifs[2]),
                                  (2, "exact", lifs[3]), (2, "float", lifs[4])):
            if shape[2] % groups:
                continue
            p = RevLIFParams(lif=lif, groups=groups, mode=mode, **({"beta": 0.75} if mode == "float" else {}))
            T = shape[0] if mode == "exact" else min(shape[0], 8)
            xg = to_groups(torch.randn((T,) + shape[1:], generator=g) * 1.5 + 0.5, groups)
            v0 = torch.zeros(xg.shape[1:])
            a = K.revlif_forward(xg, v0, p)
            b = C.revlif_forward(xg.to(dev), v0.to(dev), p)
            gy, gv = torch.randn(a[0].shape, generator=g), torch.randn(a[1].shape, generator=g)
            c = K.revlif_backward(a[0], a[1], a[2], gy, gv, p)
            d = C.revlif_backward(b[0], b[1], b[2], gy.to(dev), gv.to(dev), p)
            fwd = all((u is None and w is None) or eq(u, w) for u, w in zip(a, b))
            results.append({"op": "revlif", "mode": mode, "groups": groups, "shape": shape, "fwd_equal": fwd,
                            "v0_rec_equal": eq(c[2], d[2]), "v0_rec_exact": eq(d[2], v0) if mode == "exact" else None,
                            "grad_rel": max(rel(d[0], c[0]), rel(d[1], c[1]))})
    # an input repeated over time (stride 0 along T) through the dispatch: the kernel reads its one step
    # (no [T, ...] copy), outputs and gradients bit for bit those of the same values given contiguous
    from edgesnn.kernels import dispatch

    seen = []
    real = C.revlif_forward

    def spy(xg, v0, p):
        seen.append(xg.stride(0) == 0)
        return real(xg, v0, p)

    C.revlif_forward = spy
    try:
        for mode, given in (("exact", False), ("exact", True), ("float", True)):
            p = RevLIFParams(groups=2, mode=mode, **({"beta": 0.75} if mode == "float" else {}))
            x0 = (torch.randn(2, 6, generator=g) * 1.5 + 0.5).to(dev)
            v0 = (torch.rand(2, 6, generator=g) * 0.5).to(dev) if given else None
            w = torch.randn(7, 2, 6, generator=g).to(dev)
            results.append({"op": "expanded", "mode": mode, "v0": given,
                            **_expanded_vs_contiguous(lambda x, v: dispatch.revlif_multistep(x, p, v, "cuda"), x0, v0, w),
                            "in_place": seen[-2:] == [True, False]})
    finally:
        C.revlif_forward = real
    # the same for LIF: forward and backward kernels get the one step (autograd keeps the expanded view)
    seen_lif = []
    real_f, real_b = C.lif_forward, C.lif_backward

    def spy_f(x, v0, p):
        seen_lif.append(x.stride(0) == 0)
        return real_f(x, v0, p)

    def spy_b(x, v0, gs, gvT, p):
        seen_lif.append(x.stride(0) == 0)
        return real_b(x, v0, gs, gvT, p)

    C.lif_forward, C.lif_backward = spy_f, spy_b
    try:
        for given in (False, True):
            x0 = (torch.randn(3, 10, generator=g) * 1.5 + 0.5).to(dev)
            v0 = (torch.rand(3, 10, generator=g) * 0.5).to(dev) if given else None
            w = torch.randn(6, 3, 10, generator=g).to(dev)
            results.append({"op": "expanded", "mode": "lif", "v0": given,
                            **_expanded_vs_contiguous(lambda x, v: dispatch.lif_multistep(x, lifs[0], v, "cuda"), x0, v0, w),
                            "in_place": seen_lif[-4:] == [True, True, False, False]})
    finally:
        C.lif_forward, C.lif_backward = real_f, real_b
    # the dispatch + custom op path on this device (CUDA tensors only with a real GPU)
    if kind == "gpu":
        x = (torch.randn(16, 4, 64, generator=g) + 0.5).to(dev).requires_grad_()
        assert dispatch.resolve_backend("auto", x) == "cuda"
        s, _ = dispatch.lif_multistep(x, lifs[0])
        y, _ = dispatch.revlif_multistep(x, RevLIFParams())
        (s.sum() + (y * y).sum()).backward()
        xc = x.detach().cpu().requires_grad_()
        s2, _ = dispatch.lif_multistep(xc, lifs[0], backend="numba")
        y2, _ = dispatch.revlif_multistep(xc, RevLIFParams(), backend="numba")
        (s2.sum() + (y2 * y2).sum()).backward()
        results.append({"op": "dispatch", "fwd_equal": eq(s, s2) and eq(y, y2), "grad_rel": rel(x.grad, xc.grad)})
    print(json.dumps({"simulator": C.SIMULATOR, "results": results}))


if __name__ == "__main__":
    main(sys.argv[1])
