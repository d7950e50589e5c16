"""A whole training step as one plain ONNX inference graph (``edgesnn export --format onnx-step``).

``step.onnx`` maps ``(parameters, frozen buffers, optimizer state, x, labels, lr)`` to
``(new parameters, new optimizer state, loss, correct, recon_error)``. It runs on plain
``onnxruntime`` (any ``InferenceSession``; no training build, no torch). Inside:

1. **prefix**: the stateless layers before the first spiking node see the same (direct-encoded)
   input at every step, so they run once on ``[B, ...]``. For a model trained on event data
   (``event=True``: ``x [B, T, ...]``, one frame per step) they run at every step instead, as the
   first spiking layer's block; the prefix then only cuts the frames into chunks ``[T/K, K, B, ...]``,
   which the forward Scan scans and the backward Loop gathers, chunk by chunk.
2. **forward** ``Scan`` over the ``T`` steps, ``K`` steps per iteration (``K`` = 1, 2 or 4 dividing
   ``T``; :func:`~.step_program.default_chunk` by default). Per spiking layer it keeps, for the backward, only:
   LIF: ``h`` (float32, 4 bytes per neuron-step, as the ``torch`` backend saves);
   RevLIF: the spike bit and (exact mode) the bit halving shifted out of the state, packed
   ``K`` steps per byte, plus the final state (a loop-carried value): one byte per neuron per
   chunk, i.e. 2 bits per neuron-step at ``K`` = 4, 4 bits at 2 and 8 bits at 1.
   The time-averaged logits are accumulated.
3. **loss**: cross-entropy on the mean logits, written as log-softmax x one-hot (its gradient is
   ``(softmax - onehot) / B`` by construction; an exported ``F.cross_entropy`` backward once
   dropped the ``1/B``), and the number of correct predictions.
4. **backward** ``Loop`` over the same chunks, last first (a ``Loop`` rather than a ``Scan``:
   ORT's Scan keeps four buffers per loop-carried value, which for the weight-gradient
   accumulators costs a fixed extra 3x their size once it runs three or more iterations).
   At each step it recomputes the stateless layers from the previous spiking layer's output
   (LIF: ``s = h >= v_th``; RevLIF: ``y = alpha * quantize(x) + s`` from the recomputed input and the stored spike bit), then
   back-propagates top-down with the project's own VJPs: :func:`~edgesnn.functional.lif.lif_step_vjp`
   for LIF, and :func:`~edgesnn.functional.revlif.revlif_step_backward` for RevLIF, which walks
   the state back from the final state (inverse and gradient in one pass). Linear, Conv2d
   (stride/padding, dilation 1, groups 1), frozen-statistics BatchNorm, AvgPool2d and MaxPool2d
   (kernel = stride) and Flatten have explicit VJPs (:mod:`.step_layers`). Parameter gradients accumulate as loop-carried
   values (Linear/Conv2d weight gradients once per chunk, as one product over its ``K x B`` rows);
   no ``[T, B, N]`` tensor of a RevLIF layer exists anywhere in the graph.
5. **update**: SGD (momentum, Nesterov, weight decay; ``torch.optim.SGD``) or AdamW
   (``torch.optim.AdamW``'s formula, its bias corrections in float64 as torch computes them).

The same export writes the step cut before its update, for gradient accumulation on the device
(``edgesnn-device --accumulate``): ``grad.onnx`` is steps 1-4 plus the prefix VJP and the
verification, with the gradients (``grad/<name>``) as outputs; ``apply.onnx`` is step 5 alone.
Run in turn on one batch they compute exactly what ``step.onnx`` does.

``recon_error`` verifies the reversible layers: the largest difference between a reconstructed
input and the recomputed one, and between the reconstructed initial state and the fresh state.
It is exactly 0.0 in exact mode (grid arithmetic: floor/round on 2^-16 survive ONNX Runtime bit
for bit); in float mode it is compared with :func:`~edgesnn.functional.revlif_autograd.float_mode_tolerance`,
and a float-mode model whose rounding is predicted to exceed it over ``T`` steps is refused at export
(:mod:`.recon_check`).
The runner checks it after every step.

BatchNorm uses its running statistics (frozen, as in ``onnx-training``): its statistics are
over ``T x B`` and batch statistics would need every step's input of that layer at once, the
history the reversible graph avoids. Its weight and bias train.

The forward Scan and backward Loop bodies are traced by :mod:`.step_loops`; this module traces the
prefix, loss and update pieces and stitches everything into the step, eval, grad and apply graphs.
Each piece is traced by the TorchScript-based exporter at opset 17 with ``stop_gradient`` in its
eager ``detach`` branch (:func:`~edgesnn.functional.surrogate.detach_kept_in_export`; the exporter
drops the ``detach``: straight-through rounding then adds an exact 0.0); the pieces are stitched into one graph
with ``onnx.helper``. File size and export time do not grow with ``T`` (one loop body each way).

:func:`~edgesnn.functional.revlif.revlif_step_backward` builds its outputs by stacking per-group
results, with no indexed writes: the traced backward has no ``ScatterND``. (Its earlier slice
assignments, ``x[:, i] = ...``, exported as 96 of them on constant buffers: the RevLIF session was
18 MB (wide MLP) / 23 MB (conv net) larger, peak RSS 16-31 MB higher and ``step.onnx`` 5.1 / 7.3 MB
instead of 0.7 / 1.0 MB; step times within the noise.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..checkpoint import encode_config
from ..lr_schedules import RATE_RANGE, is_float32_rate
from .artifacts import STEP_APPLY_MODEL, STEP_EVAL_MODEL, STEP_GRAD_MODEL, STEP_INIT, STEP_MODEL, StepManifest, atomic_write_bytes, write_step_manifest
from .artifacts import PathLike
from .onnx_inference import _onnx
from .prepare import ExportError, check_export_flag, check_out_path, checked_input_range
from .recon_check import step_recon_tolerance
from .onnx_pieces import checked_model, export_piece, fills_as_constant_of_shape, inline_graph
from .step_layers import block_forward, block_vjp, initial_state, initial_value
from .step_loops import backward_body, forward_bodies
from .step_loops import store_names as stage_store_names
from .step_program import STEP_OPTIMIZERS, StepProgram, build_step_program, reference_step

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["STEP_OPTIMIZERS", "StepProgram", "build_step_program", "export_onnx_step", "reference_step"]


def build_graphs(
    prog: StepProgram,
) -> Tuple["onnx.ModelProto", "onnx.ModelProto", List[List[str]], Tuple["onnx.ModelProto", "onnx.ModelProto"]]:
    """``(step ModelProto, eval ModelProto, carried, (grad ModelProto, apply ModelProto))``; ``carried``:
    the ``[input, output]`` name pairs of the parameters and optimizer state a step hands to the next."""
    onnx = _onnx()
    helper = onnx.helper
    TP = onnx.TensorProto
    B, T, K = prog.batch_size, prog.timesteps, prog.chunk
    n_chunks = T // K
    V = {k: v for k, v in prog.values.items()}
    prefix_read = prog.read_names(prog.prefix)
    loop_params = [n for n in prog.loop_names()]
    event = prog.event  # x [B, T, ...]: P holds the frames in chunks [T/K, K, B, ...], scanned and gathered
    g = torch.Generator().manual_seed(0)  # example values of its own: the caller's random stream is not drawn
    x_ex = torch.rand(B, *prog.sample_shape, generator=g)
    labels_ex = torch.randint(0, prog.num_classes, (B,), generator=g)
    stages = prog.stages
    rev_idx = [i for i, st in enumerate(stages) if st.kind == "revlif"]

    # ---- prefix: x -> P, initial states
    def f_pre(x, *vals):
        t = dict(zip(prefix_read, vals))
        if event:
            P = x.transpose(0, 1).reshape(n_chunks, K, B, *prog.in_shape)
        else:
            _, P = block_forward(prog.prefix, t, x)
        inits = [initial_state(st) for st in stages]
        return (P, *inits, torch.zeros(B, prog.num_classes))

    xk_ex = None
    with torch.no_grad():
        if event:  # P_ex: one step's input; xk_ex: one chunk of frames
            P_ex, xk_ex = x_ex[:, 0], x_ex[:, :K].transpose(0, 1).contiguous()
        else:
            _, P_ex = block_forward(prog.prefix, V, x_ex)
    init_states = [initial_state(st) for st in stages]
    pre_out = ["P"] + [f"v_init{i}" for i in range(len(stages))] + ["logit_sum_init"]

    # ---- forward body (.step_loops)
    store_names = stage_store_names(prog)
    body_f, body_e, ex_store = forward_bodies(prog, V, P_ex, xk_ex, init_states)

    # ---- loss
    def f_loss(logit_sum, labels, *params):
        loss, correct, g_t = prog.loss(logit_sum, labels)
        zeros = [p * 0.0 for p in params]
        return (loss, correct, g_t, *zeros)

    loss_params = loop_params
    loss_out = ["loss", "correct", "g_logits_t"] + [f"gacc0/{n}" for n in loss_params]

    # ---- backward body (.step_loops)
    n_rev = len(rev_idx)
    body_b = backward_body(prog, V, P_ex, xk_ex, init_states, ex_store)

    # ---- post: prefix VJP, verification, update
    opt_names = prog.opt_state
    # a RevLIF layer's fresh state holds one value: compared as a scalar, so no [B, n, M] constant
    # of it sits in the graph (ONNX Runtime kept each for the session's life)
    init_rev = [initial_value(stages[i]) for i in rev_idx]

    def gradients(x, gP, err, t, gl, v0_rec):
        """Every trainable parameter's gradient (the loop's, plus the prefix VJP's) and the
        reconstruction error with the recovered initial states checked: what f_post updates with,
        and what grad.onnx returns."""
        grads = dict(gl)
        if prog.prefix_trains:
            inputs, _ = block_forward(prog.prefix, t, x)
            grads.update(block_vjp(prog.prefix, t, inputs, gP, need_gx=False)[1])
        for v, v0 in zip(v0_rec, init_rev):
            err = torch.maximum(err, (v - v0).abs().max())
        return grads, err

    def f_post(x, lr, gP, err, *rest):
        t = dict(zip(prog.trainable + prog.frozen, rest[:len(prog.trainable) + len(prog.frozen)]))
        rest = rest[len(prog.trainable) + len(prog.frozen):]
        state = dict(zip(opt_names, rest[:len(opt_names)])); rest = rest[len(opt_names):]
        gl = dict(zip(loop_params, rest[:len(loop_params)])); rest = rest[len(loop_params):]
        grads, err = gradients(x, gP, err, t, gl, rest[:n_rev])
        new_p, new_s = prog.update(t, grads, state, lr)
        return (*[new_p[n] for n in prog.trainable], *[new_s[n] for n in opt_names], err)

    init_opt = {k: torch.from_numpy(v) for k, v in prog.initial_opt_state().items()}
    post_in = (["input", "lr", "gP_final", "err_final"] + prog.trainable + prog.frozen + opt_names
               + [f"gfin/{n}" for n in loop_params] + [f"v0rec{j}" for j in range(n_rev)])
    post_args = ([x_ex, torch.tensor(0.01), torch.zeros(()) if event else torch.zeros_like(P_ex), torch.zeros(())] + [V[n] for n in prog.trainable + prog.frozen]
                 + [init_opt[n] for n in opt_names] + [torch.zeros_like(V[n]) for n in loop_params]
                 + [init_states[i] for i in rev_idx])
    post_out = [f"new/{n}" for n in prog.trainable] + [f"new/{n}" for n in opt_names] + ["recon_error"]

    # ---- the step cut before its update, for gradient accumulation (edgesnn-device --accumulate):
    # grad.onnx ends where f_post would update (prefix VJP, verification); apply.onnx is the update
    def f_grad_post(x, gP, err, *rest):
        t = dict(zip(prog.trainable + prog.frozen, rest[:len(prog.trainable) + len(prog.frozen)]))
        rest = rest[len(prog.trainable) + len(prog.frozen):]
        gl = dict(zip(loop_params, rest[:len(loop_params)]))
        grads, err = gradients(x, gP, err, t, gl, rest[len(loop_params):])
        return (*[grads[n] for n in prog.trainable], err)

    def f_apply(lr, *rest):
        t = dict(zip(prog.trainable, rest[:len(prog.trainable)]))
        rest = rest[len(prog.trainable):]
        state = dict(zip(opt_names, rest[:len(opt_names)]))
        grads = dict(zip(prog.trainable, rest[len(opt_names):]))
        new_p, new_s = prog.update(t, grads, state, lr)
        return (*[new_p[n] for n in prog.trainable], *[new_s[n] for n in opt_names])

    grad_post_in = [n for n in post_in if n not in ("lr", *opt_names)]
    grad_post_args = [a for n, a in zip(post_in, post_args) if n not in ("lr", *opt_names)]
    grad_names = [f"grad/{n}" for n in prog.trainable]
    apply_in = ["lr"] + prog.trainable + opt_names + grad_names
    apply_args = ([torch.tensor(0.01)] + [V[n] for n in prog.trainable] + [init_opt[n] for n in opt_names]
                  + [torch.zeros_like(V[n]) for n in prog.trainable])

    # ---- export the pieces
    import copy as _copy_mod

    _copy = _copy_mod.deepcopy
    g_pre = export_piece(f_pre, [x_ex] + [V[n] for n in prefix_read], ["input"] + prefix_read, pre_out)
    g_loss = export_piece(f_loss, [torch.zeros(B, prog.num_classes), labels_ex] + [V[n] for n in loss_params],
                           ["logit_sum_final", "labels"] + loss_params, ["loss", "correct_i64", "g_logits_t"] + loss_out[3:])
    g_post = export_piece(f_post, post_args, post_in, post_out)

    all_inputs = prog.trainable + prog.frozen
    keep_outer = set(all_inputs) | set(opt_names)
    nodes_pre, init_pre = inline_graph(g_pre, "pre/", keep_outer)
    nodes_loss, init_loss = inline_graph(g_loss, "loss/", keep_outer)
    nodes_post, init_post = inline_graph(g_post, "post/", keep_outer)

    ticks = [] if event else [helper.make_tensor("ticks", TP.FLOAT, [n_chunks, 1], np.zeros(n_chunks, np.float32).tolist())]
    S = len(stages)
    scanned = "P" if event else "ticks"
    scan_f = helper.make_node(
        "Scan", [f"v_init{i}" for i in range(S)] + ["logit_sum_init", scanned],
        [f"v_T{i}" for i in range(S)] + ["logit_sum_final"] + store_names,
        name="forward_scan", body=body_f, num_scan_inputs=1)
    zero = helper.make_tensor("zero_scalar", TP.FLOAT, [], [0.0])
    gv0 = []
    gv_nodes = []
    for i in range(S):
        gv_nodes.append(helper.make_node("Mul", [f"v_init{i}", "zero_scalar"], [f"gv_init{i}"], name=f"gv_init{i}"))
        gv0.append(f"gv_init{i}")
    gv_nodes.append(helper.make_node("Identity", ["zero_scalar"], ["gP_init"], name="gP_init") if event
                    else helper.make_node("Mul", ["P", "zero_scalar"], ["gP_init"], name="gP_init"))
    trip = helper.make_tensor("n_chunks", TP.INT64, [], [n_chunks])
    scan_b = helper.make_node(
        "Loop", ["n_chunks", ""] + [f"v_T{i}" for i in rev_idx] + gv0 + [f"gacc0/{n}" for n in loop_params]
        + ["gP_init", "zero_scalar"],
        [f"v0rec{j}" for j in range(n_rev)] + [f"gv0_{i}" for i in range(S)] + [f"gfin/{n}" for n in loop_params]
        + ["gP_final", "err_final"],
        name="backward_loop", body=body_b)
    cast_correct = helper.make_node("Identity", ["correct_i64"], ["correct"], name="correct_out")

    def vi(name, arr_shape, et=TP.FLOAT):
        return helper.make_tensor_value_info(name, et, list(arr_shape))

    inputs = ([vi(n, V[n].shape) for n in all_inputs] + [vi(n, init_opt[n].shape) for n in opt_names]
              + [vi("input", [B, *prog.sample_shape]), vi("labels", [B], TP.INT64), vi("lr", [])])
    outputs = ([vi(f"new/{n}", V[n].shape) for n in prog.trainable] + [vi(f"new/{n}", init_opt[n].shape) for n in opt_names]
               + [vi("loss", []), vi("correct", [], TP.INT64), vi("recon_error", [])])
    graph = helper.make_graph(nodes_pre + [scan_f] + nodes_loss + gv_nodes + [scan_b] + nodes_post + [cast_correct],
                              "edgesnn_step", inputs, outputs, initializer=init_pre + init_loss + init_post + ticks + [zero, trip])
    step_model = checked_model(graph)

    # ---- grad graph (the step without its update) and apply graph (the update)
    g_gpost = export_piece(f_grad_post, grad_post_args, grad_post_in, grad_names + ["recon_error"])
    nodes_gpost, init_gpost = inline_graph(g_gpost, "gpost/", keep_outer)
    grad_graph = helper.make_graph(
        [_copy(n) for n in nodes_pre + [scan_f] + nodes_loss + gv_nodes + [scan_b] + nodes_gpost + [cast_correct]],
        "edgesnn_grad", [vi(n, V[n].shape) for n in all_inputs] + inputs[len(all_inputs) + len(opt_names):-1],
        [vi(g, V[n].shape) for g, n in zip(grad_names, prog.trainable)]
        + [vi("loss", []), vi("correct", [], TP.INT64), vi("recon_error", [])],
        initializer=[_copy(i) for i in init_pre + init_loss + init_gpost + ticks + [zero, trip]])
    grad_model = checked_model(grad_graph)
    g_apply = export_piece(f_apply, apply_args, apply_in, [f"new/{n}" for n in prog.trainable + opt_names])
    g_apply.name = "edgesnn_apply"
    apply_model = checked_model(g_apply)

    # ---- eval graph: prefix + forward scan (no stores) + mean logits
    nodes_pre2, init_pre2 = [_copy(n) for n in nodes_pre], [_copy(i) for i in init_pre]
    scan_e = helper.make_node(
        "Scan", [f"v_init{i}" for i in range(S)] + ["logit_sum_init", scanned],
        [f"v_T{i}" for i in range(S)] + ["logit_sum_final"], name="forward_scan", body=body_e, num_scan_inputs=1)
    tconst = helper.make_tensor("T_float", TP.FLOAT, [], [float(T)])
    mean = helper.make_node("Div", ["logit_sum_final", "T_float"], ["logits"], name="mean_logits")
    eval_graph = helper.make_graph(nodes_pre2 + [scan_e, mean], "edgesnn_eval",
                                   [vi(n, V[n].shape) for n in all_inputs] + [vi("input", [B, *prog.sample_shape])],
                                   [vi("logits", [B, prog.num_classes])], initializer=init_pre2 + ticks + [tconst])
    eval_model = checked_model(eval_graph)
    carried = [[n, f"new/{n}"] for n in prog.trainable] + [[n, f"new/{n}"] for n in opt_names]
    return step_model, eval_model, carried, (grad_model, apply_model)


def export_onnx_step(model: nn.Module, out_dir: PathLike, batch_size: int = 32, optimizer: str = "sgd",
                     learning_rate: float = 0.01,
                     momentum: float = 0.9, weight_decay: Optional[float] = None, nesterov: bool = False,
                     input_range: Optional[Sequence[float]] = None, freeze: Optional[Sequence[str]] = None,
                     event: bool = False, chunk: Optional[int] = None, betas: Sequence[float] = (0.9, 0.999),
                     eps: float = 1e-8) -> StepManifest:
    """Write ``step.onnx``, ``eval.onnx``, ``grad.onnx``, ``apply.onnx``, ``init.npz`` and ``manifest.json`` into ``out_dir``.

    ``momentum`` / ``nesterov`` apply to ``optimizer="sgd"``, ``betas`` / ``eps`` to ``"adamw"``
    (``torch.optim.AdamW``'s defaults); ``weight_decay`` ``None`` is 0 for SGD and 0.01 for AdamW.
    Settings ``torch.optim`` refuses (a negative or non-finite momentum or weight decay, Nesterov
    without SGD momentum, betas outside [0, 1), eps <= 0) raise a one-line :class:`ExportError`.

    ``freeze``: parameter or module names (``"body.0"``) to keep fixed on the device, besides the
    parameters with ``requires_grad=False`` (:func:`~.prepare.split_trainable`). A frozen parameter
    is a graph input like the BatchNorm statistics (``manifest.frozen``): no gradient, no optimizer
    state, no update, and when nothing before the first spiking layer trains, the backward stops
    at that layer's input.

    ``input_range``: ``(low, high)`` of the input values the model was trained on (``edgesnn
    export`` passes ``(0, 1)`` for a checkpoint of a built-in image dataset); the device runner
    refuses data outside it. ``None``: unknown, not checked.

    ``event``: the model was trained on event data, one frame per time step: the graphs take
    ``x [B, T, *in_shape]`` and the manifest's ``in_shape`` is ``[T, *in_shape]`` (one sample), so
    the device data holds ``x [N, T, *in_shape]``. The layers before the first spiking layer then
    run at every step, inside the loops.

    ``chunk``: time steps per loop iteration (1, 2 or 4, dividing T; default
    :func:`~.step_program.default_chunk`: 1, or for a model with RevLIF layers from T = 64 on the
    largest of 4 and 2 dividing T): see :func:`~.step_program.build_step_program`.
    """
    if not is_float32_rate(learning_rate):
        raise ExportError(f"learning_rate: expected {RATE_RANGE}, got {learning_rate!r}")
    input_range = checked_input_range(input_range)
    out_dir = check_out_path(out_dir, "out_dir", folder=True)
    nesterov, event = check_export_flag(nesterov, "nesterov"), check_export_flag(event, "event")
    prog = build_step_program(model, batch_size, optimizer, momentum, weight_decay, nesterov, betas=betas, eps=eps,
                              freeze=freeze, event=event, chunk=chunk)
    recon_tolerance = step_recon_tolerance(prog.stages, prog.timesteps)  # refuses before anything is written
    step_model, eval_model, carried, (grad_model, apply_model) = build_graphs(prog)
    for m in (step_model, eval_model, grad_model):  # the fresh states' fills: a few bytes each, not [B, ...]
        fills_as_constant_of_shape(m.graph)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / STEP_MODEL, step_model.SerializeToString())
    atomic_write_bytes(out_dir / STEP_EVAL_MODEL, eval_model.SerializeToString())
    atomic_write_bytes(out_dir / STEP_GRAD_MODEL, grad_model.SerializeToString())
    atomic_write_bytes(out_dir / STEP_APPLY_MODEL, apply_model.SerializeToString())
    arrays = {n: prog.values[n].numpy().astype(np.float32) for n in prog.trainable + prog.frozen}
    arrays.update(prog.initial_opt_state())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out_dir / STEP_INIT, buf.getvalue())
    cfg = dict(getattr(model, "config", {}) or {})
    manifest = StepManifest(
        model_config=encode_config(cfg), batch_size=prog.batch_size, in_shape=list(prog.sample_shape),
        num_classes=prog.num_classes, timesteps=prog.timesteps, trainable=list(prog.trainable), frozen=list(prog.frozen),
        optimizer_state=list(prog.opt_state), carried=carried, optimizer=prog.optimizer,
        hyperparameters=dict(prog.hparams), learning_rate=float(learning_rate), chunk=prog.chunk,
        neurons=[{"layer": st.name, "kind": st.kind, **({"mode": st.params.mode, "groups": st.params.groups}
                                                         if st.kind == "revlif" else {})} for st in prog.stages],
        recon_tolerance=recon_tolerance,
        input_range=input_range,
        edgesnn_version=__version__,
    )
    write_step_manifest(out_dir, manifest)
    return manifest
