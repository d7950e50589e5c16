"""What neighbouring memory-optimized blocks pass each other, per thread, and the lock that lets
one optimized model train from several threads (:mod:`edgesnn.memopt.block`).

* Hand-over: a block's forward leaves the next block's forward its packed output (instead of a
  ``[T, B, ...]`` tensor), the :class:`~edgesnn.memopt.gradchunks.GradChunks` the next block sends
  our input gradient to, or our :class:`~edgesnn.memopt.static.StaticBackward` to run inside its
  backward. The forwards of one model call run on one thread, and calls of one model from several
  threads at once (the blocks are shared) must not read each other's, so the hand-over is
  thread-local, keyed by ``id(next block)``; a forward takes its entry out as it starts.
* :func:`run_lock`: held by every block forward and backward that autograd records, in every
  model. A block's backward puts stand-ins for its parameters on its modules
  (:mod:`edgesnn.memopt.paramgrads`), which another thread's forward or backward of the same model
  would otherwise read (gradients of one call landing in the other's, or lost). So recorded
  blocks run one at a time in the process; forwards without autograd (inference) do not take it
  (they read the stand-ins' values, the parameters' own). Code outside the blocks does not take it
  either: another thread listing the model's parameters meanwhile gets the stand-ins, which the
  README tells users to avoid (list them before the threads start).
  Re-entrant: a block's backward runs the previous block's inside it. A child forked while
  another thread held it gets a fresh one.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Dict, Optional, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from .gradchunks import GradChunks
    from .packing import SavedInput
    from .static import StaticBackward

from ..fork_safe_lock import ForkSafeLock

__all__ = ["hand_over", "take_handoff", "run_lock"]

_HANDOFF = threading.local()
_RUN_LOCK = ForkSafeLock(reentrant=True)  # renewed, unlocked, in a forked child


def _handoffs() -> Dict[int, tuple]:
    box = getattr(_HANDOFF, "box", None)
    if box is None:
        box = _HANDOFF.box = {}
    return box


def hand_over(nxt: object, saved: "SavedInput", grad_sink: Optional["GradChunks"],
              static: Optional["StaticBackward"]) -> None:
    """Leave the block ``nxt``'s next forward on this thread its packed input ``saved``, the
    :class:`GradChunks` its input gradient goes to, or our :class:`StaticBackward` to run inside its backward."""
    _handoffs()[id(nxt)] = (saved, grad_sink, static)


def take_handoff(block: object) -> Tuple[Optional["SavedInput"], Optional["GradChunks"], Optional["StaticBackward"]]:
    """``(incoming, grad_sink, incoming_static)`` the previous block's forward on this thread left
    ``block`` (``None`` each when it left nothing), removed from the hand-over."""
    return _handoffs().pop(id(block), (None, None, None))


def run_lock() -> ForkSafeLock:
    """The process-wide re-entrant lock of recorded block forwards and backwards (see the module docstring)."""
    return _RUN_LOCK
