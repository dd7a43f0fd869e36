"""Graph passes and lints on exported ONNX graphs (onnx and numpy only)."""

from __future__ import annotations

import onnx

from edgeclip.precision.fp16 import store_exact_fp16

__all__ = ["drop_source_traces", "float_argmax_nodes", "store_exact_fp16"]

# Node metadata that torch.onnx writes from the exporting process: Python stack traces, with the absolute paths of
# that machine's files (its home directory, its virtual environment). They would ship inside every bundle.
SOURCE_TRACE_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def drop_source_traces(model: onnx.ModelProto) -> bool:
    """Remove the exporter's stack traces from every node's metadata (the graph, its names and the module scopes
    stay); whether any were there. The same model exported on two machines then gives the same file."""
    changed = False
    graphs = [model.graph, *(a.g for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)]
    for graph in graphs:
        for node in graph.node:
            kept = [p for p in node.metadata_props if p.key not in SOURCE_TRACE_KEYS]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
                changed = True
    return changed


def float_argmax_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the ArgMax/ArgMin nodes of `model` whose input is a floating-point tensor (or a cast to one)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    cast_to = {
        out: attr.i
        for node in graph.node
        if node.op_type == "Cast"
        for attr in node.attribute
        if attr.name == "to"
        for out in node.output
    }
    return [
        node.name or node.output[0]
        for node in graph.node
        if node.op_type in ("ArgMax", "ArgMin")
        and (types.get(node.input[0]) in _FLOAT_TYPES or cast_to.get(node.input[0]) in _FLOAT_TYPES)
    ]
