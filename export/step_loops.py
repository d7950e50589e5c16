"""The two loop bodies of the ONNX step graph (:mod:`.onnx_step`), traced from the step program.

* :func:`forward_bodies`: the forward ``Scan`` body, ``K`` time steps per iteration, which also
  emits per spiking layer what the backward needs (LIF: ``h`` float32 ``[K, B, ...]``; RevLIF:
  the spike and grid bits of the chunk's ``K`` steps packed into one uint8 ``[B, n, M]``, see
  :func:`pack_bits`), and the same body without those stores for the eval graph.
* :func:`backward_body`: the backward ``Loop`` body, which gathers one chunk of the stores
  (last chunk first), walks its ``K`` steps back with the project's VJPs and accumulates the
  parameter gradients (Linear/Conv2d weight gradients once per chunk).

Example tensors only fix shapes and dtypes: the traces do not depend on their values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, Union

import torch

from .onnx_pieces import pruned, scan_body_to_loop, traced_body
from .step_layers import Stage, weight_grad
from .step_program import StepProgram

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["backward_body", "forward_bodies", "pack_bits", "store_names", "unpack_bits"]

Kept = Tuple[torch.Tensor, Optional[torch.Tensor]]


def store_names(prog: StepProgram) -> List[str]:
    """The forward Scan's per-stage store outputs, ``store<i>`` (one per spiking layer)."""
    return [f"store{i}" for i in range(len(prog.stages))]


def pack_bits(acc: Optional[torch.Tensor], kept: Kept, k: int) -> torch.Tensor:
    """A RevLIF layer's store in progress (float ``[B, n, M]``, ``None`` before step 0): step ``k``'s
    spike and grid bit (``kept``: 0/1 ``[B, n, M]``, the bit ``None`` in float mode) added as bits 2k,
    2k + 1 (float sums of powers of two, exact), right after the step, so no step's 0/1 floats outlive it."""
    s, bit = kept
    term = s * float(4 ** k)
    if bit is not None:
        term = term + bit * float(2 * 4 ** k)
    return term if acc is None else acc + term


def unpack_bits(store_k: torch.Tensor, k: int, st: Stage) -> Union[torch.Tensor, Kept]:
    """Step ``k`` of one chunk's store: LIF ``h [B, ...]`` from ``store_k [K, B, ...]``; RevLIF ``(spike,
    grid bit | None)`` as float32 0/1 ``[B, n, M]`` from the packed ``store_k [B, n, M]`` (the inverse of
    :func:`pack_bits`)."""
    if st.kind == "lif":
        return store_k[k]
    b = store_k.to(torch.float32)
    def bit(j):
        return torch.floor(b / float(2 ** j)) - 2.0 * torch.floor(b / float(2 ** (j + 1)))
    spike = bit(2 * k)
    gbit = bit(2 * k + 1) if st.params.exact else None
    return spike, gbit


def forward_bodies(
    prog: StepProgram, V: Dict[str, torch.Tensor], P_ex: torch.Tensor, xk_ex: Optional[torch.Tensor],
    init_states: List[torch.Tensor],
) -> Tuple["onnx.GraphProto", "onnx.GraphProto", Tuple[torch.Tensor, ...]]:
    """``(training body, eval body, example stores)`` of the forward Scan.

    Body inputs: the states ``s<i>``, ``logit_sum [B, classes]`` and the scanned value (a dummy
    ``tick`` per chunk, the input repeating, or for event data ``xk [K, B, ...]``, the chunk's
    frames); outer-scope: ``P`` (not for event data) and the loop's parameters ``V``. ``P_ex``:
    one step's input; ``xk_ex``: one chunk of frames (event data only, else ``None``).
    """
    B, K, event, stages = prog.batch_size, prog.chunk, prog.event, prog.stages
    loop_read = prog.loop_read_names()
    names = store_names(prog)

    def make_fwd(store: bool):
        def f_fwd(P, *rest):
            nv = len(loop_read)
            t = dict(zip(loop_read, rest[:nv]))
            states = list(rest[nv:nv + len(stages)])
            logit_sum = rest[nv + len(stages)]
            stores: List = [[] if st.kind == "lif" else None for st in stages]
            for k in range(K):
                logits, states, kept = prog.forward_step(t, P[k] if event else P, states)
                logit_sum = logit_sum + logits
                if store:
                    for i, st in enumerate(stages):
                        if st.kind == "lif":
                            stores[i].append(kept[i])
                        else:
                            stores[i] = pack_bits(stores[i], kept[i], k)
            outs = [*states, logit_sum]
            if store:  # LIF: h [K, B, ...] float32; RevLIF: [B, n, M] uint8
                outs += [torch.stack(v) if st.kind == "lif" else v.to(torch.uint8) for v, st in zip(stores, stages)]
            return tuple(outs)
        return f_fwd

    # the scanned input: a dummy tick per chunk (the input repeats), or the chunk of frames (event data)
    fwd_local = [f"s{i}" for i in range(len(stages))] + ["logit_sum", "xk" if event else "tick"]
    fwd_in_names = ([] if event else ["P"]) + loop_read + fwd_local
    fwd_args = (([] if event else [P_ex]) + [V[n] for n in loop_read] + init_states
                + [torch.zeros(B, prog.num_classes), xk_ex if event else torch.zeros(1)])
    fwd_out_state = [f"s{i}_out" for i in range(len(stages))] + ["logit_sum_out"]

    def fwd_fn_with_tick(store):
        f = make_fwd(store)
        if event:
            return lambda *rest: f(rest[-1], *rest[:-1])
        return lambda P, *rest: f(P, *rest[:-1])

    with torch.no_grad():
        ex_store = fwd_fn_with_tick(True)(*fwd_args)[len(stages) + 1:]
    body_f = traced_body(fwd_fn_with_tick(True), fwd_args, fwd_in_names, fwd_out_state + [f"{n}_slice" for n in names],
                   fwd_local, "fwd/")
    body_e = pruned(body_f, len(fwd_out_state))  # the eval graph's forward: the same body without the stores
    return body_f, body_e, ex_store


def backward_body(
    prog: StepProgram, V: Dict[str, torch.Tensor], P_ex: torch.Tensor, xk_ex: Optional[torch.Tensor],
    init_states: List[torch.Tensor], ex_store: Tuple[torch.Tensor, ...],
) -> "onnx.GraphProto":
    """The backward Loop body: carries the RevLIF states ``bv<j>`` (walked back to the initial
    state), the state gradients ``bgv<i>``, the loop's parameter gradients ``bg/<name>``, the
    prefix output's gradient ``bgP`` (a scalar placeholder for event data) and the reconstruction
    error ``berr``; it gathers chunk ``n_chunks - 1 - i`` of each forward store (and, for event
    data, of ``P``, the chunked frames). Outer-scope: ``P``, ``g_logits_t`` and ``V``.
    ``ex_store``: the forward body's example stores (:func:`forward_bodies`)."""
    B, K, event, stages = prog.batch_size, prog.chunk, prog.event, prog.stages
    n_chunks = prog.timesteps // K
    loop_read = prog.loop_read_names()
    loop_params = prog.loop_names()
    names = store_names(prog)
    rev_idx = [i for i, st in enumerate(stages) if st.kind == "revlif"]
    n_rev = len(rev_idx)
    leaf_of = {f"{leaf.name}.weight": leaf for leaves in [prog.head] + [st.leaves for st in stages] for leaf in leaves}

    def f_bwd(P, g_t, *rest):
        nv = len(loop_read)
        t = dict(zip(loop_read, rest[:nv]))
        rest = rest[nv:]
        v_rev = list(rest[:n_rev]); rest = rest[n_rev:]
        gv = list(rest[:len(stages)]); rest = rest[len(stages):]
        gacc = dict(zip(loop_params, rest[:len(loop_params)])); rest = rest[len(loop_params):]
        gP, err = rest[0], rest[1]
        stores = rest[2:2 + len(stages)]
        pairs: Dict[str, List] = {}
        for k in range(K - 1, -1, -1):
            kept = [unpack_bits(s, k, st) for s, st in zip(stores, stages)]
            v_rev, gv, grads, g, err = prog.backward_step(t, P[k] if event else P, g_t, v_rev, gv, kept, err, defer=True)
            for n in loop_params:
                if isinstance(grads[n], tuple):
                    pairs.setdefault(n, []).append(grads[n])
                else:
                    gacc[n] = gacc[n] + grads[n]
            if g is not None and not event:
                gP = gP + g
        # weight gradients of the chunk's K steps in one product each
        for n, pl in pairs.items():
            xs = torch.cat([p[0] for p in pl]) if len(pl) > 1 else pl[0][0]
            gs = torch.cat([p[1] for p in pl]) if len(pl) > 1 else pl[0][1]
            gacc[n] = weight_grad(leaf_of[n], xs, gs, gacc[n])
        return (*v_rev, *gv, *[gacc[n] for n in loop_params], gP, err)

    with torch.no_grad():  # example states: one step (values never shape the trace; T steps took hours at large T)
        _, st_ex, _ = prog.forward_step(V, P_ex, list(init_states))
    # event data: the chunk of frames is one more store the backward gathers (P, the chunked frames);
    # the prefix gradient is not carried (a scalar placeholder): the first block's VJP needs no input gradient
    slices = [f"{n}_slice" for n in names] + (["xk_slice"] if event else [])
    bwd_local = ([f"bv{j}" for j in range(n_rev)] + [f"bgv{i}" for i in range(len(stages))]
                 + [f"bg/{n}" for n in loop_params] + ["bgP", "berr"] + slices)
    bwd_in_names = ([] if event else ["P"]) + ["g_logits_t"] + loop_read + bwd_local
    bwd_args = (([] if event else [P_ex]) + [torch.zeros(B, prog.num_classes)] + [V[n] for n in loop_read]
                + [st_ex[i] for i in rev_idx] + [torch.zeros_like(s) for s in init_states]
                + [torch.zeros_like(V[n]) for n in loop_params]
                + [torch.zeros(()) if event else torch.zeros_like(P_ex), torch.zeros(())] + list(ex_store)
                + ([xk_ex] if event else []))
    bwd_out = ([f"bv{j}_out" for j in range(n_rev)] + [f"bgv{i}_out" for i in range(len(stages))]
               + [f"bg/{n}_out" for n in loop_params] + ["bgP_out", "berr_out"])
    bwd_fn = (lambda g_t, *rest: f_bwd(rest[-1], g_t, *rest[:-1])) if event else f_bwd
    body_b = traced_body(bwd_fn, bwd_args, bwd_in_names, bwd_out, bwd_local[:len(bwd_out)] + slices, "bwd/")
    scan_body_to_loop(body_b, len(bwd_out), names + (["P"] if event else []), n_chunks, "bwd/")
    return body_b
