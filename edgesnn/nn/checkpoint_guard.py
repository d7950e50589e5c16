"""What ``torch.utils.checkpoint`` cannot recompute in a node that carries its state, refused in one line.

A checkpoint recomputes its function during the backward. A node's call there starts from whatever
state the node holds *then*: a node carrying its state (``step_mode='s'`` or ``stateful=True``)
holds the last step's, not the one the checkpointed step started from, and a multi-step call that
started from a state held from single-step calls finds it dropped (the forward took it). The
recomputation would give wrong gradients without a word (LIF's input gradient off by its own size;
RevLIF's reconstruction check fired, blaming a kernel). A state produced inside the same backward
(the recomputation's own earlier steps) or a fresh one (the checkpointed function resets the node
first) recomputes exactly, and passes.

The backward is told apart by autograd's current graph task (``-1`` outside one); under
``torch.compile`` nothing is checked.
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional.checks import eager

__all__ = ["graph_task", "before_carried_call", "record_state_task", "before_fresh_call"]

_ALTERNATIVES = ("checkpoint a multi-step call from a fresh state (step_mode='m'), or use "
                 "edgesnn.memopt.checkpoint_over_time or optimize_memory")


def graph_task() -> int:
    """The autograd graph task running now (a backward), ``-1`` outside one or while compiling."""
    if torch.compiler.is_compiling():
        return -1
    return int(torch._C._current_graph_task_id())


def before_carried_call(node: nn.Module) -> int:
    """Before a call of ``node`` from its carried state: raise when it runs during a backward from a
    state made outside it (not a fresh one). Returns the graph task, which the node records with the
    state it makes (``_v_task``)."""
    task = graph_task()
    if task != -1 and node._v is not None and node.__dict__.get("_v_task", -1) != task and eager():
        raise RuntimeError(
            f"{type(node).__name__}: called with its carried state (step_mode='s' or stateful=True) during a backward, "
            "as torch.utils.checkpoint recomputes a step: it would start from the state held now, not the forward's, "
            f"and give wrong gradients; {_ALTERNATIVES}")
    return task


def record_state_task(node: nn.Module, task: int) -> None:
    """Record with ``node``'s new state the graph task that made it (nothing while compiling: the
    compilers of older PyTorch cannot write a module's ``__dict__``, and nothing is checked there)."""
    if not torch.compiler.is_compiling():
        node.__dict__["_v_task"] = task


def before_fresh_call(node: nn.Module) -> None:
    """Before a multi-step call of ``node`` (stateless: it starts from a held state if any, then
    drops it): outside a backward record whether it takes a held state; during one raise when the
    forward's call took one that is gone now (the recomputation would start fresh)."""
    if torch.compiler.is_compiling():
        return
    task = graph_task()
    if task == -1:
        node.__dict__["_took_held"] = node._v is not None
    elif node._v is None and node.__dict__.get("_took_held", False) and eager():
        raise RuntimeError(
            f"{type(node).__name__}: recomputed during a backward (torch.utils.checkpoint) after its forward call "
            "started from the state held from step_mode='s' calls, which that call dropped: the recomputation would "
            f"start fresh and give wrong gradients; {_ALTERNATIVES}")
