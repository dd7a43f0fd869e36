"""Graph passes and lints on exported ONNX graphs (onnx and numpy only)."""

from __future__ import annotations

import numpy as np
import onnx

from edgeclip.precision.fp16 import store_exact_fp16

__all__ = ["float_argmax_nodes", "store_exact_fp16"]

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


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
