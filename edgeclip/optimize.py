"""ONNX Runtime's transformer fusions for an exported tower graph, as one pure file-to-file step.

`onnxruntime.transformers.optimizer.optimize_model(model_type="clip")` rewrites attention, LayerNorm + residual Add,
QuickGelu and bias + Gelu into fused kernels of the `com.microsoft` domain. Those kernels exist in ONNX Runtime
only: a fused graph is meant for the ONNX Runtime backends, never for TensorRT, which must keep compiling the plain
graph. Needs onnx and ONNX Runtime (the export extra), not torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.errors import BackendError, InputError

__all__ = ["fuse_transformer", "fused_parity"]


def fuse_transformer(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    num_heads: int = 0,
    hidden_size: int = 0,
    opt_level: int = 0,
) -> dict[str, Any]:
    """Write the graph at `model_path` with ONNX Runtime's CLIP fusions to `out_path`; return what was fused.

    num_heads / hidden_size: 0 lets the optimizer read them from the graph. opt_level 0 runs the Python fusions
    alone (the graph stays portable across ONNX Runtime's providers; the session still optimizes it when it
    starts); 1 runs ONNX Runtime's basic optimizations first. Returns {"fused": {op: count}, "nodes_before",
    "nodes_after", "ops_after": {op: count}}.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    source, target = Path(model_path), Path(out_path)
    if not source.is_file():
        raise InputError(f"no ONNX graph at {source}")
    if target.resolve() == source.resolve():
        raise InputError(f"fuse_transformer writes a new file: out_path {target} is the input graph")
    if opt_level not in (0, 1):
        raise InputError(f"opt_level must be 0 (Python fusions only) or 1 (ONNX Runtime basic first), got {opt_level}")
    before = len(onnx.load(str(source), load_external_data=False).graph.node)
    try:
        optimized = optimize_model(
            str(source), model_type="clip", num_heads=num_heads, hidden_size=hidden_size, opt_level=opt_level
        )
    except Exception as exc:  # the optimizer raises whatever its graph walks hit
        raise BackendError(f"ONNX Runtime's transformer optimizer failed on {source}: {exc}") from exc
    fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
    target.parent.mkdir(parents=True, exist_ok=True)
    optimized.save_model_to_file(str(target), use_external_data_format=False)
    ops: dict[str, int] = {}
    for node in optimized.model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"fused": fused, "nodes_before": before, "nodes_after": len(optimized.model.graph.node), "ops_after": ops}


def fused_parity(
    plain_path: str | os.PathLike[str], fused_path: str | os.PathLike[str], feeds: list[dict[str, np.ndarray]]
) -> dict[str, float]:
    """Min cosine and max abs difference of the fused graph's first output against the plain graph's, on ONNX
    Runtime CPU, over every feed."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (plain_path, fused_path)]
    cosines, diffs = [], []
    for feed in feeds:
        a, b = (np.asarray(s.run(None, feed)[0], dtype=np.float64) for s in sessions)
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
        cosines.append(float(cos.min()))
        diffs.append(float(np.abs(a - b).max()))
    return {"min_cosine": min(cosines), "max_abs_diff": max(diffs)}
