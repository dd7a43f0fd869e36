"""Reduced precisions of a bundle's graphs: fp16 with float32 islands, int8 with explicit Q/DQ for TensorRT and in
the format ONNX Runtime's CPU kernels run fastest, calibration on the user's data, and the accuracy gate.

Needs onnx, ONNX Runtime and numpy only (no torch), so that `edgeclip quantize` runs on any install with onnx.

    fp16_from_fp32(src, dst)                          # edgeclip.precision.fp16
    int8_qdq_from_fp32(src, dst, batches)             # edgeclip.precision.int8 (TensorRT's format)
    int8_cpu_from_fp32(src, dst, batches, scheme=...) # ONNX Runtime CPU's fastest
    gate_graph(tower, reduced, fp32, other, data, t)  # edgeclip.precision.gate
    quantize_bundle(bundle, PrecisionOptions(...))    # edgeclip.precision.variants: add variants to a bundle
"""

from edgeclip.precision.fp16 import fp16_from_fp32
from edgeclip.precision.gate import FP16_GATE, INT8_GATE, GateThresholds, gate_graph
from edgeclip.precision.int8 import int8_cpu_from_fp32, int8_qdq_from_fp32
from edgeclip.precision.variants import PrecisionOptions, add_variants, quantize_bundle

__all__ = [
    "FP16_GATE",
    "INT8_GATE",
    "GateThresholds",
    "PrecisionOptions",
    "add_variants",
    "fp16_from_fp32",
    "gate_graph",
    "int8_cpu_from_fp32",
    "int8_qdq_from_fp32",
    "quantize_bundle",
]
