"""`bundle_from_checkpoint`: the export as named steps: load -> onnx -> passes -> parity -> precisions -> manifest."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import torch

import edgeclip
from edgeclip.bundle import GraphEntry, Manifest, write_bundle_atomically
from edgeclip.contract import ModelContract
from edgeclip.errors import CheckpointError, EdgeClipError, InputError
from edgeclip.export import to_onnx
from edgeclip.export.parity import MIN_COSINE, graph_parity, parity_inputs
from edgeclip.fileio import sha256_files
from edgeclip.graphfile import externalize
from edgeclip.precision.variants import PrecisionOptions, add_variants, check_calibration_given

TOKENIZER_FILES = ("vocab.json", "merges.txt")


@dataclass(frozen=True)
class ExportReport:
    """Where a bundle went, its graphs' parity against PyTorch, and how long the export took."""

    path: Path
    name: str
    graphs: tuple[GraphEntry, ...]
    seconds: float
    skipped_images: tuple[tuple[str, str], ...] = ()  # calibration images that could not be read: (file, why)

    @property
    def parity(self) -> dict[str, dict[str, Any]]:
        """Parity figures of the fp32 graphs against PyTorch, keyed "tower/fp32"."""
        return {f"{g.tower}/{g.precision}": g.parity for g in self.graphs if g.precision == "fp32"}

    def to_dict(self) -> dict[str, Any]:
        graphs = [
            {"tower": g.tower, "precision": g.precision, "file": g.file, **g.parity}
            | ({"scheme": g.scheme, "backends": list(g.backends), "gate": g.gate} if g.precision != "fp32" else {})
            for g in self.graphs
        ]
        out = {"path": str(self.path), "name": self.name, "seconds": round(self.seconds, 2), "graphs": graphs}
        if self.skipped_images:
            out["skipped_images"] = [{"file": f, "why": why} for f, why in self.skipped_images]
        return out


def bundle_from_checkpoint(
    source: str | Path | None,
    out: Path | None = None,
    *,
    force: bool = False,
    preset: str | None = None,
    act: str | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
    precision: PrecisionOptions | None = None,
) -> ExportReport:
    """Export the checkpoint at `source` (None: the built-in model) to a verified bundle at `out`.

    `out` None: export/<name>/ under the current directory. An existing bundle there is replaced only with `force`.
    Every graph passes the ONNX checker and matches PyTorch fp32 on ONNX Runtime CPU (min cosine >= 0.99999 over
    images of several sizes and short and over-long prompts, at batch 1 and N), or nothing is written.
    `log` receives one line per step (the CLI prints them). `precision`: fp16 and int8 variants to add, each behind
    its accuracy gate (a variant that misses it fails the export, and nothing is written).
    """
    from edgeclip.checkpoint import load_checkpoint

    say = log or (lambda _: None)
    start = time.perf_counter()
    builtin = source is None
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
        samples = {tower: parity_inputs(contract, tmp, tower) for tower in ("image", "text")}  # fails fast
        graphs = []
        for tower in ("image", "text"):
            file = f"{tower}.onnx"
            say(f"exporting the {tower} tower to {file}")
            inputs, outputs = to_onnx.onnx_from_torch(model, tower, tmp / file)
            say(f"checking {file} against PyTorch on ONNX Runtime CPU")
            parity = graph_parity(model, tower, tmp / file, samples[tower])
            if not parity["min_cosine"] >= MIN_COSINE:  # written so that NaN fails too
                raise EdgeClipError(
                    f"the {tower} graph does not match PyTorch: min cosine {parity['min_cosine']:.7f} "
                    f"(needs >= {MIN_COSINE}), max abs diff {parity['max_abs_diff']:.3g}; nothing was written"
                )
            data = externalize(tmp / file)
            sha = sha256_files(tmp / file, *((tmp / data,) if data else ()))
            graphs.append(GraphEntry(tower, "fp32", file, inputs, outputs, sha, parity, data=data))
        manifest = Manifest(
            name=name,
            contract=contract,
            graphs=tuple(graphs),
            tokenizer=contract.text.tokenizer_files,
            provenance=_provenance(source, ckpt.source_format, ckpt.sha256, tmp / graphs[0].file),
        )
        if precision is None or not precision.any:
            return manifest
        del model, ckpt  # the variants need only the graphs: free the PyTorch weights first
        tokenizer_dir = (tmp / contract.text.tokenizer_files[0]).parent if contract.text.tokenizer_files else None
        variants = add_variants(tmp, manifest, precision, builtin=builtin, tokenizer_dir=tokenizer_dir, log=say)
        skipped.extend(variants.skipped_images)
        return dataclasses.replace(manifest, graphs=manifest.graphs + tuple(variants.graphs))

    if precision is not None and precision.int8 and precision.calib is None and not builtin:
        check_calibration_given(
            precision, builtin=builtin
        )  # fails before the slow export when calibration data is missing
    skipped: list[tuple[str, str]] = []
    manifest = write_bundle_atomically(target, fill, force=force)
    return ExportReport(
        path=target,
        name=name,
        graphs=manifest.graphs,
        seconds=time.perf_counter() - start,
        skipped_images=tuple(skipped),
    )


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
