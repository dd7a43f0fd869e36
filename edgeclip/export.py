"""Export a PyTorch CLIP to a verified ONNX bundle: one graph per tower, checked, and compared with PyTorch.

Exporter: torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`). The TorchScript exporter traces the text
length into the attention reshapes (a graph exported at length 77 fails at any other length) and writes about three
times the nodes; the dynamo exporter keeps batch and text length symbolic and writes graphs that match PyTorch
to about 1e-7 on ONNX Runtime. It writes opset 18 (its translation target; asking for 17 only logs a failed
down-conversion), which TensorRT 10 and 11 read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import edgeclip
from edgeclip.bundle import GraphEntry, Manifest, TensorSpec, sha256_file, write_bundle_atomically
from edgeclip.contract import ModelContract
from edgeclip.errors import CheckpointError, EdgeClipError, InputError

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP

OPSET = 18
MIN_COSINE = 0.99999  # a graph below this against PyTorch fp32 is refused
TOKENIZER_FILES = ("vocab.json", "merges.txt")
_IO = {
    "image": ("pixels", "image_embeds"),
    "text": ("input_ids", "text_embeds"),
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
# What the parity check feeds the text graph: short, empty, odd and over-long prompts.
_PROMPTS = (
    "a photo of a cat",
    "",
    "A DIAGRAM of the über-café's 3 señoras & 2 🚲s!!",
    "a photo of " + " and ".join(f"a {color} square next to a circle" for color in ("red", "green", "blue") * 12),
    "   the   quick brown fox jumps over the lazy dog   ",
)


@dataclass(frozen=True)
class ExportReport:
    """Where a bundle went, its graphs' parity against PyTorch, and how long the export took."""

    path: Path
    name: str
    graphs: tuple[GraphEntry, ...]
    seconds: float

    @property
    def parity(self) -> dict[str, dict[str, Any]]:
        """Parity figures per graph, keyed "tower/precision"."""
        return {f"{g.tower}/{g.precision}": g.parity for g in self.graphs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.name,
            "seconds": round(self.seconds, 2),
            "graphs": [{"tower": g.tower, "precision": g.precision, "file": g.file, **g.parity} for g in self.graphs],
        }


class _ImageTower(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.model.encode_image(pixels), dim=-1)


class _TextTower(nn.Module):
    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return F.normalize(self.model.encode_text(input_ids), dim=-1)


def tower_module(model: CLIP, tower: str) -> nn.Module:
    """The module a tower's graph is exported from: inputs -> L2-normalized embeddings, in eval mode."""
    if tower not in _IO:
        raise InputError(f"unknown tower {tower!r}; the towers are: {', '.join(_IO)}")
    module = _ImageTower(model) if tower == "image" else _TextTower(model)
    return module.eval()


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
    input_name, output_name = _IO[tower]
    example, dynamic = _example_input(model, tower)
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
    if store_exact_fp16(proto):
        onnx.save(proto, str(path))
    if tower == "text":
        bad = float_argmax_nodes(proto)
        if bad:
            raise EdgeClipError(
                f"the text graph pools with an argmax over floats (nodes {', '.join(bad)}): token ids above 2**24 "
                f"(2048 in fp16) would collapse; pool with integer ops (see TextTransformer.pool_index)"
            )
    return _specs(proto.graph.input), _specs(proto.graph.output)


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


def bundle_from_checkpoint(
    source: str | Path | None,
    out: Path | None = None,
    *,
    force: bool = False,
    preset: str | None = None,
    act: str | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export the checkpoint at `source` (None: the built-in model) to a verified bundle at `out`.

    `out` None: export/<name>/ under the current directory. An existing bundle there is replaced only with `force`.
    Every graph passes the ONNX checker and matches PyTorch fp32 on ONNX Runtime CPU (min cosine >= 0.99999 over
    images of several sizes and short and over-long prompts, at batch 1 and N), or nothing is written.
    `log` receives one line per step (the CLI prints them).
    """
    from edgeclip.checkpoint import load_checkpoint

    say = log or (lambda _: None)
    start = time.perf_counter()
    if source is None:
        source, default_name = _builtin_source()
    else:
        source = Path(source)
        default_name = source.name if source.is_dir() else source.stem
    name = _bundle_name(name if name is not None else default_name)
    target = Path(out) if out is not None else Path("export") / name

    def fill(tmp: Path) -> Manifest:
        # Loading happens in here, after write_bundle_atomically has checked the target: a refusal costs nothing.
        say(f"loading {source}")
        ckpt = load_checkpoint(source, preset=preset, act=act)
        model = ckpt.model.eval().float()
        contract = _copy_tokenizer(ckpt.tokenizer_dir, ckpt.contract, tmp)
        samples = {tower: _parity_inputs(contract, tmp, tower) for tower in ("image", "text")}  # fails fast
        graphs = []
        for tower in ("image", "text"):
            file = f"{tower}.onnx"
            say(f"exporting the {tower} tower to {file}")
            inputs, outputs = onnx_from_torch(model, tower, tmp / file)
            say(f"checking {file} against PyTorch on ONNX Runtime CPU")
            parity = graph_parity(model, tower, tmp / file, samples[tower])
            if not parity["min_cosine"] >= MIN_COSINE:  # written so that NaN fails too
                raise EdgeClipError(
                    f"the {tower} graph does not match PyTorch: min cosine {parity['min_cosine']:.7f} "
                    f"(needs >= {MIN_COSINE}), max abs diff {parity['max_abs_diff']:.3g}; nothing was written"
                )
            graphs.append(GraphEntry(tower, "fp32", file, inputs, outputs, sha256_file(tmp / file), parity))
        return Manifest(
            name=name,
            contract=contract,
            graphs=tuple(graphs),
            tokenizer=contract.text.tokenizer_files,
            provenance=_provenance(source, ckpt.source_format, ckpt.sha256, tmp / graphs[0].file),
        )

    manifest = write_bundle_atomically(target, fill, force=force)
    return ExportReport(path=target, name=name, graphs=manifest.graphs, seconds=time.perf_counter() - start)


def graph_parity(model: CLIP, tower: str, path: Path, samples: Sequence[np.ndarray]) -> dict[str, Any]:
    """Compare the graph at `path` on ONNX Runtime CPU with PyTorch fp32, each sample batch whole and row by row.

    Returns max abs diff, min cosine (float64) and what was fed.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    module = tower_module(model, tower)
    max_abs, min_cos, rows = 0.0, 1.0, 0
    for batch in samples:
        with torch.no_grad():
            want = module(torch.from_numpy(batch)).numpy().astype(np.float64)
        runs = [(batch, want)] + [(batch[i : i + 1], want[i : i + 1]) for i in range(len(batch))]
        for feed, expected in runs:
            got = np.asarray(session.run(None, {input_name: feed})[0], dtype=np.float64)
            # np.max/np.min propagate NaN (Python's max/min would drop it), so a NaN output fails the check below.
            max_abs = float(np.max([max_abs, np.abs(got - expected).max()]))
            cos = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
            min_cos = float(np.min([min_cos, cos.min()]))
            rows += len(feed)
    shapes = [list(s.shape) for s in samples]
    return {
        "max_abs_diff": max_abs,
        "min_cosine": min_cos,
        "rows": rows,
        "batches": shapes,
        "reference": f"torch {torch.__version__} fp32 cpu",
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def _example_input(model: CLIP, tower: str) -> tuple[Tensor, dict[int, Any]]:
    # Batch 2 in the example: torch.export specializes sizes 0 and 1, so a batch-1 example would fix the batch.
    batch = torch.export.Dim("batch", min=1)
    if tower == "image":
        size = model.config.vision.image_size
        return torch.randn(2, 3, size, size), {0: batch}
    text = model.config.text
    ids = torch.randint(0, min(text.vocab_size, text.eot_id), (2, text.context_length))
    if text.eot_id < text.vocab_size:
        ids[0, 3], ids[1, -1] = text.eot_id, text.eot_id
    return ids, {0: batch, 1: torch.export.Dim("length", min=1, max=text.context_length)}


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


def _specs(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, dtype, shape))
    return tuple(specs)


def _parity_inputs(contract: ModelContract, bundle_dir: Path, tower: str) -> list[np.ndarray]:
    """Real inputs for the parity check: images through the Preprocessor, prompts through the bundle's tokenizer."""
    if tower == "image":
        from edgeclip.preprocess import Preprocessor

        size = contract.image.size
        # Square, landscape, portrait (upscaled on one side), odd sizes and a camera frame.
        sizes = [(size, size), (2 * size + 3, size + 1), (size // 2 + 1, 3 * size), (640, 480), (97, 61)]
        return [Preprocessor(contract.image)([_synthetic_photo(w, h, seed) for seed, (w, h) in enumerate(sizes)])]
    from edgeclip.tokenizer import Tokenizer

    spec = contract.text
    tokenizer = (
        Tokenizer.from_pretrained_dir((bundle_dir / spec.tokenizer_files[0]).parent, spec)
        if spec.tokenizer_files
        else Tokenizer(spec)
    )
    full = tokenizer(list(_PROMPTS))
    short = tokenizer(list(_PROMPTS), context_length=min(spec.context_length, 8))
    return [full.astype(np.int64), short.astype(np.int64)]


def _synthetic_photo(width: int, height: int, seed: int) -> np.ndarray:
    """An HWC uint8 RGB image with gradients, hard-edged shapes and noise: enough detail to exercise resampling."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), (x + y) / max(width + height - 2, 1)], -1) * 200
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        img[y0 : y0 + rng.integers(1, height + 1), x0 : x0 + rng.integers(1, width + 1)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _copy_tokenizer(tokenizer_dir: Path | None, contract: ModelContract, tmp: Path) -> ModelContract:
    """Write an HF model's own tokenizer into the bundle (always as vocab.json + merges.txt, whatever files the
    directory had) and point the contract at it."""
    if tokenizer_dir is None:
        return dataclasses.replace(contract, text=dataclasses.replace(contract.text, tokenizer_files=()))
    from edgeclip.tokenizer import Tokenizer

    Tokenizer.from_pretrained_dir(tokenizer_dir, contract.text).save(tmp / "tokenizer")
    files = tuple(f"tokenizer/{f}" for f in TOKENIZER_FILES)
    return dataclasses.replace(contract, text=dataclasses.replace(contract.text, tokenizer_files=files))


def _provenance(source: Path, source_format: str, source_sha256: str, graph: Path) -> dict[str, Any]:
    opset = next(o.version for o in onnx.load(str(graph), load_external_data=False).opset_import if o.domain == "")
    return {
        "source": source.name,  # a name, never a full path: bundles travel
        "source_format": source_format,
        "source_sha256": source_sha256,
        "edgeclip_version": edgeclip.__version__,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=True)",
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _builtin_source() -> tuple[Path, str]:
    """The built-in model's weights and its name."""
    from edgeclip import builtin

    try:
        return builtin.checkpoint_path(builtin.NAME), builtin.NAME
    except CheckpointError as exc:
        raise EdgeClipError(
            f"there is no built-in model to export yet ({exc}); export a checkpoint of your own: "
            f"'edgeclip export PATH' with an OpenAI .pt, an open_clip state dict or an HF CLIP directory"
        ) from None


def _bundle_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise InputError(
            f"bundle name {name!r} is not usable as a directory name; use letters, digits and . _ + - "
            f"(e.g. --name vit-b-32)"
        )
    return name
