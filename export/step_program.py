"""The training step the ONNX step graph runs (:mod:`.onnx_step`), as plain PyTorch.

:func:`build_step_program` reads a model (:mod:`.step_layers`); :class:`StepProgram` runs one time
step forward and backward with the project's own VJPs and updates the parameters;
:func:`reference_step` runs a whole step eagerly: what the exported graph must reproduce.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..functional.checks import is_real_number
from ..functional.lif import lif_charge, lif_fire_reset_values, lif_step_vjp
from ..functional.revlif import RevLIFParams, revlif_step, revlif_step_backward
from ..memory_guard import check_fits_in_memory, shape_bytes
from .prepare import ExportError, export_copy, refuse_active_dropout, split_trainable
from .step_layers import (Leaf, Stage, block_forward, block_vjp, grouped, initial_state, node_input, plan_layers,
                          record_shapes)

__all__ = ["CHUNKS", "LONG_T", "STEP_OPTIMIZERS", "StepProgram", "default_chunk", "build_step_program", "reference_step"]

STEP_OPTIMIZERS = ("sgd", "adamw")
#: Time steps per loop iteration the step graph takes (a RevLIF layer packs 2 bits per step into a byte).
CHUNKS = (1, 2, 4)


# ----------------------------------------------------------------------------- the program


@dataclass
class StepProgram:
    """The traced-to-be pieces of a training step for one model (see the module docstring)."""

    model: nn.Module
    prefix: List[Leaf]
    stages: List[Stage]
    head: List[Leaf]
    batch_size: int
    timesteps: int
    chunk: int
    trainable: List[str]  # parameters the step updates
    frozen: List[str]  # tensors it reads but never updates: BatchNorm statistics, frozen parameters
    values: Dict[str, torch.Tensor]
    optimizer: str
    hparams: Dict[str, float]
    in_shape: Tuple[int, ...]  # one frame's shape
    num_classes: int
    event: bool = False  # event data: one frame per time step, x [B, T, *in_shape] (no prefix: it runs per step)

    @property
    def sample_shape(self) -> Tuple[int, ...]:
        """One sample of the step's input: ``in_shape`` (repeated over T), or ``(T, *in_shape)`` for event data."""
        return (self.timesteps, *self.in_shape) if self.event else tuple(self.in_shape)

    @property
    def opt_state(self) -> List[str]:
        """Names of the optimizer state tensors the step carries (AdamW's step and moments, SGD's momentum)."""
        if self.optimizer == "adamw":
            return ["optimizer.step"] + [f"{n}.exp_avg" for n in self.trainable] + [f"{n}.exp_avg_sq" for n in self.trainable]
        if self.hparams.get("momentum", 0.0) != 0.0:
            return [f"{n}.momentum_buffer" for n in self.trainable]
        return []

    def initial_opt_state(self) -> Dict[str, np.ndarray]:
        """Zeros for every :attr:`opt_state` tensor (float32; a parameter's shape, ``[]`` for the step count)."""
        out = {}
        for name in self.opt_state:
            if name == "optimizer.step":
                out[name] = np.zeros((), np.float32)
            else:
                base = name.rsplit(".", 1)[0]
                out[name] = np.zeros(tuple(self.values[base].shape), np.float32)
        return out

    # -- pieces as plain torch functions ------------------------------------------------

    def loop_names(self) -> List[str]:
        """Trainable parameters of the layers inside the time loop (stages and head)."""
        names = []
        for st in self.stages:
            for leaf in st.leaves:
                names += leaf.params
        for leaf in self.head:
            names += leaf.params
        return names

    @property
    def prefix_trains(self) -> bool:
        """Whether a layer before the first spiking node has a trainable parameter."""
        return any(leaf.params for leaf in self.prefix)

    def trains_below(self, li: int) -> bool:
        """Whether a layer below stage ``li``'s block (the prefix, or a block of a lower stage;
        ``li = len(stages)``: below the head) has a trainable parameter, i.e. whether that block's
        VJP must return its input's gradient. Frozen lower layers need none: their blocks skip
        it, and the spiking layers below get a zero gradient (their state still walks back)."""
        return self.prefix_trains or any(leaf.params for st in self.stages[:li] for leaf in st.leaves)

    def read_names(self, leaves: Sequence[Leaf]) -> List[str]:
        """Names of the parameters and buffers ``leaves`` read."""
        return [n for leaf in leaves for n in leaf.params + leaf.buffers]

    def loop_read_names(self) -> List[str]:
        """Names of the tensors the time loop reads (every stage's layers and the head)."""
        names = []
        for st in self.stages:
            names += self.read_names(st.leaves)
        return names + self.read_names(self.head)

    def forward_step(
        self, t: Dict[str, torch.Tensor], P: torch.Tensor, states: List[torch.Tensor]
    ) -> Tuple[
        torch.Tensor, List[torch.Tensor], List[Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]]
    ]:
        """One time step from ``P [B, ...]`` (the first stage's input at this step): ``(logits [B, classes],
        new states, kept values per stage)``. States: LIF ``[B, ...]`` (the node input's shape), RevLIF
        grouped ``[B, n, M]``; kept: LIF ``h [B, ...]``, RevLIF ``(spike, grid bit | None)`` float 0/1
        ``[B, n, M]``."""
        out = P
        new_states, kept = [], []
        for st, v in zip(self.stages, states):
            _, x = block_forward(st.leaves, t, out)
            if st.kind == "lif":
                h = lif_charge(x, v, st.params)
                s, u = lif_fire_reset_values(h, st.params)
                new_states.append(u)
                kept.append(h)
                out = s
            else:
                p: RevLIFParams = st.params
                xg = node_input(st, x)
                y, v_new, bits = revlif_step(xg, v, p)
                spike = (y - p.alpha * xg >= 0.5).to(y.dtype)
                new_states.append(v_new)
                kept.append((spike, None if bits is None else bits.to(y.dtype)))
                out = y.reshape(x.shape)
        _, logits = block_forward(self.head, t, out)
        return logits, new_states, kept

    def backward_step(
        self, t: Dict[str, torch.Tensor], P: torch.Tensor, g_logits_t: torch.Tensor, v_rev: List[torch.Tensor],
        gv: List[torch.Tensor], kept: List[Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]]]],
        err: torch.Tensor, defer: bool = False,
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], Dict[str, object], Optional[torch.Tensor], torch.Tensor]:
        """Back-propagate one time step (top-down). ``P [B, ...]``, ``g_logits_t [B, classes]``; ``kept``:
        per stage, as :meth:`forward_step` returns it; ``v_rev``: RevLIF states after the step (one per
        RevLIF stage, ``[B, n, M]``); ``gv``: per stage, the state gradients (the states' shapes); ``err``:
        the largest RevLIF input reconstruction error ``|x_rec - x|`` so far (a 0-d tensor).
        Returns ``(v_rev before the step, gv before the step, {param: grad}, grad of P [B, ...] or None, err)``."""
        # recompute the stateless layers (and the RevLIF outputs) bottom-up
        out = P
        acts = []
        for st, kv in zip(self.stages, kept):
            inputs, x = block_forward(st.leaves, t, out)
            if st.kind == "lif":
                out_next = (kv >= st.params.v_threshold).to(kv.dtype)
                acts.append((inputs, x, None))
            else:
                p: RevLIFParams = st.params
                xg = node_input(st, x)
                spike, _ = kv
                y = p.alpha * xg + spike
                acts.append((inputs, x, (xg, y)))
                out_next = y.reshape(x.shape)
            out = out_next
        head_inputs, _ = block_forward(self.head, t, out)
        g, grads = block_vjp(self.head, t, head_inputs, g_logits_t, need_gx=self.trains_below(len(self.stages)),
                             defer=defer)
        new_v, new_gv = list(v_rev), list(gv)
        ri = sum(1 for st in self.stages if st.kind == "revlif")
        for li in range(len(self.stages) - 1, -1, -1):
            st, kv, (inputs, x, rev) = self.stages[li], kept[li], acts[li]
            if g is None:  # no layer below the block above trains: a zero gradient; the state still walks back
                g = torch.zeros_like(x) if st.kind == "lif" else torch.zeros_like(rev[1]).reshape(x.shape)
            if st.kind == "lif":
                gx, new_gv[li] = lif_step_vjp(kv, g, gv[li], st.params)
            else:
                ri -= 1
                p = st.params
                xg, y = rev
                _, bit = kv
                x_rec, v_prev, gxg, new_gv[li] = revlif_step_backward(
                    y, v_rev[ri], bit, grouped(g, p.groups), gv[li], p)
                err = torch.maximum(err, (x_rec - xg).abs().max())
                new_v[ri] = v_prev
                gx = gxg.reshape(x.shape)
            g, gl = block_vjp(st.leaves, t, inputs, gx, need_gx=self.trains_below(li), defer=defer)
            grads.update(gl)
        return new_v, new_gv, grads, g, err

    def update(
        self, t: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor],
        lr: Union[float, torch.Tensor],
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """``(new params, new optimizer state)`` as ``torch.optim.SGD`` / ``torch.optim.AdamW`` compute them."""
        hp = self.hparams
        new_p, new_s = {}, {}
        if self.optimizer == "adamw":
            b1, b2, eps, wd = hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]
            step = state["optimizer.step"] + 1.0
            new_s["optimizer.step"] = step
            # the bias corrections in float64, as torch.optim.AdamW computes them (Python floats):
            # in float32, 1 - 0.999**1 is 1.3e-5 off, which scaled every early update by 6e-6
            # (shape [1]: the ONNX exporter casts 0-d operands of Pow/Div back to float32)
            s64 = step.reshape(1).to(torch.float64)
            bc1 = 1.0 - torch.pow(torch.tensor([b1], dtype=torch.float64), s64)
            bc2 = 1.0 - torch.pow(torch.tensor([b2], dtype=torch.float64), s64)
            lr64 = (lr if torch.is_tensor(lr) else torch.tensor(float(lr))).reshape(1).to(torch.float64)
            step_size = (lr64 / bc1).to(torch.float32).reshape(())
            bc2_sqrt = torch.sqrt(bc2).to(torch.float32).reshape(())
            for n in self.trainable:
                p, g = t[n], grads[n]
                p = p * (1.0 - lr * wd)
                m = state[f"{n}.exp_avg"]
                m = m + (g - m) * (1.0 - b1)
                v = state[f"{n}.exp_avg_sq"] * b2 + g * g * (1.0 - b2)
                denom = torch.sqrt(v) / bc2_sqrt + eps
                new_p[n] = p - step_size * (m / denom)
                new_s[f"{n}.exp_avg"], new_s[f"{n}.exp_avg_sq"] = m, v
            return new_p, new_s
        mom, wd, nesterov = hp.get("momentum", 0.0), hp.get("weight_decay", 0.0), bool(hp.get("nesterov", 0.0))
        for n in self.trainable:
            p, d = t[n], grads[n]
            if wd:
                d = d + wd * p
            if mom:
                buf = state[f"{n}.momentum_buffer"] * mom + d
                new_s[f"{n}.momentum_buffer"] = buf
                d = d + mom * buf if nesterov else buf
            new_p[n] = p - lr * d
        return new_p, new_s

    def loss(self, logit_sum: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss [], correct [] int64, gradient of the loss per step's logits [B, classes])``: cross-entropy
        (batch mean) of the mean logits ``logit_sum / T`` (``logit_sum [B, classes]``, ``labels [B]`` int64)."""
        logits = logit_sum / float(self.timesteps)
        logp = torch.log_softmax(logits, 1)
        onehot = F.one_hot(labels, self.num_classes).to(logits.dtype)
        B = float(self.batch_size)
        loss = -(logp * onehot).sum() / B
        g = (torch.exp(logp) - onehot) / B
        correct = (logits.argmax(1) == labels).to(torch.int64).sum()
        return loss, correct, g / float(self.timesteps)

    def eager_step(
        self, x: torch.Tensor, labels: torch.Tensor, lr: Union[float, torch.Tensor], t: Dict[str, torch.Tensor],
        state: Dict[str, torch.Tensor],
    ) -> Tuple[
        Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]
    ]:
        """The whole step in eager PyTorch with the same functions (used to check the exported graph).
        ``x``: ``[B, *in_shape]``, or ``[B, T, *in_shape]`` for event data (frame ``t`` at step ``t``)."""
        P_in, P = block_forward(self.prefix, t, x)
        states = [initial_state(st) for st in self.stages]
        logit_sum = 0.0
        kept_all = []
        for step in range(self.timesteps):
            logits, states, kept = self.forward_step(t, x[:, step] if self.event else P, states)
            logit_sum = logit_sum + logits
            kept_all.append(kept)
        loss, correct, g_t = self.loss(logit_sum, labels)
        v_rev = [s for st, s in zip(self.stages, states) if st.kind == "revlif"]
        gv = [torch.zeros_like(s) for s in states]
        err = torch.zeros(())
        gacc: Dict[str, torch.Tensor] = {}
        gP = torch.zeros_like(P)
        for step in range(self.timesteps - 1, -1, -1):
            v_rev, gv, grads, g, err = self.backward_step(t, x[:, step] if self.event else P, g_t, v_rev, gv,
                                                          kept_all[step], err)
            for k, val in grads.items():
                gacc[k] = gacc[k] + val if k in gacc else val
            if g is not None and not self.event:
                gP = gP + g
        _, pg = block_vjp(self.prefix, t, P_in, gP, need_gx=False)
        gacc.update(pg)
        new_p, new_s = self.update(t, gacc, state, lr)
        return new_p, new_s, loss, correct, err, gacc


#: From this T on, a model with RevLIF layers steps in chunks of 4 (or 2) time steps by default.
LONG_T = 64


def default_chunk(T: int, revlif: bool) -> int:
    """Time steps per loop iteration of the step graph by default.

    One step per iteration holds the fewest temporaries: the loop bodies unroll their K steps, and
    ONNX Runtime then keeps more of them alive at once (VGG-11, T = 4, batch 64, one thread: peak
    RSS LIF 1627 -> 1132 MB, RevLIF 1830 -> 1332 MB from K = 4 to 1; ``tools/bench_device_accumulate.py
    --chunk``). LIF stores the same ``h`` whatever K is. A RevLIF layer stores one byte per neuron per
    chunk (2 bits per step at K = 4, 8 at K = 1), which outweighs that at long sequences: from
    :data:`LONG_T` steps on it takes the largest of 4 and 2 dividing T."""
    if revlif and T >= LONG_T:
        return 4 if T % 4 == 0 else (2 if T % 2 == 0 else 1)
    return 1


def _check_hparams(optimizer: str, momentum, weight_decay, nesterov, betas, eps) -> None:
    """One-line :class:`ExportError` for optimizer settings ``torch.optim`` would refuse (the graph
    would otherwise bake them in: a NaN momentum trains to NaN, a negative decay grows the weights)."""
    def bad(name, value, what):
        raise ExportError(f"{name}: expected {what}, got {value!r}")

    if not (is_real_number(momentum) and 0 <= momentum < 1):  # (no None: its default is 0.9, not 0)
        bad("momentum", momentum, "a number in [0, 1) (0: none; from 1 on the momentum buffer grows without bound)")
    if weight_decay is not None and not (is_real_number(weight_decay) and weight_decay >= 0):
        bad("weight_decay", weight_decay, "a finite number >= 0 (None: the optimizer's default)")
    if nesterov and (optimizer != "sgd" or not momentum):
        raise ExportError(f"nesterov: needs optimizer 'sgd' with momentum > 0 (got optimizer {optimizer!r}, momentum "
                          f"{momentum!r})")
    # (AdamW's settings are checked with SGD too: a value given there is a mistake, not something to ignore)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(is_real_number(b) and 0 <= b < 1 for b in betas)):
        bad("betas", betas, "two numbers in [0, 1)")
    if not (is_real_number(eps) and eps > 0):
        bad("eps", eps, "a finite number > 0")


#: bytes an ONNX graph (a protobuf message) may hold at most
ONNX_LIMIT = 2**31 - 1


def _check_sizes(T: int, chunk: int, batch_size: int, in_shape: Tuple[int, ...], event: bool) -> None:
    """One :class:`ExportError` line for sizes the export cannot build, before any is allocated:
    a static input's graph holds one tick per chunk (``T / chunk`` float32 values, built as a Python
    list first, 36 bytes each) and must stay under protobuf's 2 GiB; the example input
    (``[batch_size, T, *in_shape]`` float32 for event data, else ``[batch_size, *in_shape]``) and the
    tick list must fit in this machine's physical memory."""
    n_chunks = T // chunk
    if not event and 4 * n_chunks > ONNX_LIMIT:
        raise ExportError(f"timesteps: the model's T = {T} in chunks of {chunk} makes {n_chunks} loop iterations; the "
                          f"step graph's tick constant ({4 * n_chunks} bytes) would pass ONNX's 2 GiB limit on a graph "
                          f"(at most {ONNX_LIMIT // 4 * chunk} time steps); a model_config timesteps this large was "
                          "edited or damaged")
    what = (f"batch_size {batch_size} with the model's T = {T}: the example input [B, T, "
            f"{', '.join(map(str, in_shape))}] float32" if event else
            f"batch_size {batch_size}: the example input [B, {', '.join(map(str, in_shape))}] float32")
    hint = "lower --batch-size (the device runner's batch), or export on a machine with more memory"
    check_fits_in_memory(shape_bytes((batch_size, *((T,) if event else ()), *in_shape)), what, hint, ExportError)
    if not event:
        check_fits_in_memory(36 * n_chunks, f"timesteps: the model's T = {T} in chunks of {chunk}: the step graph's "
                             f"{n_chunks} loop ticks (a Python list of floats, 36 bytes each)",
                             "a model_config timesteps this large was edited or damaged", ExportError)


def _check_widest_layer(prog: StepProgram, batch_size: int) -> None:
    """One :class:`ExportError` line when the widest layer input at ``batch_size`` (one float32
    ``[B, *shape]`` tensor, which the graphs' tracing makes) exceeds this machine's physical memory."""
    leaves = [leaf for leaves in [prog.prefix, prog.head] + [st.leaves for st in prog.stages] for leaf in leaves]
    widest = max(leaves, key=lambda leaf: shape_bytes(leaf.in_shape), default=None)
    if widest is not None:
        check_fits_in_memory(shape_bytes((batch_size, *widest.in_shape)),
                             f"batch_size {batch_size}: layer {widest.name}'s input [B, "
                             f"{', '.join(map(str, widest.in_shape))}] float32",
                             "lower --batch-size (the device runner's batch), or export on a machine with more memory",
                             ExportError)


def build_step_program(model: nn.Module, batch_size: int, optimizer: str = "sgd", momentum: float = 0.9,
                       weight_decay: Optional[float] = None, nesterov: bool = False,
                       betas: Sequence[float] = (0.9, 0.999),
                       eps: float = 1e-8, freeze: Optional[Sequence[str]] = None, event: bool = False,
                       chunk: Optional[int] = None) -> StepProgram:
    """Read ``model`` into a :class:`StepProgram` (``freeze``: see :func:`~.prepare.split_trainable`).

    ``event``: the input holds one frame per time step (``[B, T, *in_shape]``, event data); the
    layers before the first spiking layer then run at every step, as the first block.

    ``chunk``: time steps per loop iteration, 1, 2 or 4 dividing T (``None``: :func:`default_chunk`)."""
    if optimizer not in STEP_OPTIMIZERS:
        raise ExportError(f"optimizer: expected one of {STEP_OPTIMIZERS}, got {optimizer!r}")
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ExportError(f"batch_size: expected an integer >= 1, got {batch_size!r}")
    _check_hparams(optimizer, momentum, weight_decay, nesterov, betas, eps)
    trainable, fixed = split_trainable(model, freeze)
    refuse_active_dropout(model, "onnx-step")
    clone = export_copy(model)
    prefix, stages, head = plan_layers(clone)
    if event:  # no input repeats over T: the prefix is the first spiking layer's block, run per step
        stages[0].leaves, prefix = prefix + stages[0].leaves, []
    T = int(clone.timesteps)
    values = {k: v.detach().clone().float() for k, v in clone.state_dict().items()}
    used = set()
    for leaves in [prefix, head] + [st.leaves for st in stages]:
        for leaf in leaves:
            used.update(leaf.params)
            leaf.buffers = [n for n in leaf.params if n in fixed] + leaf.buffers  # read, never updated
            leaf.params = [n for n in leaf.params if n not in fixed]
    missing = sorted(set(trainable + fixed) - used)
    if missing:
        raise ExportError(f"onnx-step: parameters {missing} belong to layers without an explicit VJP")
    frozen = [n for leaves in [prefix, head] + [st.leaves for st in stages] for leaf in leaves for n in leaf.buffers]
    wd = (0.01 if optimizer == "adamw" else 0.0) if weight_decay is None else float(weight_decay)
    hp = {"weight_decay": wd}
    if optimizer == "adamw":
        hp.update(beta1=float(betas[0]), beta2=float(betas[1]), eps=float(eps))
    else:
        hp.update(momentum=float(momentum), nesterov=float(bool(nesterov)))
    if chunk is None:
        chunk = default_chunk(T, any(st.kind == "revlif" for st in stages))
    elif isinstance(chunk, bool) or not isinstance(chunk, numbers.Integral) or chunk not in CHUNKS or T % chunk:
        # an integer only: 4.0 == 4 passed the membership test, then T // 4.0 crashed the graph build
        raise ExportError(f"chunk: expected 1, 2 or 4 time steps per loop iteration, dividing T = {T} "
                          f"({', '.join(str(k) for k in CHUNKS if T % k == 0)}), got {chunk!r}")
    chunk = int(chunk)
    _check_sizes(T, chunk, batch_size, tuple(clone.in_shape), event)
    cfg = dict(getattr(model, "config", {}) or {})
    prog = StepProgram(clone, prefix, stages, head, batch_size, T, chunk, trainable, frozen, values, optimizer, hp,
                       tuple(clone.in_shape), int(cfg.get("num_classes", 0)) or 0, bool(event))
    # shapes: one eager pass on one sample (the VJPs read their spatial sizes from it as constants)
    with torch.no_grad():
        out = record_shapes(prefix, values, torch.zeros(1, *clone.in_shape))
        for i, st in enumerate(stages):
            xi = record_shapes(st.leaves, values, out)
            st.x_shape = (batch_size, *xi.shape[1:])
            out = xi
        logits = record_shapes(head, values, out)
    _check_widest_layer(prog, batch_size)
    if logits.dim() != 2:  # the loss takes one label per sample: [B, C, H, W] or [B, S, C] logits crashed the build
        last = head[-1].name if head else stages[-1].name
        raise ExportError(f"onnx-step: the model's output (after {last}) is [B, {', '.join(map(str, logits.shape[1:]))}] "
                          f"per time step; expected logits [B, classes] (end the body with Flatten and Linear)")
    prog.num_classes = int(logits.shape[1])
    return prog


def reference_step(
    prog: StepProgram, x: np.ndarray, labels: np.ndarray, lr: float, params: Dict[str, np.ndarray],
    state: Dict[str, np.ndarray],
) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], float, int, float]:
    """Eager version of the step (numpy in, numpy out) for checks: ``x [B, *in_shape]`` (event data:
    ``[B, T, *in_shape]``), ``labels [B]`` int64. Returns ``(new params, new optimizer state, loss,
    correct, reconstruction error)``."""
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}
    s = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    with torch.no_grad():
        new_p, new_s, loss, correct, err, _ = prog.eager_step(torch.from_numpy(x), torch.from_numpy(labels), float(lr), t, s)
    return ({k: v.numpy() for k, v in new_p.items()}, {k: v.numpy() for k, v in new_s.items()}, float(loss), int(correct),
            float(err))
