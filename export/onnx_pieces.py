"""Tracing the step program's pieces to ONNX and stitching them (:mod:`.onnx_step`): export one
function as a graph, rename its values, turn a Scan body into a Loop body, prune and inline."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..functional.surrogate import detach_kept_in_export
from .onnx_inference import OPSET, _onnx

if TYPE_CHECKING:  # pragma: no cover
    import onnx

__all__ = ["TracedFn", "export_piece", "elem_type", "rename_graph", "fix_passthrough", "traced_body", "scan_body_to_loop",
           "pruned", "inline_graph", "checked_model", "fills_as_constant_of_shape", "to_numpy"]


# ----------------------------------------------------------------------------- tracing pieces to ONNX


class TracedFn(nn.Module):
    """A plain function as an ``nn.Module`` (what the ONNX exporter takes)."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> Any:
        """``fn(*args)``: a tensor or a tuple of tensors (shapes as ``fn`` makes them)."""
        return self.fn(*args)


def export_piece(
    fn: Callable, args: Sequence[torch.Tensor], input_names: List[str], output_names: List[str]
) -> "onnx.GraphProto":
    """Export ``fn`` with the TorchScript-based exporter, ``stop_gradient`` taking its eager ``detach``
    branch (:func:`~edgesnn.functional.surrogate.detach_kept_in_export`); returns a GraphProto.
    ``args``: example inputs, one per ``input_names``; their shapes become the graph inputs' static shapes.

    The exporter traces ``fn`` itself: a ``torch.jit.trace`` first would leave one TorchScript class
    per piece in torch's global compilation unit (about 4 MiB per :func:`~.onnx_step.export_onnx_step`
    call, never freed)."""
    onnx = _onnx()
    args = tuple(a.detach() for a in args)
    with warnings.catch_warnings(), torch.no_grad(), detach_kept_in_export():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(TracedFn(fn), args, buf, input_names=input_names, output_names=output_names,
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    graph = proto.graph
    have = {i.name for i in graph.input}
    # keep every declared input (the exporter drops unused ones)
    for name, a in zip(input_names, args):
        if name not in have:
            graph.input.append(onnx.helper.make_tensor_value_info(name, elem_type(a), list(a.shape)))
    return graph


def elem_type(a: torch.Tensor) -> int:
    """The ONNX ``TensorProto`` element type of ``a``'s dtype (float32, int64 or uint8; any shape)."""
    onnx = _onnx()
    return {torch.float32: onnx.TensorProto.FLOAT, torch.int64: onnx.TensorProto.INT64,
            torch.uint8: onnx.TensorProto.UINT8}[a.dtype]


def rename_graph(graph: "onnx.GraphProto", prefix: str, keep: set) -> None:
    """Prefix every name in ``graph`` (values, nodes, initializers) except those in ``keep``."""
    def r(n: str) -> str:
        return n if (not n or n in keep) else prefix + n

    for node in graph.node:
        node.input[:] = [r(n) for n in node.input]
        node.output[:] = [r(n) for n in node.output]
        node.name = prefix + (node.name or node.op_type)
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                rename_graph(attr.g, prefix, keep)
    for init in graph.initializer:
        init.name = r(init.name)
    for vi in list(graph.input) + list(graph.output):
        vi.name = r(vi.name)
    del graph.value_info[:]


def fix_passthrough(graph: "onnx.GraphProto", prefix: str) -> None:
    """Scan bodies: an output that is an input (or an outer value) gets its own Identity node."""
    onnx = _onnx()
    produced = {o for n in graph.node for o in n.output}
    seen = set()
    for out in graph.output:
        if out.name not in produced or out.name in seen:
            new = f"{prefix}id/{out.name}"
            graph.node.append(onnx.helper.make_node("Identity", [out.name], [new], name=f"{prefix}Identity/{out.name}"))
            out.name = new
        seen.add(out.name)


def traced_body(
    fn: Callable, args: Sequence[torch.Tensor], input_names: List[str], output_names: List[str],
    local_in: List[str], prefix: str,
) -> "onnx.GraphProto":
    """A Scan body: ``local_in`` become the body inputs (in order); the other inputs are outer-scope names.
    ``args``: example inputs as in :func:`export_piece` (a scanned input: one slice, without the scan dim)."""
    graph = export_piece(fn, args, input_names, output_names)
    outer = set(input_names) - set(local_in)
    by_name = {i.name: i for i in graph.input}
    kept_inputs = [by_name[n] for n in local_in]
    new_inputs = [type(kept_inputs[0])() for _ in kept_inputs]
    for dst, src in zip(new_inputs, kept_inputs):
        dst.CopyFrom(src)
    del graph.input[:]
    graph.input.extend(new_inputs)
    # initializers that shadow inputs are not expected; rename everything local
    rename_graph(graph, prefix, outer)
    fix_passthrough(graph, prefix)
    graph.name = prefix.strip("/")
    return graph


def scan_body_to_loop(
    graph: "onnx.GraphProto", n_state: int, store_names: List[str], n_chunks: int, prefix: str
) -> None:
    """Turn a Scan body ``(states..., slices...) -> states...`` into a ``Loop`` body that walks the
    chunks backwards, reading chunk ``n_chunks - 1 - i`` of each outer ``store`` by ``Gather``.

    ONNX Runtime's Scan keeps up to four buffers per loop-carried value (input, two alternating,
    final output): for the weight-gradient accumulators that is 3x their size more than Loop,
    whose iterations hand their outputs on as the next inputs.
    """
    onnx = _onnx()
    helper, TP = onnx.helper, onnx.TensorProto
    slices = list(graph.input)[n_state:]
    states = list(graph.input)[:n_state]
    it, cond_in, cond_out = f"{prefix}iter", f"{prefix}cond_in", f"{prefix}cond_out"
    last = helper.make_tensor(f"{prefix}last_chunk", TP.INT64, [], [n_chunks - 1])
    graph.initializer.append(last)
    nodes = [helper.make_node("Sub", [last.name, it], [f"{prefix}chunk"], name=f"{prefix}chunk_index")]
    for vi, store in zip(slices, store_names):
        nodes.append(helper.make_node("Gather", [store, f"{prefix}chunk"], [vi.name], name=f"{prefix}Gather/{store}", axis=0))
    nodes.append(helper.make_node("Identity", [cond_in], [cond_out], name=f"{prefix}cond"))
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)
    new_inputs = [helper.make_tensor_value_info(it, TP.INT64, []), helper.make_tensor_value_info(cond_in, TP.BOOL, [])]
    del graph.input[:]
    graph.input.extend(new_inputs + states)
    outs = list(graph.output)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(cond_out, TP.BOOL, [])] + outs)


def pruned(graph: "onnx.GraphProto", n_outputs: int) -> "onnx.GraphProto":
    """A copy of ``graph`` with only its first ``n_outputs`` outputs and the nodes they need."""
    import copy

    g = copy.deepcopy(graph)
    outs = list(g.output)[:n_outputs]
    del g.output[:]
    g.output.extend(outs)
    needed = {o.name for o in outs}
    keep = []
    for node in reversed(list(g.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
            for attr in node.attribute:  # values a nested graph reads from this scope
                if attr.g is not None:
                    needed.update(n for sub in attr.g.node for n in sub.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    return g


def inline_graph(
    graph: "onnx.GraphProto", prefix: str, keep: set
) -> Tuple[List["onnx.NodeProto"], List["onnx.TensorProto"]]:
    """Nodes and initializers of an exported piece, internal names prefixed; I/O names kept."""
    io_names = {i.name for i in graph.input} | {o.name for o in graph.output}
    rename_graph(graph, prefix, keep | io_names)
    return list(graph.node), list(graph.initializer)


def checked_model(graph: "onnx.GraphProto") -> "onnx.ModelProto":
    """A stitched ``graph`` as an opset-:data:`OPSET`, IR-version-8 ``ModelProto``, checked by the ONNX checker."""
    onnx = _onnx()
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)], producer_name="edgesnn")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def fills_as_constant_of_shape(graph: "onnx.GraphProto", min_elements: int = 1024) -> int:
    """Replace every ``Constant`` node (in ``graph`` and its loop bodies) whose value is a float32
    tensor of at least ``min_elements`` elements all equal (the layers' fresh states, ``[B, ...]``
    each) by a ``ConstantOfShape`` of that value: the same tensor, without its bytes in the file
    (ONNX Runtime still builds it once when it loads the graph). Returns the elements removed."""
    onnx = _onnx()
    from onnx import numpy_helper

    helper, TP = onnx.helper, onnx.TensorProto
    removed, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                removed += fills_as_constant_of_shape(attr.g, min_elements)
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            if arr.dtype == np.float32 and arr.size >= min_elements and (arr == arr.flat[0]).all():
                shape = node.output[0] + "/shape"
                nodes.append(helper.make_node("Constant", [], [shape], name=node.name + "/shape",
                                              value=helper.make_tensor(shape, TP.INT64, [arr.ndim], list(arr.shape))))
                nodes.append(helper.make_node("ConstantOfShape", [shape], [node.output[0]], name=node.name,
                                              value=helper.make_tensor("value", TP.FLOAT, [1], [float(arr.flat[0])])))
                removed += arr.size
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return removed


def to_numpy(d: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """The tensors of ``d`` as float32 NumPy arrays (detached, same shapes and names)."""
    return {k: v.detach().numpy().astype(np.float32) for k, v in d.items()}
