"""Graph passes and lints on exported ONNX graphs (onnx and numpy only)."""

from __future__ import annotations

import numpy as np
import onnx

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def store_exact_fp16(model: onnx.ModelProto, *, min_elements: int = 1024) -> int:
    """Store each float32 weight whose every value is exactly a float16 as float16, followed by a Cast to float32.

    Lossless by construction (checked tensor by tensor), so the graph computes exactly what it did: the same fp32
    arithmetic on the same values. It halves the bundles of checkpoints published in fp16 (OpenAI's) and of the
    built-in model; weights trained in fp32 are left as they are. Returns the number of bytes saved.
    """
    graph = model.graph
    casts, kept, saved = [], [], 0
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        values = onnx.numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            kept.append(init)
            continue
        stored = f"{init.name}__fp16"
        kept.append(onnx.numpy_helper.from_array(half, stored))
        casts.append(onnx.helper.make_node("Cast", [stored], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{init.name}__to_fp32"))  # fmt: skip
        saved += half.nbytes
    if casts:
        del graph.initializer[:]
        graph.initializer.extend(kept)
        nodes = [*casts, *graph.node]  # initializers exist before any node: the casts can come first
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return saved


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
