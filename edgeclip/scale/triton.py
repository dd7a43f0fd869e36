"""A Triton Inference Server model repository for a bundle: image and text graphs, tokenizer, text ensemble.

    OUT/<name>_image/config.pbtxt, 1/model.onnx (or 1/model.plan: a TensorRT plan given for the tower)
    OUT/<name>_text/config.pbtxt, 1/model.onnx (or 1/model.plan)
    OUT/<name>_tokenizer/config.pbtxt, 1/model.py, 1/edgeclip.json, 1/tokenizer/   (Python backend)
    OUT/<name>_text_ensemble/config.pbtxt, 1/                                       TEXT strings -> embeddings

The configs are written as text in Triton's model_config.proto schema; the tests parse them with that schema
(tritonclient's model_config_pb2). The repository is written whole or not at all (edgeclip.fileio).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeclip.errors import InputError
from edgeclip.fileio import atomic_directory

if TYPE_CHECKING:
    from edgeclip.bundle import TensorSpec
    from edgeclip.runtime import Model

TOKENIZER_TEMPLATE = Path(__file__).with_name("triton_tokenizer_model.py")
DEFAULT_MAX_BATCH = 64
QUEUE_DELAY_US = 2000  # how long a request may wait for others to batch with: 2 ms, small beside a CPU call
DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
}


@dataclass(frozen=True)
class TritonRepository:
    path: Path
    models: tuple[str, ...]


def model_prefix(bundle_name: str) -> str:
    """A Triton model-name prefix from the bundle's name: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", bundle_name).strip("_") or "edgeclip"


def repository_from_model(
    model: Model,
    out: str | os.PathLike[str],
    *,
    plans: dict[str, Path] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    force: bool = False,
) -> TritonRepository:
    """Write the repository for the graphs `model` (an `edgeclip.load` result) runs; `plans`: TensorRT plans per
    tower ("image", "text") to serve instead of the ONNX graph."""
    target = Path(out)
    plans = dict(plans or {})
    for tower, plan in plans.items():
        if tower not in ("image", "text"):
            raise InputError(f"--plan {tower}={plan}: the tower must be 'image' or 'text'")
        if not Path(plan).is_file():
            raise InputError(f"--plan {tower}={plan}: no such file; build the engine first")
    if target.exists() and any(target.iterdir()) and not force:
        raise InputError(
            f"{target} exists and is not empty; pass --force to replace it (kept until the new one is whole)"
        )
    if max_batch < 1:
        raise InputError(f"--max-batch must be >= 1, got {max_batch}")
    prefix = model_prefix(model.bundle.manifest.name)
    names = {t: f"{prefix}_{t}" for t in ("image", "text", "tokenizer", "text_ensemble")}
    with atomic_directory(target) as tmp:
        for tower in ("image", "text"):
            runner = model.runner(tower)
            folder = tmp / names[tower] / "1"
            folder.mkdir(parents=True)
            plan_file = plans.get(tower)
            if plan_file is not None:
                shutil.copyfile(plan_file, folder / "model.plan")
            else:
                _copy_graph(model, tower, folder)
            limit = min(max_batch, runner.max_batch or max_batch)
            config = graph_config(names[tower], runner.inputs[0], runner.outputs[0], limit, plan_file is not None)
            (tmp / names[tower] / "config.pbtxt").write_text(config, encoding="utf-8")
        _write_tokenizer(model, tmp / names["tokenizer"], names["tokenizer"], max_batch)
        ensemble = ensemble_config(names, model.runner("text").inputs[0], model.runner("text").outputs[0], max_batch)
        (tmp / names["text_ensemble"] / "1").mkdir(parents=True)  # Triton wants a version folder, even empty
        (tmp / names["text_ensemble"] / "config.pbtxt").write_text(ensemble, encoding="utf-8")
    return TritonRepository(target, tuple(names.values()))


def _copy_graph(model: Model, tower: str, folder: Path) -> None:
    """The tower's graph as model.onnx, and its external weights file (where it has one) beside it under the
    name the graph refers to it by."""
    file = model.files[tower]
    shutil.copyfile(model.bundle.path / file, folder / "model.onnx")
    entry = next(g for g in model.bundle.manifest.graphs if g.file == file)
    data = getattr(entry, "data", "")  # bundles made before graphs kept their weights outside have none
    if data:
        shutil.copyfile(model.bundle.path / data, folder / Path(data).name)


def _dims(spec: TensorSpec) -> str:
    # The batch axis is Triton's (max_batch_size); other named axes are dynamic (-1).
    return ", ".join(str(d) if isinstance(d, int) else "-1" for d in spec.shape[1:])


def _dtype(spec: TensorSpec) -> str:
    if spec.dtype not in DTYPES:
        raise InputError(f"tensor {spec.name} has dtype {spec.dtype}, which this repository writer does not map")
    return DTYPES[spec.dtype]


def graph_config(name: str, inp: TensorSpec, out: TensorSpec, max_batch: int, plan: bool) -> str:
    platform = "tensorrt_plan" if plan else "onnxruntime_onnx"
    preferred = ", ".join(str(b) for b in sorted({min(8, max_batch), max_batch}))
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{ name: "{inp.name}" data_type: {_dtype(inp)} dims: [ {_dims(inp)} ] }}
]
output [
  {{ name: "{out.name}" data_type: {_dtype(out)} dims: [ {_dims(out)} ] }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {QUEUE_DELAY_US}
}}
instance_group [ {{ count: 1 kind: KIND_AUTO }} ]
"""


def _write_tokenizer(model: Model, folder: Path, name: str, max_batch: int) -> None:
    version = folder / "1"
    version.mkdir(parents=True)
    shutil.copyfile(TOKENIZER_TEMPLATE, version / "model.py")
    shutil.copyfile(model.bundle.path / "edgeclip.json", version / "edgeclip.json")
    source = model.bundle.tokenizer_dir()
    if source is not None:
        shutil.copytree(source, version / "tokenizer")
    context = model.contract.text.context_length
    (folder / "config.pbtxt").write_text(
        f"""name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "input_ids" data_type: TYPE_INT64 dims: [ {context} ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
""",
        encoding="utf-8",
    )


def ensemble_config(names: dict[str, str], text_in: TensorSpec, text_out: TensorSpec, max_batch: int) -> str:
    return f"""name: "{names["text_ensemble"]}"
platform: "ensemble"
max_batch_size: {max_batch}
input [
  {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }}
]
output [
  {{ name: "{text_out.name}" data_type: {_dtype(text_out)} dims: [ {_dims(text_out)} ] }}
]
ensemble_scheduling {{
  step [
    {{
      model_name: "{names["tokenizer"]}"
      model_version: -1
      input_map {{ key: "TEXT" value: "TEXT" }}
      output_map {{ key: "input_ids" value: "token_ids" }}
    }},
    {{
      model_name: "{names["text"]}"
      model_version: -1
      input_map {{ key: "{text_in.name}" value: "token_ids" }}
      output_map {{ key: "{text_out.name}" value: "{text_out.name}" }}
    }}
  ]
}}
"""
