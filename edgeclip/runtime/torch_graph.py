"""ONNX graphs as PyTorch modules: how the torch backend runs a bundle's own graphs.

`module_from_onnx(path)` reads a graph and its weights (from the graph's initializers, external `NAME.onnx.data`
included; no code from the bundle is ever run) and returns an `OnnxModule`: an `nn.Module` whose buffers are the
weights and whose `forward` runs the graph's nodes in order, each through one small PyTorch function per ONNX op.
The translator is general over the ops in `OPS` (those edgeclip's exporter and precision passes emit for ViT and
ResNet CLIP towers, and a few neighbours); a graph with any other op is refused at load, naming every such op.

Each value of the graph falls in one of three classes, decided once at load:

- const: computed from initializers alone (weight casts and transposes of the fp16 graphs): folded at load.
- shape: computed from tensor shapes and consts only (Shape -> Gather -> Concat -> Reshape chains, the causal
  mask): computed on the CPU on the first call of each input shape and kept, so a later call of that shape runs
  device kernels only (what CUDA graph capture and torch.compile need: no host round trip in the loop).
- data: everything that depends on the input values: runs on the module's device.

Because the module runs the graph that was verified at export (fp32 or fp16), the fp16 graph's float32 islands
(LayerNorm, softmax, projection, L2 norm) are exactly where its Cast nodes put them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from edgeclip.errors import BackendError, BundleError

__all__ = ["OPS", "OnnxModule", "module_from_onnx", "onnx_ops", "torch_dtype"]

Value = torch.Tensor | None
Attrs = dict[str, Any]

_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_type: int) -> torch.dtype:
    """The torch dtype of an ONNX TensorProto element type."""
    if onnx_type not in _DTYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in onnx.TensorProto.DataType.values() else "?"
        raise BackendError(f"the torch backend has no dtype for ONNX element type {name} ({onnx_type})")
    return _DTYPES[onnx_type]


# ----------------------------------------------------------------------------- helpers of the op functions


def _ints(value: Value) -> list[int]:
    """A shape-like input (a small int64 tensor) as Python ints."""
    assert value is not None
    return [int(v) for v in value.reshape(-1).tolist()]


def _scalar(value: Value) -> float | int:
    assert value is not None
    item = value.reshape(-1)[0].item()
    return item if isinstance(item, (int, float)) else float(item)


def _axes(inputs: Sequence[Value], attrs: Attrs, index: int = 1) -> list[int] | None:
    """Reduce/Squeeze/Unsqueeze axes: an input since opsets 13/18, an attribute before."""
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index])
    axes = attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


def _pads(pads: Sequence[int], rank: int) -> tuple[list[int], list[int]]:
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, x2_end, ...) as (begins, ends) over `rank` spatial dims."""
    pads = list(pads) if pads else [0] * (2 * rank)
    return pads[:rank], pads[rank:]


def _check_auto_pad(attrs: Attrs, op: str) -> None:
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise BackendError(f"the torch backend runs {op} with explicit pads only, not auto_pad={auto_pad}")


def _reduce(fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor]) -> Callable[[list[Value], Attrs], Value]:
    def op(inputs: list[Value], attrs: Attrs) -> Value:
        x = inputs[0]
        assert x is not None
        axes = _axes(inputs, attrs)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, axes, keep)

    return op


def _binary(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[list[Value], Attrs], Value]:
    def op(inputs: list[Value], attrs: Attrs) -> Value:
        a, b = inputs[0], inputs[1]
        assert a is not None and b is not None
        return fn(a, b)

    return op


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[list[Value], Attrs], Value]:
    def op(inputs: list[Value], attrs: Attrs) -> Value:
        assert inputs[0] is not None
        return fn(inputs[0])

    return op


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates toward zero


# ----------------------------------------------------------------------------- the ops


def _conv(inputs: list[Value], attrs: Attrs) -> Value:
    x, w, b = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    assert x is not None and w is not None
    _check_auto_pad(attrs, "Conv")
    rank = w.dim() - 2
    begins, ends = _pads(attrs.get("pads", ()), rank)
    padding: int | list[int] = begins
    if begins != ends:  # asymmetric: pad explicitly (F.pad takes the last dim first)
        x = F.pad(x, [p for d in reversed(range(rank)) for p in (begins[d], ends[d])])
        padding = 0
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if conv is None:
        raise BackendError(f"the torch backend runs 1-D to 3-D Conv only, not {rank}-D")
    strides = attrs.get("strides", [1] * rank)
    dilations = attrs.get("dilations", [1] * rank)
    return conv(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=attrs.get("group", 1))


def _pool(kind: str) -> Callable[[list[Value], Attrs], Value]:
    def op(inputs: list[Value], attrs: Attrs) -> Value:
        x = inputs[0]
        assert x is not None
        _check_auto_pad(attrs, kind)
        kernel = list(attrs["kernel_shape"])
        rank = len(kernel)
        strides = attrs.get("strides", [1] * rank)
        begins, ends = _pads(attrs.get("pads", ()), rank)
        if begins != ends:
            raise BackendError(f"the torch backend runs {kind} with symmetric pads only, got {attrs.get('pads')}")
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "MaxPool":
            if rank != 2 or any(d != 1 for d in attrs.get("dilations", [1, 1])) or len(attrs.get("_outputs", ())) > 1:
                raise BackendError("the torch backend runs 2-D MaxPool without dilations or indices only")
            return F.max_pool2d(x, kernel, strides, begins, ceil_mode=ceil)
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}.get(rank)
        if pool is None:
            raise BackendError(f"the torch backend runs 1-D to 3-D AveragePool only, not {rank}-D")
        include = bool(attrs.get("count_include_pad", 0))
        return pool(x, kernel, strides, begins, ceil_mode=ceil, count_include_pad=include)

    return op


def _gemm(inputs: list[Value], attrs: Attrs) -> Value:
    a, b, c = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    assert a is not None and b is not None
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if c is None or beta == 0.0:
        out = a @ b
        return out if alpha == 1.0 else alpha * out
    return torch.addmm(c, a, b, beta=beta, alpha=alpha) if c.dim() <= 2 else beta * c + alpha * (a @ b)


def _layer_norm(inputs: list[Value], attrs: Attrs) -> Value:
    x, scale, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    assert x is not None
    axis = int(attrs.get("axis", -1)) % x.dim()
    shape = x.shape[axis:]
    eps = float(attrs.get("epsilon", 1e-5))
    if x.dtype != torch.float32 and int(attrs.get("stash_type", 1)) == 1:  # statistics in float32, as ONNX says
        y = F.layer_norm(
            x.float(), shape, None if scale is None else scale.float(), None if bias is None else bias.float(), eps
        )
        return y.to(x.dtype)
    return F.layer_norm(x, shape, scale, bias, eps)


def _batch_norm(inputs: list[Value], attrs: Attrs) -> Value:
    x, scale, bias, mean, var = inputs[:5]
    assert x is not None
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, float(attrs.get("epsilon", 1e-5)))


def _softmax(inputs: list[Value], attrs: Attrs) -> Value:
    assert inputs[0] is not None
    return torch.softmax(inputs[0], dim=int(attrs.get("axis", -1)))


def _clip(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    lo = _scalar(low) if low is not None else attrs.get("min")
    hi = _scalar(high) if high is not None else attrs.get("max")
    return torch.clamp(x, lo, hi)


def _cast(inputs: list[Value], attrs: Attrs) -> Value:
    assert inputs[0] is not None
    return inputs[0].to(torch_dtype(int(attrs["to"])))


def _cast_like(inputs: list[Value], attrs: Attrs) -> Value:
    assert inputs[0] is not None and inputs[1] is not None
    return inputs[0].to(inputs[1].dtype)


def _concat(inputs: list[Value], attrs: Attrs) -> Value:
    return torch.cat([t for t in inputs if t is not None], dim=int(attrs["axis"]))


def _reshape(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    shape = _ints(inputs[1])
    if not attrs.get("allowzero", 0):  # 0 copies the input's dim
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1) if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _shape(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    dims = list(x.shape)
    start, end = attrs.get("start", 0), attrs.get("end")
    return torch.tensor(dims[start:end], dtype=torch.int64)


def _size(inputs: list[Value], attrs: Attrs) -> Value:
    assert inputs[0] is not None
    return torch.tensor(inputs[0].numel(), dtype=torch.int64)


def _gather(inputs: list[Value], attrs: Attrs) -> Value:
    data, indices = inputs[0], inputs[1]
    assert data is not None and indices is not None
    axis = int(attrs.get("axis", 0)) % data.dim()
    idx = torch.where(indices < 0, indices + data.shape[axis], indices).to(torch.int64)
    flat = data.index_select(axis, idx.reshape(-1))
    return flat.reshape(*data.shape[:axis], *idx.shape, *data.shape[axis + 1 :])


def _gather_nd(inputs: list[Value], attrs: Attrs) -> Value:
    data, indices = inputs[0], inputs[1]
    assert data is not None and indices is not None
    b = int(attrs.get("batch_dims", 0))
    k = indices.shape[-1]
    batch = data.shape[:b]
    n = math.prod(batch)
    flat_data = data.reshape(n, *data.shape[b:])  # (N, *rest)
    flat_idx = indices.reshape(n, -1, k).to(torch.int64)  # (N, Q, k)
    # Negative indices wrap, one column at a time with Python ints: no host-to-device copy (CUDA graph capture).
    columns = [torch.where(c < 0, c + data.shape[b + j], c) for j, c in enumerate(flat_idx.unbind(-1))]
    rows = torch.arange(n, device=data.device)[:, None].expand(n, flat_idx.shape[1])
    picked = flat_data[(rows, *columns)]  # (N, Q, *data.shape[b + k:])
    return picked.reshape(*batch, *indices.shape[b:-1], *data.shape[b + k :])


def _expand(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    shape = torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1])))  # ONNX Expand broadcasts both ways
    return x.expand(shape)


def _slice(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    starts, ends = _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise BackendError(f"the torch backend runs Slice with positive steps only, got step {step}")
        dim = x.shape[axis % x.dim()]
        # Clamped to [-dim, dim], Python slicing means what ONNX does (INT64_MAX ends would warn in torch).
        index[axis % x.dim()] = slice(max(-dim, min(start, dim)), max(-dim, min(end, dim)), step)
    return x[tuple(index)]


def _squeeze(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    axes = _axes(inputs, attrs)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes)) if axes else x


def _unsqueeze(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    axes = _axes(inputs, attrs) or []
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _transpose(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    perm = attrs.get("perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


def _range(inputs: list[Value], attrs: Attrs) -> Value:
    start, limit, delta = inputs[0], inputs[1], inputs[2]
    assert start is not None and limit is not None and delta is not None
    return torch.arange(_scalar(start), _scalar(limit), _scalar(delta), dtype=start.dtype, device=start.device)


def _trilu(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    k = int(_scalar(inputs[1])) if len(inputs) > 1 and inputs[1] is not None else 0
    return torch.triu(x, k) if attrs.get("upper", 1) else torch.tril(x, k)


def _arg(fn: Callable[..., torch.Tensor]) -> Callable[[list[Value], Attrs], Value]:
    def op(inputs: list[Value], attrs: Attrs) -> Value:
        x = inputs[0]
        assert x is not None
        axis, keep = int(attrs.get("axis", 0)), bool(attrs.get("keepdims", 1))
        if attrs.get("select_last_index", 0):
            flipped = fn(x.flip(axis), dim=axis, keepdim=keep)
            return x.shape[axis] - 1 - flipped
        return fn(x, dim=axis, keepdim=keep)  # the first of equal values, as ONNX says

    return op


def _where(inputs: list[Value], attrs: Attrs) -> Value:
    cond, a, b = inputs[0], inputs[1], inputs[2]
    assert cond is not None and a is not None and b is not None
    return torch.where(cond.to(torch.bool), a, b)


def _constant_of_shape(inputs: list[Value], attrs: Attrs) -> Value:
    value = attrs.get("value")
    fill = torch.from_numpy(numpy_helper.to_array(value).copy()) if value is not None else torch.zeros(1)
    return torch.full(_ints(inputs[0]), fill.reshape(-1)[0].item(), dtype=fill.dtype)


def _gelu(inputs: list[Value], attrs: Attrs) -> Value:
    assert inputs[0] is not None
    return F.gelu(inputs[0], approximate=str(attrs.get("approximate", "none")))


def _lp_normalization(inputs: list[Value], attrs: Attrs) -> Value:
    x = inputs[0]
    assert x is not None
    p = int(attrs.get("p", 2))
    return x / torch.linalg.vector_norm(x, p, dim=int(attrs.get("axis", -1)), keepdim=True)  # no epsilon, as ONNX


def _identity(inputs: list[Value], attrs: Attrs) -> Value:
    return inputs[0]


def _pow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.pow(a, b.to(a.dtype) if a.dtype.is_floating_point else b).to(a.dtype)


OpFn = Callable[[list[Value], Attrs], Value]
OPS: dict[str, OpFn] = {
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(_pow),
    "MatMul": _binary(torch.matmul),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Not": _unary(torch.logical_not),
    "Neg": _unary(torch.neg),
    "Sqrt": _unary(torch.sqrt),
    "Reciprocal": _unary(torch.reciprocal),
    "Exp": _unary(torch.exp),
    "Erf": _unary(torch.erf),
    "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid),
    "Relu": _unary(torch.relu),
    "Gelu": _gelu,
    "Identity": _identity,
    "Conv": _conv,
    "AveragePool": _pool("AveragePool"),
    "MaxPool": _pool("MaxPool"),
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "BatchNormalization": _batch_norm,
    "Gemm": _gemm,
    "LayerNormalization": _layer_norm,
    "Softmax": _softmax,
    "LpNormalization": _lp_normalization,
    "ReduceL2": _reduce(lambda x, axes, keep: torch.linalg.vector_norm(x, 2, dim=axes, keepdim=keep)),
    "ReduceSum": _reduce(lambda x, axes, keep: torch.sum(x, dim=axes, keepdim=keep)),
    "ReduceMean": _reduce(lambda x, axes, keep: torch.mean(x, dim=axes, keepdim=keep)),
    "ReduceMax": _reduce(lambda x, axes, keep: torch.amax(x, dim=axes, keepdim=keep)),
    "Clip": _clip,
    "Cast": _cast,
    "CastLike": _cast_like,
    "Concat": _concat,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Shape": _shape,
    "Size": _size,
    "Gather": _gather,
    "GatherND": _gather_nd,
    "Expand": _expand,
    "Slice": _slice,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Range": _range,
    "Trilu": _trilu,
    "ArgMax": _arg(torch.argmax),
    "ArgMin": _arg(torch.argmin),
    "Where": _where,
    "ConstantOfShape": _constant_of_shape,
}
# Inputs read as Python numbers (shapes, axes, bounds), never as device tensors, by op: index -> everything after.
_PARAM_FROM: dict[str, int] = {
    "Reshape": 1, "Expand": 1, "Slice": 1, "Squeeze": 1, "Unsqueeze": 1, "ReduceL2": 1, "ReduceSum": 1,
    "ReduceMean": 1, "ReduceMax": 1, "Clip": 1, "Trilu": 1, "ConstantOfShape": 0,
}  # fmt: skip
_SHAPE_OF = ("Shape", "Size")  # ops that read only the shape of their input


def onnx_ops(model: onnx.ModelProto) -> set[str]:
    """The op types of a graph's nodes (top-level graph; edgeclip graphs have no subgraphs)."""
    return {n.op_type for n in model.graph.node}


# ----------------------------------------------------------------------------- the module


class _Step:
    """One node: its op function, input and output names, attributes, and its class (const, shape or data)."""

    __slots__ = ("attrs", "fn", "inputs", "kind", "name", "op", "outputs", "params")

    def __init__(self, node: onnx.NodeProto, kind: str) -> None:
        self.name = node.name or node.output[0]
        self.op = node.op_type
        self.fn = OPS[node.op_type]
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.attrs = {a.name: _attribute(a) for a in node.attribute} | {"_outputs": self.outputs}
        self.kind = kind
        self.params = _PARAM_FROM.get(node.op_type, len(node.input))  # inputs from here on are Python numbers


def _attribute(a: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode()
    return value


class OnnxModule(torch.nn.Module):
    """An ONNX graph as an nn.Module: `forward(*inputs) -> tuple of outputs`, in the graph's input/output order.

    Weights are buffers (`.to(device)` moves them); see the module docstring for how values are classed.
    """

    def __init__(self, model: onnx.ModelProto, label: str = "graph") -> None:
        super().__init__()
        self.label = label
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in OPS})
        if unsupported:
            raise BackendError(
                f"the torch backend cannot run {label}: it has ops {', '.join(unsupported)} that its ONNX translator "
                f"does not cover (it covers {', '.join(sorted(OPS))}); use an ONNX Runtime or TensorRT backend"
            )
        consts: dict[str, torch.Tensor] = {i.name: _tensor(i) for i in graph.initializer}
        known = set(consts) | {i.name for i in graph.input} | {""}
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        # Element types as the graph declares them: the runner checks them against the bundle's manifest.
        self.dtypes = {v.name: str(torch_dtype(v.type.tensor_type.elem_type)).replace("torch.", "")
                       for v in (*graph.input, *graph.output) if v.name not in consts}  # fmt: skip
        kinds: dict[str, str] = dict.fromkeys(consts, "const") | dict.fromkeys(self.input_names, "data")
        kinds[""] = "const"
        steps: list[_Step] = []
        for node in graph.node:
            missing = [name for name in node.input if name not in known]
            if missing:
                raise BundleError(f"{label}: node {node.name} reads {missing}, which nothing before it makes")
            if node.op_type == "Constant":
                consts[node.output[0]] = _constant(node)
                kinds[node.output[0]] = "const"
                known.add(node.output[0])
                continue
            sources = [kinds[name] for name in node.input if name]
            if node.op_type in _SHAPE_OF:
                kind = "const" if sources[0] == "const" else "shape"
            elif all(s == "const" for s in sources):
                kind = "const"
            elif all(s in ("const", "shape") for s in sources):
                kind = "shape"
            else:
                kind = "data"
            step = _Step(node, kind)
            if kind == "const":  # folded now, once, on the CPU
                _store(step, _evaluate(step, [consts.get(n) for n in step.inputs]), consts)
            else:
                steps.append(step)
            for out in node.output:
                kinds[out] = kind
                known.add(out)
        self._steps = steps
        self._kinds = kinds
        # Consts that data nodes read as tensors become buffers (moved with the module); the rest stay host values.
        on_device = {n for s in steps if s.kind == "data" for n in s.inputs[: s.params] if n and kinds[n] == "const"}
        on_device |= {n for n in self.output_names if kinds.get(n) == "const"}
        self._buffer_of: dict[str, str] = {}
        for i, name in enumerate(sorted(on_device)):
            self.register_buffer(f"w{i}", consts[name], persistent=False)
            self._buffer_of[name] = f"w{i}"
        host_needed = {n for s in steps for i, n in enumerate(s.inputs) if n and kinds[n] == "const"} - on_device
        host_needed |= {n for s in steps if s.kind == "shape" for n in s.inputs if n and kinds[n] == "const"}
        host_needed |= {n for s in steps for n in s.inputs[s.params :] if n and kinds[n] == "const"}
        self._host = {n: consts[n] for n in host_needed}
        # Shape values by (device, input shapes): computed by the first call of those shapes, then reused.
        self._shape_values: dict[tuple[Any, ...], dict[str, torch.Tensor]] = {}
        self._lock = threading.Lock()

    @property
    def ops(self) -> set[str]:
        return {s.op for s in self._steps}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise BackendError(f"{self.label} takes {len(self.input_names)} inputs, got {len(inputs)}")
        device = inputs[0].device if inputs else torch.device("cpu")
        key = (str(device), *(tuple(t.shape) for t in inputs))
        cached = self._shape_values.get(key)
        fresh: dict[str, torch.Tensor] = {}
        shape_host = cached if cached is not None else fresh
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        buffers = {name: getattr(self, attr) for name, attr in self._buffer_of.items()}
        for step in self._steps:
            if step.kind == "shape":
                if cached is None:
                    if step.op in _SHAPE_OF:  # only the shape is read: never copy a data tensor to the host
                        source = step.inputs[0]
                        values = [env[source] if source in env else self._host_value(source, shape_host, env)]
                    else:
                        values = [self._host_value(n, shape_host, env) for n in step.inputs]
                    _store(step, _evaluate(step, values), fresh)
                continue
            args: list[Value] = []
            for i, name in enumerate(step.inputs):
                if not name:
                    args.append(None)
                elif i >= step.params:
                    args.append(self._host_value(name, shape_host, env))
                elif name in env:
                    args.append(env[name])
                elif name in buffers:
                    args.append(buffers[name])
                else:  # a shape value read as a tensor (a mask, positions): kept on the device per input shape
                    args.append(self._device_shape_value(name, shape_host, device))
            _store(step, _evaluate(step, args), env)
        if cached is None:
            with self._lock:
                self._shape_values.setdefault(key, fresh)
        out = []
        for name in self.output_names:
            value = env.get(name, buffers.get(name))
            if value is None:
                value = self._device_shape_value(name, shape_host, device)
            out.append(value)
        return tuple(out)

    def _host_value(self, name: str, shape_host: dict[str, torch.Tensor], env: dict[str, torch.Tensor]) -> Value:
        if not name:
            return None
        if name in self._host:
            return self._host[name]
        if name in shape_host:
            return shape_host[name]
        if name in env:  # a data value read as a number: a device sync, fine outside hot paths
            return env[name].cpu()
        attr = self._buffer_of.get(name)
        assert attr is not None, name
        return getattr(self, attr).cpu()

    def _device_shape_value(self, name: str, shape_host: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        key = f"{name}@{device}"
        value = shape_host.get(key)
        if value is None:
            value = self._host_value(name, shape_host, {})
            assert value is not None
            value = value.to(device)
            shape_host[key] = value
        return value


def _evaluate(step: _Step, inputs: list[Value]) -> Value | tuple[Value, ...]:
    try:
        return step.fn(inputs, step.attrs)
    except BackendError:
        raise
    except Exception as exc:
        shapes = [None if t is None else (tuple(t.shape), str(t.dtype).replace("torch.", "")) for t in inputs]
        raise BackendError(
            f"the torch backend failed at node {step.name} ({step.op}) on inputs {shapes}: {exc}"
        ) from exc


def _store(step: _Step, result: Value | tuple[Value, ...], env: dict[str, torch.Tensor]) -> None:
    values = result if isinstance(result, tuple) else (result,)
    for name, value in zip(step.outputs, values, strict=False):
        if name and value is not None:
            env[name] = value
    if len(values) < len([o for o in step.outputs if o]):
        raise BackendError(f"the torch backend computes only the first output of {step.op} (node {step.name})")


def _tensor(proto: onnx.TensorProto) -> torch.Tensor:
    array = numpy_helper.to_array(proto)
    if array.dtype == object:
        raise BackendError(f"initializer {proto.name} holds strings, which no edgeclip graph has")
    return torch.from_numpy(np.array(array, copy=True))  # a copy: the proto's buffer must not be shared


def _constant(node: onnx.NodeProto) -> torch.Tensor:
    attr = node.attribute[0]
    if attr.name == "value":
        return _tensor(attr.t)
    value = helper.get_attribute_value(attr)
    dtype = {"value_float": torch.float32, "value_floats": torch.float32, "value_int": torch.int64,
             "value_ints": torch.int64}.get(attr.name)  # fmt: skip
    if dtype is None:
        raise BackendError(f"the torch backend cannot read Constant {node.name} ({attr.name})")
    return torch.tensor(value, dtype=dtype)


def module_from_onnx(path: str | Path, label: str | None = None) -> OnnxModule:
    """The graph at `path` (weights from its initializers, external data files beside it included) as a module."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf and file errors
        raise BundleError(f"could not read the ONNX graph {path} ({type(exc).__name__}: {exc})") from exc
    return OnnxModule(model, label or path.name)
