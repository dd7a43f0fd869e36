"""One tower of a PyTorch CLIP to one checked ONNX graph.

Exporter: torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`). The TorchScript exporter traces the text
length into the attention reshapes (a graph exported at length 77 fails at any other length) and writes about three
times the nodes; the dynamo exporter keeps batch and text length symbolic and writes graphs that match PyTorch
to about 1e-7 on ONNX Runtime. It writes opset 18 (its translation target; asking for 17 only logs a failed
down-conversion), which TensorRT 10 and 11 read.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
import torch

from edgeclip.bundle import TensorSpec
from edgeclip.errors import EdgeClipError, InputError
from edgeclip.export.passes import drop_source_traces, float_argmax_nodes, store_exact_fp16
from edgeclip.export.towers import IO, example_input, tower_module

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP

OPSET = 18


def onnx_from_torch(
    model: CLIP, tower: str, path: Path, *, opset: int = OPSET
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Export one tower of `model` to the ONNX file `path` (dynamic batch; text: dynamic length too) and check it.

    Returns the graph's (inputs, outputs) as read back from the file. Raises EdgeClipError when torch cannot export
    the model, the ONNX checker refuses the graph, or the text graph pools with an argmax over floats.
    """
    if opset < OPSET:
        raise InputError(f"opset {opset} is too old: the dynamo exporter writes opset {OPSET} or newer; use {OPSET}")
    module = tower_module(model, tower)
    input_name, output_name = IO[tower]
    example, dynamic = example_input(model, tower)
    try:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=[output_name],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={input_name: dynamic},
                external_data=False,  # one self-contained file per graph, so its sha256 covers the weights
                verbose=False,
            )
    except Exception as exc:  # torch raises many types here; the user needs to know which tower and why
        summary = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EdgeClipError(
            f"torch.onnx could not export the {tower} tower ({type(exc).__name__}: {summary}); "
            f"check that the model runs in PyTorch, and report the full error if it does"
        ) from exc
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise EdgeClipError(f"the exported {tower} graph fails the ONNX checker: {exc}") from exc
    proto = onnx.load(str(path))
    if drop_source_traces(proto) | store_exact_fp16(proto):
        onnx.save(proto, str(path))
    if tower == "text":
        bad = float_argmax_nodes(proto)
        if bad:
            raise EdgeClipError(
                f"the text graph pools with an argmax over floats (nodes {', '.join(bad)}): token ids above 2**24 "
                f"(2048 in fp16) would collapse; pool with integer ops (see TextTransformer.pool_index)"
            )
    return specs(proto.graph.input), specs(proto.graph.output)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing-torchvision notices, its own deprecations); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def specs(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)
