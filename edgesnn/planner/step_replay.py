"""Replay of one training step's storages for :mod:`edgesnn.planner.bptt_peak`: live bytes, the
running peak, edgesnn's kernel buffer pool (same policy, no memory), and the BPTT and SpikingJelly
memopt (level 1) step orders over a chain of :class:`~edgesnn.planner.bptt_peak.OpCost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from .layer_types import first_recording
from .memory_model import Cost

if TYPE_CHECKING:  # pragma: no cover
    from .bptt_peak import OpCost

__all__ = ["Pool", "Replay", "Chain", "replay_bptt", "replay_sj_memopt"]


@dataclass
class _Entry:
    nbytes: int
    busy: bool = True


class Pool:
    """edgesnn's CPU buffer pool (:func:`edgesnn.kernels.buffers.empty`): same policy, no memory."""

    def __init__(self, limit: int, min_bytes: int) -> None:
        self.limit, self.min_bytes = limit, min_bytes
        self.lists: Dict[Tuple[int, str], List[_Entry]] = {}

    def total(self) -> int:
        """Bytes of every storage the pool holds, busy or idle."""
        return sum(e.nbytes for lst in self.lists.values() for e in lst)

    def _drop_idle(self, limit: int) -> int:
        total = self.total()
        for key in list(self.lists):
            keep = []
            for e in self.lists[key]:
                if total > limit and not e.busy:
                    total -= e.nbytes
                else:
                    keep.append(e)
            if keep:
                self.lists[key] = keep
            else:
                del self.lists[key]
        return total

    def take(self, nbytes: int, dtype: str) -> Optional[_Entry]:
        """A pool entry for a request, or ``None`` when the allocator serves it (not kept)."""
        if self.limit == 0 or nbytes < self.min_bytes:
            return None
        key = (nbytes, dtype)
        for e in self.lists.get(key, ()):
            if not e.busy:
                e.busy = True
                return e
        e = _Entry(nbytes)
        if self._drop_idle(self.limit - nbytes) + nbytes <= self.limit:
            self.lists.setdefault(key, []).append(e)
            return e
        return None


class Replay:
    """Live storages (plain allocations + the pool's resident storages) and the running peak."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.plain: Dict[object, int] = {}
        self.pooled: Dict[object, _Entry] = {}
        self.peak, self.phase = 0, ""
        self.events: List[Tuple[str, int]] = []

    def rss(self) -> int:
        """Bytes resident now: plain allocations plus the pool's storages."""
        return sum(self.plain.values()) + self.pool.total()

    def alloc(self, key: object, nbytes: int, pooled: bool = False, dtype: str = "float") -> None:
        """Allocate ``nbytes`` bytes under ``key`` (freeing what it held), from the pool when ``pooled``."""
        self.free(key)
        if nbytes <= 0:
            return
        e = self.pool.take(int(nbytes), dtype) if pooled else None
        if e is None:
            self.plain[key] = int(nbytes)
        else:
            self.pooled[key] = e

    def free(self, key: object) -> None:
        """Release ``key``'s storage (a pooled one stays resident, idle); no-op if it holds none."""
        if key in self.plain:
            del self.plain[key]
        elif key in self.pooled:
            self.pooled.pop(key).busy = False

    def live(self, key: object) -> bool:
        """Whether ``key`` holds a storage now."""
        return key in self.plain or key in self.pooled

    def rename(self, old: object, new: object) -> None:
        """Move the storage held under ``old`` to ``new`` (an in-place op handing its buffer on)."""
        if old in self.plain:
            self.plain[new] = self.plain.pop(old)
        elif old in self.pooled:
            self.pooled[new] = self.pooled.pop(old)

    def check(self, label: str, extra: int = 0) -> None:
        """Record the resident bytes (plus ``extra`` transient bytes) at phase ``label``; update the peak."""
        total = self.rss() + int(extra)
        self.events.append((label, total))
        if total > self.peak:
            self.peak, self.phase = total, label


class Chain:
    """A run of layers on ``[T, B, ...]`` tensors with storage (edge) bookkeeping, as in ``peak.py``."""

    def __init__(self, ops: Sequence[OpCost], tag: str, T: int, B: int, db: int) -> None:
        self.ops, self.tag, self.T, self.B, self.db = list(ops), tag, T, B, db
        self.in_edge: List[int] = []
        self.out_edge: List[int] = []
        self.edge_elems: List[int] = [ops[0].in_elems if ops else 0]
        self.edge_pooled: List[bool] = [False]
        cur = 0
        for op in self.ops:
            self.in_edge.append(cur)
            if not op.view:
                self.edge_elems.append(op.out_elems)
                self.edge_pooled.append(op.pooled)
                cur = len(self.edge_elems) - 1
            self.out_edge.append(cur)
        self.first_real = next((j for j, op in enumerate(self.ops) if not op.view), None)
        # on an input that needs no gradient (the model's) the layers before it record no graph
        first = first_recording(not op.view and op.trains for op in self.ops)
        self.first_recording = len(self.ops) if first is None else first
        self.savers: Dict[int, List[int]] = {}
        for j, op in enumerate(self.ops):
            if op.saves_input:
                self.savers.setdefault(self.in_edge[j], []).append(j)
            if op.saves_output:
                self.savers.setdefault(self.out_edge[j], []).append(j)

    def key(self, e: int) -> object:
        """The replay key of edge (storage) ``e`` of this chain."""
        return (self.tag, "edge", e)

    def dense(self, e: int) -> int:
        """Bytes of edge ``e`` as a dense ``[T, B, ...]`` tensor."""
        return self.T * self.B * self.edge_elems[e] * self.db

    def forward(self, r: Replay, *, save: bool, copy_input: bool, own_input: bool, state_tag: str = "state",
                phase: str = "forward", input_grad: bool = True) -> object:
        """Replay the forward; returns the key of the output storage (left live).

        ``copy_input``: edge 0 is a zero-stride expanded view that the first layer copies (the copy
        is edge 0's storage; not for a layer that reads it as it is, :attr:`OpCost.reads_repeated`);
        otherwise edge 0 is already live under :meth:`key` ``(0)``.
        ``own_input``: the chain may free edge 0 when nothing saved it (else the caller holds it).
        ``save``: autograd keeps what the layers save (``False``: a checkpointed forward).
        ``input_grad``: edge 0 needs a gradient (``False``: the model input; the layers before the
        first one with trainable parameters then keep nothing).
        """
        T, B = self.T, self.B
        plain = 0 if input_grad else self.first_recording
        for j, op in enumerate(self.ops):
            ei, eo = self.in_edge[j], self.out_edge[j]
            if j == self.first_real and copy_input and not op.reads_repeated:
                r.alloc(self.key(0), self.dense(0))
            if not op.view:
                r.alloc(self.key(eo), self.dense(eo), pooled=op.pooled)
            extra = op.work.bytes(T, B)
            keep = save and j >= plain
            if keep:
                r.alloc((self.tag, "priv", j), op.private.bytes(T, B))
                r.alloc((self.tag, "ppriv", j), op.private_pooled.bytes(T, B), pooled=True, dtype="uint8")
            else:  # nothing kept: per-step saved tensors live one step, others until the layer returns
                extra += (Cost(sample=op.private.step) if op.per_step else op.private + op.private_pooled).bytes(T, B)
            if op.state.bytes(T, B):
                r.alloc((state_tag, self.tag, j), op.state.bytes(T, B))
            r.check(f"{phase} {op.name}", extra)
            if not op.view and (not keep or ei not in self.savers) and (ei != 0 or own_input or copy_input):
                r.free(self.key(ei))
        return self.key(self.out_edge[-1]) if self.ops else self.key(0)

    def backward(self, r: Replay, grad: object, *, input_grad: bool) -> Optional[object]:
        """Replay the backward from the live gradient ``grad`` (of the output); returns the key of
        the input gradient (``None`` when the input needs none). Frees the saved storages."""
        T, B = self.T, self.B
        for j in range(len(self.ops) - 1, -1, -1):
            op = self.ops[j]
            if op.view:
                continue
            if not input_grad and j < self.first_recording:  # recorded no graph: no backward
                self._release(r, j)
                continue
            need = input_grad or j > self.first_recording
            gin = (self.tag, "gin", j)
            nbytes = self.dense(self.in_edge[j]) if need else 0
            if op.per_step:  # step by step: temporaries first, the input gradient grows as saved steps go
                r.check(f"backward {op.name}", op.bwork.bytes(T, B))
                self._release(r, j)
                r.alloc(gin, nbytes, pooled=op.pooled)
                r.check(f"backward {op.name}")
            else:
                r.alloc(gin, nbytes, pooled=op.pooled)
                r.check(f"backward {op.name}", op.bwork.bytes(T, B))
                self._release(r, j)
            r.free(grad)
            grad = gin
        return grad if r.live(grad) else None

    def _release(self, r: Replay, j: int) -> None:
        r.free((self.tag, "priv", j))
        r.free((self.tag, "ppriv", j))
        for e, users in self.savers.items():
            if min(users) >= j:
                r.free(self.key(e))


def _head(r: Replay, T: int, B: int, classes: int, db: int) -> None:
    """mean over T -> [B, classes] logits; cross-entropy keeps log_softmax and the int64 targets."""
    r.alloc(("head", "logits"), B * classes * db)
    r.alloc(("head", "logsm"), B * classes * db + 8 * B)
    r.check("loss")


def replay_bptt(r: Replay, ops: Sequence[OpCost], T: int, B: int, db: int, classes: int) -> None:
    """Plain BPTT of one training step (forward saving for autograd, head, backward) into ``r``;
    ``db``: bytes per value, ``classes``: logits width."""
    chain = Chain(ops, "m", T, B, db)
    out = chain.forward(r, save=True, copy_input=True, own_input=True, input_grad=False)
    _head(r, T, B, classes, db)
    if chain.out_edge and chain.out_edge[-1] not in chain.savers:
        r.free(out)
    r.free(("head", "logits"))
    r.alloc(("grad", "out"), T * B * classes * db)  # MeanBackward: the output's gradient [T, B, classes]
    r.free(("head", "logsm"))
    r.check("backward head")
    g = chain.backward(r, ("grad", "out"), input_grad=False)
    if g is not None:
        r.free(g)


def replay_sj_memopt(r: Replay, units: Sequence[Tuple[bool, List[OpCost]]], T: int, B: int, db: int, classes: int,
                      compress: bool) -> None:
    """SpikingJelly memopt level 1 (``spikingjelly.activation_based.memopt``: checkpointed segments, 1-bit spikes)."""
    chains, packed = [], []
    x_key: Optional[object] = None  # None: the expanded model input
    binary = False
    for i, (ckpt, ops) in enumerate(units):
        chain = Chain(ops, f"b{i}", T, B, db)
        chains.append(chain)
        n = T * B * chain.edge_elems[0]
        if not ckpt:
            # plain autograd layers (the head): saved as usual
            if x_key is not None:
                r.rename(x_key, chain.key(0))
            x_key = chain.forward(r, save=True, copy_input=x_key is None, own_input=True, input_grad=x_key is not None)
            binary = bool(ops) and ops[-1].binary_out
            packed.append(None)
            continue
        pack = compress and binary and x_key is not None
        if pack:  # BitSpikeCompressor.compress, then the checkpointed function unpacks it
            r.check(f"forward {chain.tag} pack", 2 * n + 2 * -(-n // 8))
            r.alloc((chain.tag, "packed"), -(-n // 8), dtype="uint8")
            r.check(f"forward {chain.tag} unpack", 3 * n * db)
            r.alloc(chain.key(0), n * db)
            out = chain.forward(r, save=False, copy_input=False, own_input=False)
            r.free(chain.key(0))
            r.free(x_key)
            packed.append((chain.tag, "packed"))
        elif x_key is None:
            out = chain.forward(r, save=False, copy_input=True, own_input=True, input_grad=False)
            packed.append(None)
        else:  # a non-binary input: the checkpoint keeps the tensor itself
            r.rename(x_key, chain.key(0))
            out = chain.forward(r, save=False, copy_input=False, own_input=False)
            packed.append(chain.key(0))
        x_key = out
        binary = ops[-1].binary_out if ops else binary
    _head(r, T, B, classes, db)
    r.free(("head", "logits"))
    r.alloc(("grad", "out"), T * B * classes * db)
    r.free(("head", "logsm"))
    r.check("backward head")
    grad: Optional[object] = ("grad", "out")
    last_out = x_key
    for i in range(len(units) - 1, -1, -1):
        ckpt, ops = units[i]
        chain = chains[i]
        need_in = i > 0
        if not ckpt:
            if i == len(units) - 1 and last_out is not None and chain.out_edge and chain.out_edge[-1] not in chain.savers:
                r.free(last_out)
            grad = chain.backward(r, grad, input_grad=need_in)
            continue
        if i == len(units) - 1 and last_out is not None:
            r.free(last_out)
        # recompute (non-reentrant checkpoint, on the first unpack in this block's backward)
        kept = packed[i]
        if kept is not None and kept[1] == "packed":  # type: ignore[index]
            n = T * B * chain.edge_elems[0]
            r.check(f"backward {chain.tag} unpack", 3 * n * db)
            r.alloc(chain.key(0), n * db)
            out = chain.forward(r, save=True, copy_input=False, own_input=True, state_tag="rstate", phase="recompute")
        elif kept is None:
            out = chain.forward(r, save=True, copy_input=True, own_input=True, state_tag="rstate", phase="recompute",
                                input_grad=False)
        else:  # the kept input itself
            out = chain.forward(r, save=True, copy_input=False, own_input=False, state_tag="rstate", phase="recompute")
        if chain.out_edge and chain.out_edge[-1] not in chain.savers:
            r.free(out)  # the recomputed output is dropped
        grad = chain.backward(r, grad, input_grad=need_in)
        for k in [k for k in r.plain if isinstance(k, tuple) and k[:2] == ("rstate", chain.tag)]:
            r.free(k)
        if kept is not None:
            r.free(kept)
    if grad is not None:
        r.free(grad)


# ----------------------------------------------------------------------------------- API
