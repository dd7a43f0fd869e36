"""fp32 graph -> fp16 graph with float32 islands at CLIP's known fp16 overflow points.

What stays in float32:
- LayerNormalization, Softmax and the L2 norm (ReduceL2): their reductions overflow or lose the small differences
  that matter in fp16;
- the tail: the final projection, everything after it (the L2 normalization), and the pure data-movement nodes that
  feed it (the pooled token's Gather/GatherND, reshapes), so that the embedding is projected and normalized in fp32.
Everything else computes in float16, weights stored in float16. Graph inputs and outputs stay float32 (and int64
ids): every caller is unchanged.

The conversion is edgeclip's own pass over the ONNX graph, chosen by test over onnxconverter-common's
`convert_float_to_float16`, which on these graphs (1) refuses the fp16-stored weights that export writes, (2) with the
islands in its block list still rounds the projection's output through float16 on its way to the L2 norm (a Cast to
fp16 and back between two blocked nodes) and (3) leaves the graph output in float16 despite `keep_io_types`.
Here each tensor is float32 or float16 by the region of the node that makes it, one Cast is inserted per tensor
and direction where the regions meet, and a check afterwards proves that no island reads or writes float16.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeclip.errors import EdgeClipError

ISLAND_OPS = ("LayerNormalization", "Softmax", "ReduceL2")
PROJECTION_OPS = ("MatMul", "Gemm")
# Nodes that move data without arithmetic: the pooled token's way to the projection.
MOVEMENT_OPS = ("Gather", "GatherND", "GatherElements", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Flatten",
                "Transpose", "Identity")  # fmt: skip
# Float inputs that ONNX requires in float32 whatever the data type (op type -> input indices).
FLOAT32_INPUTS = {"Resize": (2,), "Upsample": (1,)}
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class Fp16Graph:
    """What `fp16_from_fp32` wrote: the float32 islands by name and how many nodes compute in fp16."""

    path: Path
    islands: tuple[str, ...]
    fp16_nodes: int
    nodes: int


def fp16_from_fp32(src: str | Path, dst: str | Path) -> Fp16Graph:
    """Convert the fp32 graph at `src` to an fp16 graph at `dst` (islands in float32, float32 I/O), checked."""
    model = onnx.load(str(src))
    unpack_fp16_storage(model)
    islands = fp32_island_nodes(model)
    convert_to_fp16(model, islands)
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EdgeClipError(f"the fp16 graph of {Path(src).name} fails the ONNX checker: {exc}") from exc
    leaks = float16_island_inputs(model, islands)
    if leaks:
        raise EdgeClipError(f"fp16 conversion of {Path(src).name} left islands in fp16: {', '.join(leaks)} (a bug)")
    onnx.save(model, str(dst))
    return Fp16Graph(Path(dst), tuple(sorted(islands)), len(float16_nodes(model)), len(model.graph.node))


def convert_to_fp16(model: onnx.ModelProto, islands: Iterable[str]) -> None:
    """Convert `model` in place: nodes not in `islands` compute in float16; islands and graph I/O stay float32."""
    graph = model.graph
    keep = set(islands)
    types = _elem_types(model)
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    # Which region reads each float32 tensor: an initializer read only by fp16 nodes is simply stored as fp16.
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                readers.setdefault(name, set()).add(node.name in keep or i in FLOAT32_INPUTS.get(node.op_type, ()))
    for name, init in inits.items():
        if init.data_type == TensorProto.FLOAT and readers.get(name) == {False}:
            init.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(init)), name))
    half = {n for n, t in types.items() if t == TensorProto.FLOAT16} | {
        n for n, i in inits.items() if i.data_type == TensorProto.FLOAT16
    }
    casts: dict[tuple[str, int], str] = {}  # (tensor, to) -> the cast tensor's name
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = f"{name}__{'fp16' if to == TensorProto.FLOAT16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}__cast"))
            casts[(name, to)] = out
        return casts[(name, to)]

    for node in graph.node:
        fp32_node = node.name in keep
        for i, name in enumerate(node.input):
            if not name:
                continue
            wants32 = fp32_node or i in FLOAT32_INPUTS.get(node.op_type, ())
            if wants32 and name in half:
                node.input[i] = cast(name, TensorProto.FLOAT)
            elif not wants32 and types.get(name) == TensorProto.FLOAT and name not in half:
                node.input[i] = cast(name, TensorProto.FLOAT16)
        if not fp32_node:
            _retype_attributes(node)
            for out in node.output:
                if types.get(out) == TensorProto.FLOAT or (node.op_type == "Constant" and out not in types):
                    half.add(out)
        new_nodes.append(node)
    # Graph outputs stay float32: the last fp16 tensor is renamed and cast back under the output's own name.
    renames = {o.name: f"{o.name}__fp16_value" for o in graph.output if o.name in half}
    for node in new_nodes:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]
    for name, inner in renames.items():
        new_nodes.append(helper.make_node("Cast", [inner], [name], to=TensorProto.FLOAT, name=f"{name}__to_fp32"))
    del graph.node[:]
    graph.node.extend(_topological(new_nodes, {*inits, *graph_inputs}))
    del graph.value_info[:]  # stale element types; the checker infers them again
    for value in graph.input:
        if value.name in graph_inputs and value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            raise EdgeClipError(f"graph input {value.name} is float16: the fp32 graph was expected")


def _retype_attributes(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(numpy_helper.from_array(_to_fp16(numpy_helper.to_array(attr.t)), attr.t.name))
        elif node.op_type in ("EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
            raise EdgeClipError(f"fp16 conversion does not know node {node.name} ({node.op_type})")


def _to_fp16(values: np.ndarray) -> np.ndarray:
    # Finite values beyond fp16's range become its largest value, not inf (attention masks use -1e9 and such).
    finite = np.isfinite(values)
    return np.where(finite, np.clip(values, -_FP16_MAX, _FP16_MAX), values).astype(np.float16)


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` ordered so that each comes after the producers of its inputs (inserted Casts go where they fit)."""
    ready, ordered, pending = set(available) | {""}, [], list(nodes)
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in ready})[:5]
            raise EdgeClipError(f"fp16 conversion made a graph with unresolved inputs {missing} (a bug)")
        pending = rest
    return ordered


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


def unpack_fp16_storage(model: onnx.ModelProto) -> int:
    """Undo `store_exact_fp16`: each fp16 initializer that only a Cast to float32 reads becomes a float32
    initializer of the Cast's output name, and the Cast goes. Returns how many were unpacked."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    kept_nodes, unpacked = [], {}
    for node in graph.node:
        source = node.input[0] if node.op_type == "Cast" and node.input else None
        init = inits.get(source) if source is not None else None
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (
            init is not None
            and init.data_type == TensorProto.FLOAT16
            and to == TensorProto.FLOAT
            and readers[init.name] == 1
        ):
            values = numpy_helper.to_array(init).astype(np.float32)
            unpacked[init.name] = numpy_helper.from_array(values, node.output[0])
            continue
        kept_nodes.append(node)
    if unpacked:
        initializers = [unpacked.get(i.name, i) for i in graph.initializer]
        del graph.initializer[:]
        graph.initializer.extend(initializers)
        del graph.node[:]
        graph.node.extend(kept_nodes)
    return len(unpacked)


def fp32_island_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that must stay float32: ISLAND_OPS and the projection tail (see the module doc)."""
    nodes = list(model.graph.node)
    _name_nodes(nodes)
    islands = {n.name for n in nodes if n.op_type in ISLAND_OPS}
    projections = [n for n in nodes if n.op_type in PROJECTION_OPS]
    if not projections:
        return islands
    projection = projections[-1]  # nodes are in topological order: the last matmul is the output projection
    producers = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    tail = {projection.name}
    frontier = list(projection.output)
    while frontier:  # everything downstream of the projection
        for n in consumers.get(frontier.pop(), []):
            if n.name not in tail:
                tail.add(n.name)
                frontier.extend(n.output)
    upstream = producers.get(projection.input[0])
    while upstream is not None and upstream.op_type in MOVEMENT_OPS:  # the pooled token on its way there
        tail.add(upstream.name)
        upstream = producers.get(upstream.input[0]) if upstream.input else None
    return islands | tail


def float16_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that compute in float16 (a float16 input or output, Casts excluded)."""
    types = _elem_types(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type != "Cast" and any(types.get(t) == TensorProto.FLOAT16 for t in (*n.input, *n.output))
    ]


def float16_island_inputs(model: onnx.ModelProto, islands: Iterable[str]) -> list[str]:
    """The islands (by name) that read or write a float16 tensor: none, after a correct conversion."""
    types = _elem_types(model)
    wanted = set(islands)
    return [
        n.name
        for n in model.graph.node
        if n.name in wanted and any(types.get(t) == TensorProto.FLOAT16 for t in (*n.input, *n.output) if t)
    ]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _name_nodes(nodes: list[onnx.NodeProto]) -> None:
    # The converter's block list works by node name; the dynamo exporter names every node, other tools may not.
    taken = {n.name for n in nodes if n.name}
    for i, node in enumerate(nodes):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
