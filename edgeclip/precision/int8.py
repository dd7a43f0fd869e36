"""fp32 graph -> int8 graphs: explicit Q/DQ for TensorRT, and the format ONNX Runtime's CPU kernels run fastest.

The quantization itself is ONNX Runtime's (`onnxruntime.quantization.quantize_static` / `quantize_dynamic`), with
edgeclip choosing what is quantized and how:

- TensorRT ("qdq-s8s8"): QuantizeLinear/DequantizeLinear pairs, symmetric int8 activations and weights (zero
  points 0), weights per output channel, one Q/DQ pair per consumer, biases left in float (TensorRT fuses them).
  Only the linear layers (MatMul/Gemm with a constant weight, and Conv) are quantized: attention's activation x
  activation products, the residual Adds (outliers near 1000 in CLIP ViTs), LayerNorm and Softmax stay in float, as
  do the nodes of `exclude` (by default the stem and the final projection).
- ONNX Runtime CPU ("dynamic-u8s8", "qdq-u8s8" or "qoperator-u8s8"): ONNX Runtime's CPU kernels run its s8s8 Q/DQ
  format no faster than fp32; unsigned activations with signed weights take the VNNI path. Their weights use 7 of
  the 8 bits (`reduce_range`): x86 CPUs without VNNI (AVX2, AVX-512F without VNNI) multiply u8 by s8 with an
  instruction that adds pairs of products into a saturating int16, which 8-bit weights overflow. Measured on a
  ViT-B/32-shaped model on an AVX2 CPU: image embeddings' cosine to fp32 0.9897 with 8-bit weights, 0.9996 with
  7-bit ones, at the same speed (benchmarks/RESULTS.md); on VNNI CPUs both are exact sums. The dynamic scheme's
  weights have a scale per output column, which wins back most of what the 7th bit costs. A bundle made on one
  CPU runs on others, so its CPU graph must be right on every x86 CPU, not only on the one its gate ran on.
  The dynamic scheme's graph also has each self-attention block fused into ONNX Runtime's Attention kernel
  (`edgeclip.precision.attention`), which its quantizer turns into QAttention: the same outputs, bit for bit, as
  the unfused int8 graph on ONNX Runtime 1.32's CPU provider, 1.07-1.12x faster (ViT-B/32, batch 8).

Every graph made here is checked by the accuracy gate (`edgeclip.precision.gate`) before it enters a bundle.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from edgeclip.errors import EdgeClipError, InputError
from edgeclip.precision.attention import fuse_attention
from edgeclip.precision.fp16 import store_exact_fp16, unpack_fp16_storage

CalibMethod = Literal["percentile", "entropy", "minmax"]
CpuScheme = Literal["dynamic-u8s8", "qdq-u8s8", "qoperator-u8s8"]
CALIB_METHODS: tuple[str, ...] = ("percentile", "entropy", "minmax")
CPU_SCHEMES: tuple[str, ...] = ("dynamic-u8s8", "qdq-u8s8", "qoperator-u8s8")
TENSORRT_SCHEME = "qdq-s8s8"
LINEAR_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Int8Graph:
    """What an int8 pass wrote: the scheme, the nodes quantized and those left in float by request."""

    path: Path
    scheme: str
    quantized: tuple[str, ...]
    excluded: tuple[str, ...]
    calibration: str  # method and sample count, "" for dynamic
    attention_fused: int = 0  # blocks run by ONNX Runtime's Attention / QAttention kernel (CPU graphs)


def linear_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the linear layers, in graph order: MatMul/Gemm whose weight is a constant, and Conv."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type in ("Constant", "Cast") and _const_input(n, constants)
                  for o in n.output}  # fmt: skip
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" or (n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in constants)
    ]


def default_exclusions(model: onnx.ModelProto) -> list[str]:
    """The linear layers left in float by default: the first (the stem or patch embedding, which sees raw pixels or
    embeddings) and the last (the output projection, whose error goes straight into the embedding)."""
    nodes = linear_nodes(model)
    return sorted({nodes[0], nodes[-1]}) if nodes else []


def int8_qdq_from_fp32(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    method: CalibMethod = "percentile",
    exclude: Sequence[str] | None = None,
    percentile: float = 99.999,
    cache: Path | None = None,
) -> Int8Graph:
    """TensorRT's int8: explicit symmetric Q/DQ on the linear layers, calibrated on `calibration` (input batches)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with _unpacked(src) as (path, model):
        excluded = list(default_exclusions(model) if exclude is None else exclude)
        _check_names(model, excluded)
        extra = {
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "DedicatedQDQPair": True,  # a Q/DQ pair per consumer: what TensorRT's fusions expect
            "QuantizeBias": False,  # TensorRT takes float biases and fuses them into the int8 kernels
            "MatMulConstBOnly": True,  # linear layers only, not attention's activation x activation products
            "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # MatMul weights are (in, out): channels on axis 1
            **_calib_options(method, percentile),
        }
        with _quiet():
            quantize_static(
                str(path),
                str(dst),
                _Reader(model.graph.input[0].name, calibration),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(LINEAR_OPS),
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=_calib_method(method),
                extra_options=extra,
                calibration_cache_path=cache,
            )
        quantized = [n for n in linear_nodes(model) if n not in excluded]
    out = onnx.load(str(dst))
    if dedicate_qdq_pairs(out, set(quantized)):
        onnx.save(out, str(dst))
    _check(dst)
    return Int8Graph(Path(dst), TENSORRT_SCHEME, tuple(quantized), tuple(excluded), f"{method}, {_rows(calibration)}")


def int8_cpu_from_fp32(
    src: str | Path,
    dst: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    scheme: CpuScheme = "dynamic-u8s8",
    method: CalibMethod = "percentile",
    exclude: Sequence[str] | None = None,
    percentile: float = 99.999,
    cache: Path | None = None,
) -> Int8Graph:
    """The int8 graph ONNX Runtime's CPU kernels run fastest (u8 activations, s8 weights)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if scheme not in CPU_SCHEMES:
        raise InputError(f"unknown CPU int8 scheme {scheme!r}; choose one of {', '.join(CPU_SCHEMES)}")
    with _unpacked(src) as (path, model):
        excluded = list(default_exclusions(model) if exclude is None else exclude)
        _check_names(model, excluded)
        ops = ("MatMul", "Gemm") if scheme == "dynamic-u8s8" else LINEAR_OPS
        by_name = {n.name: n.op_type for n in model.graph.node}
        quantized = [n for n in linear_nodes(model) if n not in excluded and by_name[n] in ops]
        fused, skip = 0, excluded
        if scheme == "dynamic-u8s8":
            # ONNX Runtime's Attention kernel for each block; its quantizer makes it QAttention (the QKV projection
            # in int8, per column, 7 bits). A projection left in float leaves its Attention node in float.
            fusion = fuse_attention(model)
            if fusion.fused:
                onnx.save(model, str(path))
                renamed = dict(fusion.projections)
                fused, skip = fusion.fused, [renamed.get(n, n) for n in excluded]
        with _quiet():
            if scheme == "dynamic-u8s8":
                # Dynamic quantization of MatMul/Gemm; ONNX Runtime's ConvInteger is slower than its float Conv.
                quantize_dynamic(
                    str(path),
                    str(dst),
                    op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                    # A scale per output column wins back most of what the 7th bit costs (ViT-B/32 text tower,
                    # cosine to fp32: 8-bit 0.99918, 7-bit 0.99721, 7-bit per column 0.99857; image 0.99961 ->
                    # 0.99974), at the same speed.
                    per_channel=True,
                    reduce_range=True,  # 7-bit weights: no int16 saturation without VNNI (above)
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=skip,
                    extra_options={"MatMulConstBOnly": True},
                )
                how = ""
            else:
                quantize_static(
                    str(path),
                    str(dst),
                    _Reader(model.graph.input[0].name, calibration),
                    quant_format=QuantFormat.QDQ if scheme == "qdq-u8s8" else QuantFormat.QOperator,
                    op_types_to_quantize=list(LINEAR_OPS),
                    per_channel=False,
                    reduce_range=True,  # 7-bit weights: no int16 saturation without VNNI (above)
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=_calib_method(method),
                    extra_options={"MatMulConstBOnly": True, **_calib_options(method, percentile)},
                    calibration_cache_path=cache,
                )
                how = f"{method}, {_rows(calibration)}"
    _check(dst)
    return Int8Graph(Path(dst), scheme, tuple(quantized), tuple(excluded), how, fused)


def dedicate_qdq_pairs(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Give each quantized consumer its own Q/DQ pair of an activation, and let the other consumers read the float
    tensor. ONNX Runtime's `DedicatedQDQPair` still hands one pair to every reader of a tensor (a ResNet's
    AveragePool shortcut read the Conv's quantized input). Returns how many inputs were rewired."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    nodes, changed = [], 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in inits:
                continue  # not an activation's Q/DQ (weights are quantized initializers + DQ)
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            if node.name not in quantized:
                node.input[i] = q.input[0]  # a float consumer reads the float tensor
                changed += 1
        nodes.append(node)
    # Now every remaining DQ output is read by quantized nodes only; split shared pairs.
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    extra = []
    for dq in [n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in inits]:
        q = producer.get(dq.input[0])
        users = readers.get(dq.output[0], [])
        if q is None or q.op_type != "QuantizeLinear" or len(users) < 2:
            continue
        for k, user in enumerate(users[1:], start=1):
            q2 = onnx.helper.make_node("QuantizeLinear", list(q.input), [f"{q.output[0]}_{k}"], name=f"{q.name}_{k}")
            q2.attribute.extend(q.attribute)
            dq2 = onnx.helper.make_node("DequantizeLinear", [q2.output[0], *dq.input[1:]], [f"{dq.output[0]}_{k}"],
                                        name=f"{dq.name}_{k}")  # fmt: skip
            dq2.attribute.extend(dq.attribute)
            user.input[:] = [dq2.output[0] if x == dq.output[0] else x for x in user.input]
            extra.append((dq, [q2, dq2]))
            changed += 1
    if extra:
        order = []
        for node in nodes:
            order.append(node)
            order += [n for anchor, pair in extra if anchor is node for n in pair]
        nodes = order
    # Q nodes nobody reads any more (their float consumers were rewired) go.
    read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    while True:
        dead = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read]
        if not dead:
            break
        nodes = [n for n in nodes if n not in dead]
        read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def local_errors(
    fp32: str | Path, quantized: str | Path, nodes: Sequence[str], batches: Sequence[np.ndarray]
) -> dict[str, float]:
    """How much error each quantized node adds: the relative error of its output (quantized graph against fp32)
    minus that of its float input, over `batches`. The nodes that add the most are the ones to leave in float."""
    import onnxruntime as ort

    ref_model, low_model = onnx.load(str(fp32)), onnx.load(str(quantized))
    unpack_fp16_storage(ref_model)
    by_name = {n.name: n for n in ref_model.graph.node}
    low_tensors = {o for n in low_model.graph.node for o in n.output}
    # A QKV projection fused into an Attention node has no output of its own in the int8 graph: it is judged by the
    # first tensor after it that both graphs have (the attention block's output).
    pairs = {
        name: (by_name[name].input[0], _shared_after(ref_model.graph, by_name[name].output[0], low_tensors))
        for name in nodes
        if name in by_name
    }
    tensors = sorted({t for pair in pairs.values() for t in pair})
    tensors = [t for t in tensors if t in low_tensors]
    runs = []
    for model in (ref_model, low_model):
        for name in tensors:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        outs = [dict(zip([o.name for o in session.get_outputs()], session.run(None, {feed: b}), strict=True))
                for b in batches]  # fmt: skip
        runs.append({t: np.concatenate([o[t].reshape(len(o[t]), -1) for o in outs]) for t in tensors})
    ref, low = runs

    def error(t: str) -> float:
        if t not in ref:
            return 0.0
        return float(np.linalg.norm(low[t] - ref[t])) / max(float(np.linalg.norm(ref[t])), 1e-12)

    return {name: error(out) - error(inp) for name, (inp, out) in pairs.items()}


def _shared_after(graph: onnx.GraphProto, tensor: str, shared: set[str]) -> str:
    """`tensor` if `shared` has it, else the nearest tensor downstream of it in `graph` that `shared` has (breadth
    first); `tensor` itself when there is none."""
    if tensor in shared:
        return tensor
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    seen, frontier = {tensor}, [tensor]
    while frontier:
        later = [o for t in frontier for n in consumers.get(t, []) for o in n.output if o not in seen]
        for name in later:
            if name in shared:
                return name
        seen.update(later)
        frontier = later
    return tensor


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self._name = name
        self._batches = list(batches)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {self._name: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


@contextlib.contextmanager
def _unpacked(src: str | Path) -> Iterator[tuple[Path, onnx.ModelProto]]:
    """The graph with fp16-stored weights unpacked to float32 initializers (so that the quantizer sees the weights
    of each MatMul and Conv), in a temporary file."""
    model = onnx.load(str(src))
    unpack_fp16_storage(model)
    with tempfile.TemporaryDirectory(prefix="edgeclip-int8-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(path))
        yield path, model


def _calib_method(method: str) -> object:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy,
               "minmax": CalibrationMethod.MinMax}  # fmt: skip
    if method not in methods:
        raise InputError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
    return methods[method]


def _calib_options(method: str, percentile: float) -> dict[str, object]:
    if method == "percentile":
        return {"CalibPercentile": percentile, "CalibTensorRangeSymmetric": True}
    return {}


def _check_names(model: onnx.ModelProto, names: Sequence[str]) -> None:
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        linear = linear_nodes(model)
        raise InputError(
            f"--int8-skip names nodes the graph does not have: {', '.join(unknown)}; its linear layers are "
            f"{', '.join(linear[:8])}{' ...' if len(linear) > 8 else ''}"
        )


def _check(path: str | Path) -> None:
    model = onnx.load(str(path))
    # The float weights the quantizer left (embeddings, excluded layers) go back to the lossless fp16 storage that
    # export gave them: the graph computes the same, and the text graph's embedding table does not double in size.
    if prune_unused_initializers(model) + store_exact_fp16(model):
        onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise EdgeClipError(f"the int8 graph {Path(path).name} fails the ONNX checker: {exc}") from exc


def prune_unused_initializers(model: onnx.ModelProto) -> int:
    """Drop the initializers no node reads (the quantizer leaves scales and zero points of the tensors it decided
    not to quantize). Returns how many went."""
    graph = model.graph
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in read]
    dropped = len(graph.initializer) - len(kept)
    if dropped:
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return dropped


def _rows(batches: Sequence[np.ndarray]) -> str:
    return f"{sum(len(b) for b in batches)} samples"


def _const_input(node: onnx.NodeProto, constants: set[str]) -> bool:
    return node.op_type == "Constant" or (bool(node.input) and node.input[0] in constants)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # The quantizer logs every tensor it skips and its calibrator prints its progress to stdout (which would break
    # `--json` output): nothing a user can act on.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)
