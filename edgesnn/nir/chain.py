"""The walk :func:`edgesnn.nir.load` makes over a NIR graph's edges: the single chain Input -> ... -> Output
it loads, and one-line refusals for what is not such a chain (branches, nodes off the chain, edges naming
no node and recurrence: a cycle of edges, or a nested subgraph holding one, as snnTorch's RLeaky /
RSynaptic and Norse's recurrent cells export)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import first_line
from .common import NIRError, nir_module

__all__ = ["chain", "find_cycle"]

_MAX_SHOWN = 8  # nodes of a cycle named in a message; a longer one is shortened with "..."


def _node_key(graph: Any, end: Any) -> Any:
    """The key of ``graph.nodes`` an edge end names: the end itself (e.g. an ``int`` key of an
    in-memory graph) when it is a key, else its text (``np.str_``/``bytes`` from a file). ``"sub.input"``
    / ``"sub.output"`` (how nirtorch names the ends of a nested subgraph ``sub``) is ``sub`` when
    ``sub`` is a nested ``nir.NIRGraph`` node and ``"sub.input"`` itself is no node."""
    try:
        if end in graph.nodes:
            return end
    except TypeError:  # unhashable (a list): never a key
        pass
    text = end.decode("utf8", "replace") if isinstance(end, bytes) else str(end)
    if text not in graph.nodes and "." in text:
        outer, _, inner = text.rpartition(".")
        if inner in ("input", "output") and isinstance(graph.nodes.get(outer), nir_module().NIRGraph):
            return outer
    return text


def _show(cycle: List[Any]) -> str:
    """``a -> b -> a``, at most :data:`_MAX_SHOWN` names (a longer cycle keeps its first ones, ``...``, its end)."""
    names = [str(k) for k in cycle]
    if len(names) > _MAX_SHOWN:
        names = names[:_MAX_SHOWN - 1] + ["...", names[-1]]
    return " -> ".join(names)


def find_cycle(nodes: Any, succ: Dict[Any, List[Any]]) -> Optional[List[Any]]:
    """A cycle of the directed graph ``succ`` as ``[a, b, ..., a]`` (a self-loop is ``[a, a]``), searched
    from the nodes in the order of ``nodes``; ``None`` when there is none. Iterative (no recursion limit)."""
    state: Dict[Any, int] = {}  # 1: on the current path, 2: done
    for start in nodes:
        if state.get(start):
            continue
        path, its = [start], [iter(succ.get(start, []))]
        state[start] = 1
        while path:
            nxt = next(its[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                its.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                its.append(iter(succ.get(nxt, [])))
    return None


def _refuse_subgraph(key: Any, node: Any) -> None:
    """The one-line refusal of a nested ``nir.NIRGraph`` node: naming its cycle when it holds one."""
    succ: Dict[Any, List[Any]] = {}
    try:
        for a, b in node.edges:
            succ.setdefault(_node_key(node, a), []).append(_node_key(node, b))
        cycle = find_cycle(list(node.nodes), succ)
    except Exception:  # noqa: BLE001 - a malformed subgraph: refused all the same, without naming a cycle
        cycle = None
    if cycle:
        raise NIRError(f"node {key}: nested nir.NIRGraph with the recurrent cycle {_show(cycle)} (a recurrent layer, as "
                       "snnTorch's RLeaky/RSynaptic export); edgesnn loads feed-forward chains only, no recurrence")
    raise NIRError(f"node {key}: nested nir.NIRGraph (a subgraph); edgesnn loads one flat chain Input -> ... -> Output")


def chain(graph: Any) -> List[Any]:
    """Node keys from the Input to the Output; refuses anything but a simple chain (one line).

    A cycle (a recurrent layer: ``lif -> w_rec -> lif``, or a self-loop) is refused naming its nodes,
    before branches: the recurrent node's second successor is no branch of the feed-forward kind.
    """
    nir = nir_module()
    succ: Dict[Any, List[Any]] = {}
    seen_edges = set()
    for edge in graph.edges:
        try:
            if isinstance(edge, (str, bytes)):  # "ab" would unpack into the nodes "a" and "b"
                raise TypeError("a name")
            a, b = edge
        except (TypeError, ValueError):  # None, a 3-tuple, a bare name: not a (source, target) pair
            raise NIRError(f"graph: edge {first_line(repr(edge), 80)} is not a (source, target) pair of node names") from None
        a, b = (_node_key(graph, e) for e in (a, b))
        for end in (a, b):
            if end not in graph.nodes:  # an edge from / to nothing: a lost input or output, not loadable faithfully
                raise NIRError(f"graph: edge {a} -> {b} names no node {end!r}")
        if (a, b) in seen_edges:
            raise NIRError(f"graph: duplicate edge {a} -> {b}; edgesnn loads feed-forward chains with one edge per link")
        seen_edges.add((a, b))
        succ.setdefault(a, []).append(b)
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise NIRError(f"graph: edgesnn loads feed-forward chains with one input node, found {len(inputs)}")
    cycle = find_cycle(inputs + [k for k in graph.nodes if k != inputs[0]], succ)
    if cycle:
        raise NIRError(f"graph: the edges form the recurrent cycle {_show(cycle)} (a recurrent layer); "
                       "edgesnn loads feed-forward chains only, no recurrence")
    keys, seen = [inputs[0]], {inputs[0]}
    while True:
        nxt = succ.get(keys[-1], [])
        if not nxt:
            break
        if len(nxt) > 1:
            raise NIRError(f"graph: node {keys[-1]} feeds {len(nxt)} nodes; edgesnn loads feed-forward chains only")
        keys.append(nxt[0])  # never seen before: the graph has no cycle
        seen.add(nxt[0])
    for key in keys:
        if isinstance(graph.nodes[key], nir.NIRGraph):
            _refuse_subgraph(key, graph.nodes[key])
    if len(seen) != len(graph.nodes):
        raise NIRError(f"graph: nodes not on the input-output chain: {sorted(set(graph.nodes) - seen, key=str)}")
    if not isinstance(graph.nodes[keys[-1]], nir.Output):
        raise NIRError(f"graph: the chain ends in {keys[-1]}, not an output node")
    return keys
