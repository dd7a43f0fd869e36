"""Reduced-precision variants of a bundle's fp32 graphs, each behind the accuracy gate, and `quantize_bundle`.

Per tower: fp16 (every backend), int8 Q/DQ s8s8 (TensorRT, ONNX Runtime's GPU providers) and the int8 graph ONNX
Runtime's CPU kernels run fastest (backend "onnxruntime"). A variant that misses its gate is an error with the
figures and the knobs, and nothing is written: the bundle on disk stays as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeclip.bundle import TOWERS, Bundle, GraphEntry, Manifest, TensorSpec, sha256_file, write_bundle_atomically
from edgeclip.errors import EdgeClipError, InputError
from edgeclip.fileio import sha256_files
from edgeclip.graphfile import externalize
from edgeclip.precision import data as gate_data
from edgeclip.precision.fp16 import fp16_from_fp32
from edgeclip.precision.gate import (
    FP16_GATE,
    INT8_GATE,
    GateData,
    GateResult,
    GateThresholds,
    gate_graph,
    probe_images,
    summary,
)
from edgeclip.precision.int8 import (
    CALIB_METHODS,
    CPU_SCHEMES,
    TENSORRT_SCHEME,
    Int8Graph,
    int8_cpu_from_fp32,
    int8_qdq_from_fp32,
    local_errors,
)

GPU_INT8_BACKENDS = ("tensorrt", "onnxruntime-tensorrt", "onnxruntime-cuda")
CPU_INT8_BACKENDS = ("onnxruntime",)
CALIB_BATCH = 16
AUTO_ROUNDS = 4  # --int8-skip auto: at most this many retries, each leaving AUTO_STEP of the linear layers in float
AUTO_STEP = 0.1
TEXT_HOLDOUT = 16  # the last captions of a long enough file are kept out of calibration for the gate
DEFAULT_CPU_SCHEME = "auto"  # see cpu_scheme_for


@dataclass(frozen=True)
class PrecisionOptions:
    """Which variants to add and how. None means default."""

    fp16: bool = False
    int8: bool = False
    int8_towers: tuple[str, ...] = TOWERS
    calib: Path | None = None  # folder of the user's images; None: the built-in model's world, else an error
    calib_text: Path | None = None  # captions or label prompts, one per line
    eval_dir: Path | None = None  # one sub-folder of images per label
    method: str = "percentile"
    skip: tuple[str, ...] | None = None  # node names left in float; None: the default exclusions ("auto")
    cpu_scheme: str = DEFAULT_CPU_SCHEME
    fp16_gate: GateThresholds = FP16_GATE
    int8_gate: GateThresholds = INT8_GATE

    def __post_init__(self) -> None:
        bad = [t for t in self.int8_towers if t not in TOWERS]
        if bad or not self.int8_towers:
            raise InputError(f"--int8-towers takes {' and/or '.join(TOWERS)} (comma-separated), got {bad or 'none'}")
        if self.method not in CALIB_METHODS:
            raise InputError(f"unknown calibration method {self.method!r}; choose one of {', '.join(CALIB_METHODS)}")
        if self.cpu_scheme not in ("auto", *CPU_SCHEMES):
            raise InputError(f"unknown CPU int8 scheme {self.cpu_scheme!r}; choose auto or {', '.join(CPU_SCHEMES)}")

    @property
    def any(self) -> bool:
        return self.fp16 or self.int8


@dataclass
class VariantReport:
    graphs: list[GraphEntry] = field(default_factory=list)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    calibration: str = ""


def add_variants(
    folder: Path,
    manifest: Manifest,
    options: PrecisionOptions,
    *,
    builtin: bool,
    tokenizer_dir: Path | None,
    log: Callable[[str], None] | None = None,
) -> VariantReport:
    """Write the requested variants of the fp32 graphs in `folder` beside them; return their checked entries.

    Raises EdgeClipError when a variant misses its gate (the caller's atomic write then leaves nothing behind).
    """
    say = log or (lambda _: None)
    contract = manifest.contract
    fp32 = {g.tower: g for g in manifest.graphs if g.precision == "fp32"}
    missing = [t for t in TOWERS if t not in fp32]
    if missing:
        raise EdgeClipError(f"the bundle has no fp32 graph of the {' and '.join(missing)} tower to convert from")
    check_calibration_given(options, builtin=builtin)
    calibration = _calibration(contract, options, builtin) if options.int8 else None
    report = VariantReport(skipped_images=list(calibration.skipped) if calibration else [])
    report.calibration = calibration.source if calibration else ""
    say("preparing the accuracy gate's inputs")
    gate = _gate_data(contract, options, builtin, tokenizer_dir, calibration)
    paths = {t: folder / fp32[t].file for t in TOWERS}
    if options.int8:
        check_skip([paths[t] for t in options.int8_towers], options.skip)

    def checked(tower: str, precision: str, file: str, scheme: str, backends: tuple[str, ...], extra: dict) -> None:
        thresholds = options.fp16_gate if precision == "fp16" else options.int8_gate
        result = _gate(tower, precision, folder / file, paths, gate, thresholds, say)
        report.graphs.append(_entry(fp32[tower], precision, file, folder, scheme, backends, result, extra))

    for tower in TOWERS:
        if options.fp16:
            file = f"{tower}.fp16.onnx"
            say(f"converting the {tower} tower to fp16 ({file})")
            made = fp16_from_fp32(paths[tower], folder / file)
            checked(tower, "fp16", file, "fp16-islands", (), {"fp32_islands": list(made.islands)})
        if options.int8 and tower in options.int8_towers:
            assert calibration is not None
            batches = _calib_batches(tower, calibration, contract, tokenizer_dir)
            for file, scheme, backends in (
                (f"{tower}.int8.onnx", TENSORRT_SCHEME, GPU_INT8_BACKENDS),
                (f"{tower}.int8-cpu.onnx", cpu_scheme_for(paths[tower], options.cpu_scheme), CPU_INT8_BACKENDS),
            ):
                for_what = "TensorRT" if backends == GPU_INT8_BACKENDS else "ONNX Runtime CPU"
                say(f"quantizing the {tower} tower to int8 for {for_what} ({file}, {scheme}, {options.method})")
                q, result = _int8_search(tower, folder, file, scheme, paths, batches, gate, options, say)
                report.graphs.append(
                    _entry(fp32[tower], "int8", file, folder, q.scheme, backends, result, _int8_figures(q))
                )
    return report


def quantize_bundle(
    path: str | os.PathLike[str],
    options: PrecisionOptions,
    *,
    out: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Manifest, VariantReport]:
    """Add the variants of `options` to the bundle at `path` (or write the result to `out`), all or nothing.

    The fp32 graphs are checked (sha256) and copied, never changed; variants of the requested precisions that the
    bundle already has are replaced, the others kept.
    """
    if not options.any:
        raise InputError("nothing to add: pass --fp16 and/or --int8")
    source = Bundle.open(path)  # checks every graph's sha256: a tampered fp32 graph is refused here
    manifest = source.manifest
    replaced = {p for p, on in (("fp16", options.fp16), ("int8", options.int8)) if on}
    kept = [g for g in manifest.graphs if g.precision not in replaced or g.precision == "fp32"]
    if options.int8:  # an int8 request redoes only the towers it names
        kept += [g for g in manifest.graphs if g.precision == "int8" and g.tower not in options.int8_towers]
    builtin = is_builtin(manifest)
    check_calibration_given(options, builtin=builtin)  # before any copy or calibration
    holder: dict[str, VariantReport] = {}

    def fill(tmp: Path) -> Manifest:
        for name in {f for g in kept for f in (g.file, g.data) if f} | set(manifest.tokenizer):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source.path / name, tmp / name)
        tokenizer_dir = (tmp / manifest.tokenizer[0]).parent if manifest.tokenizer else None
        report = add_variants(tmp, manifest, options, builtin=builtin, tokenizer_dir=tokenizer_dir, log=log)
        holder["report"] = report
        return replace(manifest, graphs=tuple(kept) + tuple(report.graphs))

    target = Path(out) if out is not None else source.path
    written = write_bundle_atomically(target, fill, force=True)
    return written, holder["report"]


def is_builtin(manifest: Manifest) -> bool:
    """Whether the bundle was exported from the built-in model's shipped weights (its hash, not its name)."""
    from edgeclip import builtin
    from edgeclip.errors import CheckpointError

    try:
        weights = builtin.checkpoint_path(builtin.NAME)
    except CheckpointError:
        return False
    return manifest.provenance.get("source_sha256") == sha256_file(weights)


def check_calibration_given(options: PrecisionOptions, *, builtin: bool) -> None:
    """Raise the error `add_variants` would raise for missing calibration data, before any slow work."""
    if not options.int8:
        return
    if options.calib is None and not builtin:
        raise InputError(_NEED_IMAGES)
    if "text" in options.int8_towers and options.calib_text is None and not (builtin and options.calib is None):
        raise InputError(_NEED_TEXT)


_NEED_IMAGES = (
    "--int8 needs calibration images: --calib DIR, a folder of at least "
    f"{gate_data.MIN_CALIB_IMAGES} of your own images (a few hundred of the scenes the model will see are best); the "
    "built-in model calibrates on its own world without it"
)
_NEED_TEXT = (
    "--int8 quantizes the text tower too, and that needs captions: --calib-text FILE (one caption or label prompt per "
    "line), or --int8-towers image to keep the text tower in float"
)


def _calibration(contract: Any, options: PrecisionOptions, builtin: bool) -> gate_data.Calibration:
    if options.calib is not None:
        calibration = gate_data.user_calibration(contract, options.calib, options.calib_text)
    elif builtin:
        calibration = gate_data.builtin_calibration(contract)
        if options.calib_text is not None:
            calibration.texts = gate_data.texts_from_file(options.calib_text)
    else:
        raise InputError(_NEED_IMAGES)
    if "text" in options.int8_towers and calibration.texts is None:
        raise InputError(_NEED_TEXT)
    return calibration


def _gate_data(
    contract: Any,
    options: PrecisionOptions,
    builtin: bool,
    tokenizer_dir: Path | None,
    calibration: gate_data.Calibration | None,
) -> GateData:
    from edgeclip.zeroshot import load_templates

    templates = load_templates("default")
    image = contract.image
    probes = [probe_images(image.size, image.mean, image.std)]
    if calibration is not None and len(calibration.holdout):
        probes.append(calibration.holdout[:32])
    if options.eval_dir is not None:
        labelled = gate_data.eval_from_folder(options.eval_dir, contract, tokenizer_dir, templates)
    elif builtin:
        labelled = gate_data.builtin_eval(contract, templates)
    else:
        pixels = calibration.holdout if calibration is not None and len(calibration.holdout) else probes[0]
        labelled = gate_data.agreement_set(contract, tokenizer_dir, pixels, list(gate_data.GENERIC_LABELS), templates)
    texts = gate_data.tokenize(contract, tokenizer_dir, list(gate_data.PROBE_PROMPTS))
    text_probes = [texts]
    if calibration is not None and calibration.texts and len(calibration.texts) > TEXT_HOLDOUT * 2:
        held_out = calibration.texts[-TEXT_HOLDOUT:]  # `_calib_batches` leaves these out of calibration
        text_probes.append(gate_data.tokenize(contract, tokenizer_dir, held_out))
    return GateData(probes={"image": probes, "text": text_probes}, labelled=labelled)


def _calib_batches(
    tower: str, calibration: gate_data.Calibration, contract: Any, tokenizer_dir: Path | None
) -> list[np.ndarray]:
    if tower == "image":
        inputs = calibration.images
    else:
        assert calibration.texts is not None
        many = len(calibration.texts) > TEXT_HOLDOUT * 2
        texts = calibration.texts[:-TEXT_HOLDOUT] if many else calibration.texts
        inputs = gate_data.tokenize(contract, tokenizer_dir, texts)
    # Equal batches: ONNX Runtime's histogram calibrators stack the batches they collect (a short last batch would
    # not stack), so the remainder beyond whole batches is left out.
    batch = min(CALIB_BATCH, len(inputs))
    return [inputs[i : i + batch] for i in range(0, len(inputs) - batch + 1, batch)]


def _int8_search(
    tower: str,
    folder: Path,
    file: str,
    scheme: str,
    paths: dict[str, Path],
    batches: list[np.ndarray],
    gate: GateData,
    options: PrecisionOptions,
    say: Callable[[str], None],
) -> tuple[Int8Graph, GateResult]:
    """Quantize; with the default exclusions ("auto"), while the gate fails, leave the linear layers that add the
    most error in float (AUTO_STEP of them at a time, up to AUTO_ROUNDS times) and try again. Explicit --int8-skip
    names are used as given: one try."""
    excluded = _skip_for(paths[tower], options.skip)
    cache = folder / f".{file}.calibration.json"  # one calibration for every try (removed below)
    try:
        for attempt in range(AUTO_ROUNDS + 1):
            if scheme == TENSORRT_SCHEME:
                q = int8_qdq_from_fp32(paths[tower], folder / file, batches, method=options.method,  # type: ignore[arg-type]
                                       exclude=excluded, cache=cache)  # fmt: skip
            else:
                q = int8_cpu_from_fp32(paths[tower], folder / file, batches, scheme=scheme, method=options.method,  # type: ignore[arg-type]
                                       exclude=excluded, cache=cache)  # fmt: skip
            result = _gate(tower, "int8", folder / file, paths, gate, options.int8_gate, say, final=False)
            last = options.skip is not None or attempt == AUTO_ROUNDS or not q.quantized
            if result.passed or last:
                _raise_if_failed(tower, "int8", folder / file, result)
                return q, result
            errors = local_errors(paths[tower], folder / file, q.quantized, batches[:2])
            worst = sorted(errors, key=lambda n: -errors[n])[: max(1, round(AUTO_STEP * len(q.quantized)))]
            say(f"  leaving {len(worst)} more linear layers in float: {', '.join(worst)}")
            excluded = sorted({*q.excluded, *worst})
    finally:
        cache.unlink(missing_ok=True)
    raise AssertionError("not reached")


def _int8_figures(q: Int8Graph) -> dict[str, Any]:
    figures = {"quantized": len(q.quantized), "excluded": list(q.excluded), "calibration": q.calibration}
    return figures | ({"attention_fused": q.attention_fused} if q.attention_fused else {})


def _skip_for(path: Path, skip: Sequence[str] | None) -> list[str] | None:
    """The nodes of this graph to leave in float: None (the default exclusions), or those plus the --int8-skip
    names that belong to this graph."""
    if skip is None:
        return None
    import onnx

    from edgeclip.precision.int8 import default_exclusions

    model = onnx.load(str(path))
    names = {n.name for n in model.graph.node}
    return sorted(set(default_exclusions(model)) | {s for s in skip if s in names})


def check_skip(paths: Sequence[Path], skip: Sequence[str] | None) -> None:
    """Every --int8-skip name must be a node of one of the graphs."""
    if not skip:
        return
    import onnx

    from edgeclip.precision.int8 import linear_nodes

    models = [onnx.load(str(p)) for p in paths]
    known = {n.name for m in models for n in m.graph.node}
    unknown = [s for s in skip if s not in known]
    if unknown:
        linear = [n for m in models for n in linear_nodes(m)]
        raise InputError(
            f"--int8-skip names nodes the graphs do not have: {', '.join(unknown)}; their linear layers are "
            f"{', '.join(linear[:12])}{' ...' if len(linear) > 12 else ''}"
        )


def cpu_scheme_for(path: Path, scheme: str) -> str:
    """The CPU int8 scheme for a graph. "auto" is dynamic quantization (u8s8 MatMulInteger, no activation ranges to
    calibrate): on this project's 2-core AVX-512 VNNI CPU it ran ViT-B/32's image tower at batch 8 2.76x fp32
    (static QOperator 2.64x, static u8s8 Q/DQ 2.65x) and the built-in ResNet's 1.12x (QOperator 1.03x, s8s8 Q/DQ
    0.53x); see benchmarks/RESULTS.md. The graph is not read: the rule is the same for every tower."""
    del path
    return "dynamic-u8s8" if scheme == "auto" else scheme


def _gate(
    tower: str,
    precision: str,
    path: Path,
    fp32_paths: dict[str, Path],
    data: GateData,
    thresholds: GateThresholds,
    say: Callable[[str], None],
    *,
    final: bool = True,
) -> GateResult:
    other = fp32_paths["text" if tower == "image" else "image"]
    result = gate_graph(tower, path, fp32_paths[tower], other, data, thresholds)
    say(f"  gate {'passed' if result.passed else 'missed'}: {summary(result)}")
    if final:
        _raise_if_failed(tower, precision, path, result)
    return result


def _raise_if_failed(tower: str, precision: str, path: Path, result: GateResult) -> None:
    if not result.passed:
        knobs = (
            "leave the sensitive nodes in float (--int8-skip NODES), give more calibration images (--calib DIR), try "
            "another --calib-method, or quantize one tower only (--int8-towers image)"
            if precision == "int8"
            else "export the fp32 graphs only (no --fp16), or report the model: its fp16 graph should not miss"
        )
        raise EdgeClipError(
            f"the {precision} graph of the {tower} tower ({path.name}) misses its accuracy gate: "
            f"{'; '.join(result.failures)} ({summary(result)}); nothing was written, the bundle is as it was. "
            f"To pass: {knobs}"
        )


def _entry(
    fp32: GraphEntry,
    precision: str,
    file: str,
    folder: Path,
    scheme: str,
    backends: tuple[str, ...],
    result: GateResult,
    extra: dict[str, Any],
) -> GraphEntry:
    inputs: tuple[TensorSpec, ...] = fp32.inputs  # the variants keep the fp32 graph's I/O (checked by the backends)
    data = externalize(folder / file)  # after the gate: the graph it checked, with its weights moved beside it
    return GraphEntry(
        tower=fp32.tower,
        precision=precision,
        file=file,
        inputs=inputs,
        outputs=fp32.outputs,
        sha256=sha256_files(folder / file, *((folder / data,) if data else ())),
        backends=backends,
        scheme=scheme,
        gate={**result.to_dict(), **extra, "reference": f"{fp32.file} on onnxruntime CPU"},
        data=data,
    )
