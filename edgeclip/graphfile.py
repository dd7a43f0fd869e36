"""How a bundle stores one ONNX graph: the graph in `NAME.onnx`, its weights beside it in `NAME.onnx.data`.

ONNX Runtime maps an external weights file instead of parsing the weights out of the protobuf and copying them,
so a session needs less memory while it starts: measured on ViT-B/32, the peak RSS of loading and running both
towers fell from 774 to 625 MiB (fp32) and from 412 to 271 MiB (the CPU int8 graphs) against 578 and 230 MiB of
graph files (`benchmarks/RESULTS.md`). TensorRT's parser reads the same layout (`parse_from_file`).

Needs onnx (export and quantization, never the runtime).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeclip.fileio import chmod_as_new_file

DATA_SUFFIX = ".data"
# Tensors smaller than this stay inside the graph file (shapes, scales, small constants).
_INLINE_BYTES = 1024


def data_file_name(graph_file: str) -> str:
    """The name of the weights file that goes with the graph file `graph_file` (a name inside the bundle)."""
    return graph_file + DATA_SUFFIX


def externalize(path: str | os.PathLike[str]) -> str:
    """Rewrite the graph at `path` with its weights in a file beside it; return that file's name ("" when the
    graph has no tensor large enough to move out). A graph that already had external weights is read whole first."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path))  # reads external data, if any, into the model
    data = path.with_name(data_file_name(path.name))
    if not any(_size(t) >= _INLINE_BYTES for t in model.graph.initializer):
        onnx.save(model, str(path))
        data.unlink(missing_ok=True)
        return ""
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=_INLINE_BYTES,
    )
    chmod_as_new_file(data)  # onnx makes it private (0600): a bundle installed for all users must be readable
    return data.name


def _size(tensor: object) -> int:
    raw = getattr(tensor, "raw_data", b"")
    if raw:
        return len(raw)
    dims = 1
    for d in getattr(tensor, "dims", ()):
        dims *= int(d)
    return dims * 4  # an upper bound is enough to decide
