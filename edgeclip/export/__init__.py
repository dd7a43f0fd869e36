"""Export a PyTorch CLIP to a verified ONNX bundle: one graph per tower, checked, compared with PyTorch, and, on
request, its fp16 and int8 variants behind their accuracy gate.

The steps, one module each: `towers` (the modules exported), `to_onnx` (torch -> checked ONNX), `passes` (graph
passes and lints), `parity` (fp32 graph against PyTorch), `pipeline` (`bundle_from_checkpoint`: load -> onnx ->
passes -> parity -> precisions -> manifest). Reduced precisions live in `edgeclip.precision` (no torch needed).
"""

from edgeclip.export.parity import MIN_COSINE, graph_parity
from edgeclip.export.passes import float_argmax_nodes, store_exact_fp16
from edgeclip.export.pipeline import ExportReport, bundle_from_checkpoint
from edgeclip.export.to_onnx import OPSET, onnx_from_torch
from edgeclip.export.towers import tower_module

__all__ = [
    "MIN_COSINE",
    "OPSET",
    "ExportReport",
    "bundle_from_checkpoint",
    "float_argmax_nodes",
    "graph_parity",
    "onnx_from_torch",
    "store_exact_fp16",
    "tower_module",
]
