"""``nn.Module`` wrappers of the LIF and RevLIF nodes: thin shells over the functional core.

Step modes and state (see README, "Coming from SpikingJelly"):

* ``step_mode="m"`` (the default): input ``[T, B, ...]``, output ``[T, B, ...]``.
* ``step_mode="s"``: input ``[B, ...]`` (one time step), output ``[B, ...]``.

``stateful`` says whether the membrane state ``.v`` is carried from one call to the next (until
:meth:`~_SpikingNode.reset`, or SpikingJelly's ``functional.reset_net(net)``). The default,
``stateful=None``, carries it in single-step mode (a one-step call needs the previous step's state)
and starts every multi-step call from a fresh state (``v_reset``), as edgesnn always has. Pass
``stateful=True`` to stream a long sequence through a multi-step node in chunks, as SpikingJelly's
multi-step nodes do. A carried state keeps its autograd graph, so gradients flow across calls
within one graph; :meth:`~_SpikingNode.detach` cuts it (truncated BPTT), ``reset`` drops it.
Reading ``.v`` after a stateless multi-step call warns once per node (SpikingJelly's ``.v`` would
hold the final state; edgesnn's is the fresh value).

Changing the mode of a node that holds a state: ``.v`` is always the state the next call starts
from. A multi-step call of a stateless node (``stateful=None``, e.g. after
``functional.set_step_mode(net, 'm')``) that holds a state carried from single-step calls starts
from it, as SpikingJelly does, and keeps no final state afterwards (``.v`` is then the fresh value).
A state carried by a multi-step ``stateful=True`` node continues into single-step calls. Setting
``stateful=False`` on a node that holds a state drops it, with a one-line warning.

:class:`ParametricLIF` (learnable tau) lives in :mod:`edgesnn.nn.parametric` and :class:`RevLIF` in
:mod:`edgesnn.nn.reversible`; both are re-exported here.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

from ..functional.checks import NonFiniteInputError, all_finite, autocast_on, check_finite as _check_finite, check_flag, eager
from ..functional.lif import LIFParams
from ..kernels import custom_ops, dispatch
from . import checkpoint_guard
from ._compat import LIFAttributes, resolve_surrogate

__all__ = ["LIF", "RevLIF", "ParametricLIF", "STEP_MODES"]

STEP_MODES = ("s", "m")
_State = Union[None, float, torch.Tensor]


class _SpikingNode(nn.Module):
    """Step mode, carried state ``.v``, ``reset()`` and ``detach()`` shared by the spiking nodes.

    Subclasses implement :meth:`_run` (``x_seq [T, B, ...], v0 [B, ...] | None -> (out_seq, v_T)``)
    and :meth:`_fresh_value` (the float a fresh state is filled with).
    """

    def _init_node(self, step_mode: Optional[str], stateful: Optional[bool], check_finite: bool,
                   store_v_seq: bool = False) -> None:
        self.store_v_seq = store_v_seq
        self._stateful: Optional[bool] = None
        self._no_final_state = False  # a stateless multi-step call ran since the last reset (see .v)
        self._warned_no_final_state = False
        self.step_mode = "m" if step_mode is None else step_mode
        self._step_mode_implicit = step_mode is None  # a 4-D input then warns once (see forward)
        self.stateful = stateful
        self.check_finite = check_finite  # checked by the property (a string such as 'no' would be true)
        self._v: _State = None

    # ------------------------------------------------------------------ configuration

    @property
    def step_mode(self) -> str:
        """``"m"``: calls take ``[T, B, ...]``; ``"s"``: calls take one step ``[B, ...]``."""
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in STEP_MODES:
            raise ValueError(f"step_mode: expected 's' (one step [B, ...]) or 'm' (multi-step [T, B, ...]), got {value!r}")
        if value == "s" and getattr(self, "_stateful", None) is False:
            raise ValueError("step_mode='s' needs the state carried between calls; it cannot be combined with stateful=False")
        self._step_mode = value
        self._step_mode_implicit = False

    @property
    def stateful(self) -> bool:
        """Whether ``.v`` is carried across calls (``None`` at construction: only in step_mode 's').

        A state held when this turns False by a switch to step_mode 'm' is used by the next call (then
        dropped); setting ``stateful=False`` drops it at once, with a warning."""
        return self._step_mode == "s" if self._stateful is None else self._stateful

    @stateful.setter
    def stateful(self, value: Optional[bool]) -> None:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"stateful: expected True, False or None (carry state in step_mode 's' only), got {value!r}")
        if value is False and self._step_mode == "s":
            raise ValueError("stateful=False cannot be combined with step_mode='s' (each call is one step and needs the previous state)")
        self._stateful = value
        if value is False and getattr(self, "_v", None) is not None:
            self._drop_held_state()

    def _drop_held_state(self) -> None:
        """``stateful=False`` on a node holding a state: reset it, with a one-line warning (every call now starts fresh)."""
        self._v = None
        warnings.warn(
            f"{type(self).__name__}.stateful=False: dropped the carried state .v, every call now starts from the fresh value "
            f"{self._fresh_value()}; call reset() before setting stateful=False to silence this", stacklevel=3)

    @property
    def backend(self) -> str:
        """The backend name the node runs (see :mod:`edgesnn.kernels.dispatch`); assignments are
        checked as the constructor checks it (an unknown name used to fail only at the next call)."""
        try:
            return self._backend
        except AttributeError:  # a node pickled before this was a property kept it as a plain attribute
            return vars(self).get("backend", "auto")

    @backend.setter
    def backend(self, value: str) -> None:
        self._check_backend(value)
        self._backend = value

    def _check_backend(self, value: str) -> None:
        """Raise ``ValueError`` (one line naming ``backend``) for a backend this node cannot run."""
        dispatch.resolve_backend(value, torch.empty(0))

    @property
    def check_finite(self) -> bool:
        """Whether each call scans its input for NaN/Inf (one pass); assignments are checked as the
        constructor checks it (True / False or 1 / 0: a string such as ``'no'`` would be true)."""
        try:
            return self._check_finite
        except AttributeError:  # a node pickled before this was a property kept it as a plain attribute
            return bool(vars(self).get("check_finite", False))

    @check_finite.setter
    def check_finite(self, value: bool) -> None:
        self._check_finite = check_flag(value, "check_finite")

    @property
    def store_v_seq(self) -> bool:
        """Always False: edgesnn nodes do not keep the membrane history; setting True raises, as the constructor does."""
        return False

    @store_v_seq.setter
    def store_v_seq(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"store_v_seq: expected False (True is not available), got {value!r}")
        if value:
            raise ValueError("store_v_seq: edgesnn nodes do not keep the membrane history (not keeping it is what saves "
                             "the memory); use step_mode='s' or stateful=True and read .v after each call")

    @property
    def v_seq(self) -> None:
        """Always None (SpikingJelly's value with ``store_v_seq=False``): the membrane history is not kept."""
        return None

    # ------------------------------------------------------------------ state

    def _fresh_value(self) -> float:
        raise NotImplementedError

    @property
    def v(self) -> Union[float, torch.Tensor]:
        """The membrane state the next call starts from: a ``[B, ...]`` tensor once a stateful call ran,
        else the fresh value (a float, ``v_reset`` or 0 for a soft reset), as in SpikingJelly.

        A stateless node (multi-step, ``stateful`` not True) keeps no final state, where SpikingJelly's
        ``.v`` holds it: reading ``.v`` after such a call (before ``reset()``) warns once per node."""
        if self._v is None:
            if getattr(self, "_no_final_state", False) and not getattr(self, "_warned_no_final_state", False):
                self._warned_no_final_state = True
                warnings.warn(
                    f"{type(self).__name__}.v: this multi-step node keeps no final state (each call starts fresh), so .v is "
                    f"the fresh value {self._fresh_value()}, not the last call's state; construct it with stateful=True to "
                    "keep the final state in .v (carried into the next call until reset())", stacklevel=2)
            return self._fresh_value()
        return self._v

    @v.setter
    def v(self, value: Union[float, torch.Tensor]) -> None:
        is_float = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not isinstance(value, torch.Tensor) and not is_float:
            raise TypeError(f"v: expected a tensor [B, ...] or a float, got {type(value).__name__}")
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            raise TypeError(f"v: expected a floating-point tensor [B, ...] (the input's dtype), got {value.dtype}")
        fresh = is_float and float(value) == self._fresh_value()
        if not self.stateful and not fresh:  # setting the fresh value (SpikingJelly's reset) is fine
            raise ValueError(
                f"v: this {type(self).__name__} starts every call from a fresh state (stateful=False), so a set state "
                f"would be ignored; construct it with stateful=True (or step_mode='s') to set or carry .v"
            )
        self._v = value if isinstance(value, torch.Tensor) else (None if fresh else float(value))
        checkpoint_guard.record_state_task(self, checkpoint_guard.graph_task())
        self._no_final_state = False

    def reset(self) -> None:
        """Back to the fresh state; drops the carried state and its autograd graph.

        ``spikingjelly.activation_based.functional.reset_net(net)`` calls this on every node.
        """
        self._v = None
        self._no_final_state = False

    def detach(self) -> None:
        """Keep the carried state's value but cut its autograd graph (truncated BPTT;
        SpikingJelly's ``functional.detach_net(net)`` calls this)."""
        if isinstance(self._v, torch.Tensor):
            self._v = self._v.detach()

    def __getstate__(self) -> dict:
        # deepcopy / pickle: a carried state keeps its value, not its autograd graph (which cannot be copied:
        # deepcopy of a non-leaf tensor raised torch's 'Only Tensors created explicitly by the user' error)
        state = super().__getstate__()
        v = state.get("_v")
        if isinstance(v, torch.Tensor) and v.grad_fn is not None:
            state = dict(state, _v=v.detach())
        return state

    def _apply(self, fn, *args: Any, **kwargs: Any):
        # .to() / .double() / .cuda() move a carried state with the module, as SpikingJelly's memories
        if isinstance(self._v, torch.Tensor):
            self._v = fn(self._v)
        return super()._apply(fn, *args, **kwargs)

    def _initial_state(self, x_seq: torch.Tensor) -> Optional[torch.Tensor]:
        v = self._v
        if v is None:
            return None
        if isinstance(v, float):
            return torch.full_like(x_seq[0], v)
        self._check_held_state(v, x_seq)
        # a state carried out of inference_mode: autograd cannot save an inference tensor (the numba
        # and CUDA LIF ops save v0), so it is copied once. Dynamo cannot trace is_inference(), so a
        # compiled call that records gradients copies every held state ([B, ...], one step's bytes)
        if torch.compiler.is_compiling():
            if torch.is_grad_enabled():
                v = custom_ops.state_copy(v)  # (a plain clone, the compiler would recompute from v)
        elif v.is_inference() and not torch.is_inference_mode_enabled():
            v = v.clone()
        return v

    def _check_held_state(self, v: torch.Tensor, x_seq: torch.Tensor) -> None:
        """One line per cause: a different shape is a new batch (reset), a different dtype or device a cast."""
        name, step = type(self).__name__, tuple(x_seq.shape[1:])
        if tuple(v.shape) != step:
            raise ValueError(
                f"{name}: the carried state .v has shape {tuple(v.shape)} but this input step is {step}; call reset() "
                f"(or functional.reset_net(net)) before a new batch"
            )
        if v.dtype != x_seq.dtype or v.device != x_seq.device:
            cast = (" (inside torch.autocast the node casts a float16/bfloat16 input to float32; a state carried from "
                    "calls outside it stays in their dtype)" if x_seq.dtype == torch.float32 and v.dtype in _AUTOCAST_DTYPES
                    and autocast_on(x_seq) else "")
            raise TypeError(
                f"{name}: the carried state .v is {v.dtype} on {v.device} but the input is {x_seq.dtype} on {x_seq.device}"
                f"{cast}; assign .v in the input's dtype and device (node.v = node.v.to(x)) or move the module with .to(), "
                "which moves .v"
            )

    def _take_held_state(self, x_seq: torch.Tensor) -> Optional[torch.Tensor]:
        """For a stateless call: the state the node holds (carried from step_mode 's' calls), which this
        call starts from, as SpikingJelly does; the node holds none afterwards (the call keeps no final state)."""
        if self._v is None:
            return None
        v0 = self._initial_state(x_seq)
        self._v = None
        return v0

    # ------------------------------------------------------------------ forward

    def _run(self, x_seq: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, ...] -> [T, B, ...]`` in step_mode ``"m"``; ``[B, ...] -> [B, ...]`` in ``"s"``."""
        single = self._step_mode == "s"
        if x is None or isinstance(x, (list, tuple, int, float, str, bytes, dict)) or type(x).__module__ == "numpy":  # (proxies pass)
            raise TypeError(f"{type(self).__name__}: expected a torch.Tensor input, got {type(x).__name__}")
        if isinstance(x, torch.Tensor):
            if not single and x.dim() == 4 and getattr(self, "_step_mode_implicit", False):
                self._step_mode_implicit = False  # once per node
                warnings.warn(
                    f"{type(self).__name__}: a 4-D input {tuple(x.shape)} in the default step_mode='m' is read as "
                    f"[T, B, N, L] (T = {x.shape[0]}); if it is one step [B, C, H, W] (SpikingJelly's default "
                    "step_mode is 's'), build the node with step_mode='s'; pass step_mode='m' to silence this",
                    stacklevel=4)  # the caller of the module (through Module.__call__)
            if single and x.dim() < 2:
                raise ValueError(
                    f"{type(self).__name__}(step_mode='s') expects one time step [B, ...] (at least 2 dims), got shape {tuple(x.shape)}"
                )
            if not single and x.dim() < 3:
                raise ValueError(
                    f"{type(self).__name__}(step_mode='m') expects a multi-step input [T, B, ...] (at least 3 dims), got shape "
                    f"{tuple(x.shape)}; for T steps of one sample ([T, N]) add the batch dim with x.unsqueeze(1), for one "
                    f"time step per call ([B, N]) use step_mode='s'"
                )
        x_seq = self._node_input(x.unsqueeze(0) if single else x)
        if not self.stateful:
            checkpoint_guard.before_fresh_call(self)
            v0 = self._take_held_state(x_seq)
            if not torch.compiler.is_compiling():  # eager only: .v warns once when read (see v)
                self._no_final_state = True
            out, v_T = self._run(x_seq, v0)
            self._check_state_finite(v_T, x_seq)
            return out[0] if single else out
        task = checkpoint_guard.before_carried_call(self)
        out, v_T = self._run(x_seq, self._initial_state(x_seq))
        self._check_state_finite(v_T, x_seq)
        self._v = v_T
        checkpoint_guard.record_state_task(self, task)
        return out[0] if single else out

    def _node_input(self, x_seq: torch.Tensor) -> torch.Tensor:
        """``x_seq [T, B, ...]`` as the node computes on it: cast to float32 inside ``torch.autocast``
        (:func:`_float32_under_autocast`) and, with ``check_finite``, scanned for NaN/Inf. (Also what
        :mod:`edgesnn.memopt` blocks do before they run the node's kernels themselves.)"""
        x_seq = _float32_under_autocast(x_seq)
        if self.check_finite:
            _check_finite(x_seq)
        return x_seq

    def _check_state_finite(self, v_T: torch.Tensor, x_seq: torch.Tensor) -> None:
        """Eager: a finite input whose membrane state overflowed the dtype (to +-Inf, then NaN) gives wrong
        spikes from that step on (a NaN never reaches the threshold); one reduction over ``v_T [B, ...]``
        (an overflow leaves the final state non-finite) turns that into a one-line error. Skipped inside a
        CUDA graph capture, like the kernels' own checks."""
        if not eager() or not isinstance(v_T, torch.Tensor) or v_T.device.type == "meta" or not v_T.numel():
            return  # (meta tensors: shapes only, no values)
        if v_T.is_cuda and torch.cuda.is_current_stream_capturing():  # no host reads inside a CUDA graph capture
            return
        if math.isfinite(float(v_T.detach().sum())):  # the cheap common case (2-6 us; aminmax took 12-19 us)
            return
        if not all_finite(v_T):  # the sum may overflow with every value finite: the exact check decides
            dtype = str(x_seq.dtype).replace("torch.", "")
            big = float(x_seq.detach().abs().amax()) if x_seq.numel() else 0.0
            raise NonFiniteInputError(
                f"{type(self).__name__}: the membrane state overflowed {dtype} (reached Inf/NaN) for this x_seq "
                f"(max |x_seq| = {big:.3g}), so its spikes would be wrong; {self._overflow_advice()}")

    def _overflow_advice(self) -> str:
        """What the overflow error suggests (a node whose parameters let the state grow says so)."""
        return "scale the input down or use a wider dtype"

    def _state_repr(self) -> str:
        return f"step_mode={self._step_mode!r}, stateful={self.stateful}"


#: What ``torch.autocast`` makes of a float32 tensor for its low-precision ops.
_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


def _float32_under_autocast(x_seq: torch.Tensor) -> torch.Tensor:
    """Inside ``torch.autocast`` the nodes run in float32, as autocast's own precision-sensitive ops
    (``layer_norm``, ``softmax``, sums) do: a float16 / bfloat16 input ``[T, B, ...]`` (what the
    layer before produced under autocast) is cast up, the output and state are float32 (the next
    autocast layer casts the spikes down again, exactly: they are 0 or 1). Without this a membrane
    potential integrated in bfloat16 (8 mantissa bits) moves the threshold crossings, RevLIF's
    exact mode cannot hold its 2**-16 grid at all, and the fused kernels (float32) would not run."""
    if x_seq.dtype in _AUTOCAST_DTYPES and autocast_on(x_seq):
        return x_seq.float()
    return x_seq


class LIF(LIFAttributes, _SpikingNode):
    """LIF node with SpikingJelly ``LIFNode`` semantics.

    Args:
        tau: membrane time constant (time steps, > 1).
        v_threshold: firing threshold.
        v_reset: hard-reset potential, or ``None`` for a soft reset.
        decay_input: divide the input by ``tau`` as well.
        surrogate: a name (``"sigmoid"`` alpha 4, ``"atan"`` alpha 2, ``"softsign"``, ...), an edgesnn
            ``Surrogate`` or a SpikingJelly surrogate instance; default ``Sigmoid(4)``.
        detach_reset: no gradient through the spike in the reset.
        backend: ``"auto"``, ``"torch"``, ``"numba"``, ``"cuda"`` or ``"reference"``
            (see :mod:`edgesnn.kernels.dispatch`).
        check_finite: one more scan of the input for NaN/Inf before the node runs (one pass over the
            input); every backend already raises ``NonFiniteInputError`` on a NaN/Inf input or state.
        step_mode: ``"m"`` (default, ``[T, B, ...]`` per call) or ``"s"`` (one step ``[B, ...]`` per call);
            left at the default, a 4-D input warns once (``[T, B, N, L]``, or SpikingJelly's one-step
            ``[B, C, H, W]``?).
        stateful: carry ``.v`` across calls until ``reset()``; ``None`` (default): only in step_mode ``"s"``.
            A held state is what the next call starts from in either step mode: switched from ``"s"`` to
            ``"m"``, the next call continues from the carried state (as SpikingJelly's), then keeps none;
            setting ``stateful=False`` drops a held state (with a warning). See the module docstring.
        surrogate_function: SpikingJelly's name for ``surrogate`` (give one of the two).
        store_v_seq: SpikingJelly's option to keep every step's ``v``: not available (an error if True).

    SpikingJelly's attributes ``tau``, ``v_threshold``, ``v_reset``, ``decay_input``,
    ``detach_reset`` and ``surrogate_function`` read and set the node's parameters (setting one
    re-validates them, as constructing would).

    Shape: ``[T, B, ...] -> [T, B, ...]`` (``"m"``) or ``[B, ...] -> [B, ...]`` (``"s"``); spikes,
    0/1 in the input's dtype.
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        decay_input: bool = True,
        surrogate: Optional[Any] = None,
        detach_reset: bool = False,
        backend: str = "auto",
        check_finite: bool = False,
        *,
        step_mode: Optional[str] = None,
        stateful: Optional[bool] = None,
        surrogate_function: Optional[Any] = None,
        store_v_seq: bool = False,
    ) -> None:
        super().__init__()
        sg = resolve_surrogate(surrogate, surrogate_function)
        self.params = LIFParams(tau, v_threshold, v_reset, decay_input, detach_reset, sg)
        self.backend = backend
        self._init_node(step_mode, stateful, check_finite, store_v_seq)

    def _lif_params(self) -> LIFParams:
        return self.params

    def _set_lif_params(self, lif: LIFParams) -> None:
        self.params = lif

    def _run(self, x_seq: torch.Tensor, v0: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        return dispatch.lif_multistep(x_seq, self.params, v0, self.backend)

    def extra_repr(self) -> str:
        """The node's parameters, backend and state for ``repr``."""
        p = self.params
        return (
            f"tau={p.tau}, v_threshold={p.v_threshold}, v_reset={p.v_reset}, decay_input={p.decay_input}, "
            f"surrogate={p.surrogate.name}(alpha={p.surrogate.alpha}), detach_reset={p.detach_reset}, backend={self.backend!r}, "
            + self._state_repr()
        )


from .parametric import ParametricLIF  # noqa: E402  (defined there, on _SpikingNode; re-exported)
from .reversible import RevLIF  # noqa: E402  (defined there, on _SpikingNode; re-exported)
