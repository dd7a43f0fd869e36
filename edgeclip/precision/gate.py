"""The accuracy gate: a reduced-precision graph is measured against the fp32 graph of its tower before it is written.

Figures (numpy and ONNX Runtime CPU only, so that it judges the very graph that TensorRT will compile):
- embedding cosine to the fp32 graph, mean and worst, over probe inputs that calibration did not use (black, white,
  saturated and noise images, held-out user images; the longest and the odd prompts), each batch run whole and row
  by row (batch N and batch 1);
- NaN or Inf anywhere;
- zero-shot top-1 agreement with the fp32 graph on a labelled set (the other tower in fp32), and where the set has
  the truth, the accuracy of both and its drop, overall and per group (the built-in model's held-out pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GateThresholds:
    """The bars a graph must pass. None: not checked."""

    min_mean_cosine: float | None = None
    min_worst_cosine: float | None = None
    min_agreement: float | None = None  # zero-shot top-1 agreement with fp32, a fraction
    max_accuracy_drop: float | None = None  # fp32 accuracy minus this graph's, a fraction, overall and per group

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# The defaults. fp16 must be all but identical. For int8 the bar is the answer, not the vector: the same zero-shot
# label for 99% of images and at most one point of accuracy lost; the cosine floor only catches a broken graph.
FP16_GATE = GateThresholds(min_mean_cosine=0.999, min_worst_cosine=0.999, min_agreement=0.995)
INT8_GATE = GateThresholds(min_mean_cosine=0.98, min_agreement=0.99, max_accuracy_drop=0.01)


@dataclass(frozen=True)
class LabelledSet:
    """Images with label prompts: what zero-shot agreement is measured on."""

    name: str
    pixels: np.ndarray  # (N, 3, S, S) float32, preprocessed
    prompt_ids: np.ndarray  # (L * T, context) int64: T templates per label, label-major
    templates: int
    truth: np.ndarray | None = None  # (N,) label index; None: agreement only
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N,) bool mask

    @property
    def labels(self) -> int:
        return len(self.prompt_ids) // self.templates


@dataclass(frozen=True)
class GateData:
    """What a gate feeds: probe batches per tower and a labelled set."""

    probes: dict[str, list[np.ndarray]]  # tower -> input batches
    labelled: LabelledSet


@dataclass(frozen=True)
class GateResult:
    passed: bool
    figures: dict[str, Any]
    failures: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, **self.figures, "failures": list(self.failures)}


class GraphRunner:
    """One graph on ONNX Runtime CPU, fed in chunks."""

    def __init__(self, path: str | Path, batch: int = 64) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.batch = batch

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        parts = [
            self.session.run(None, {self.input: inputs[i : i + self.batch]})[0]
            for i in range(0, len(inputs), self.batch)
        ]
        return np.concatenate(parts).astype(np.float64)


def gate_graph(
    tower: str,
    reduced: str | Path,
    fp32: str | Path,
    other_fp32: str | Path,
    data: GateData,
    thresholds: GateThresholds,
) -> GateResult:
    """Measure the `tower` graph at `reduced` against its fp32 graph `fp32` (`other_fp32`: the other tower's fp32
    graph, for zero-shot) and check the figures against `thresholds`."""
    low, ref = GraphRunner(reduced), GraphRunner(fp32)
    cosines, finite = [], True
    for batch in data.probes[tower]:
        want = ref(batch)
        runs = [(batch, want)] + [(batch[i : i + 1], want[i : i + 1]) for i in range(len(batch))]  # batch N and 1
        for feed, expected in runs:
            got = low(feed)
            finite &= bool(np.isfinite(got).all())
            cosines.append(_cosine(got, expected))
    cos = np.concatenate(cosines)
    figures: dict[str, Any] = {
        "mean_cosine": float(np.mean(cos)),
        "worst_cosine": float(np.min(cos)),
        "probe_rows": len(cos),
        "finite": finite,
    }
    figures |= _zero_shot(tower, low, ref, GraphRunner(other_fp32), data.labelled)
    figures["thresholds"] = thresholds.to_dict()
    failures = _failures(figures, thresholds)
    return GateResult(not failures, figures, tuple(failures))


def _zero_shot(tower: str, low: GraphRunner, ref: GraphRunner, other: GraphRunner, data: LabelledSet) -> dict[str, Any]:
    if tower == "image":
        bank = _bank(other(data.prompt_ids), data.templates)
        ref_pred = (ref(data.pixels) @ bank.T).argmax(-1)
        low_pred = (low(data.pixels) @ bank.T).argmax(-1)
    else:
        images = other(data.pixels)
        ref_pred = (images @ _bank(ref(data.prompt_ids), data.templates).T).argmax(-1)
        low_pred = (images @ _bank(low(data.prompt_ids), data.templates).T).argmax(-1)
    out: dict[str, Any] = {
        "eval_set": data.name,
        "eval_images": len(data.pixels),
        "eval_labels": data.labels,
        "agreement": float(np.mean(ref_pred == low_pred)),
    }
    if data.truth is not None:
        accuracy: dict[str, dict[str, float]] = {}
        for group, mask in {"all": np.ones(len(data.truth), bool), **data.groups}.items():
            if mask.any():
                accuracy[group] = {
                    "fp32": float(np.mean(ref_pred[mask] == data.truth[mask])),
                    "this": float(np.mean(low_pred[mask] == data.truth[mask])),
                }
        out["accuracy"] = accuracy
        out["accuracy_drop"] = max(a["fp32"] - a["this"] for a in accuracy.values())
    return out


def _failures(figures: dict[str, Any], t: GateThresholds) -> list[str]:
    fails = []
    if not figures["finite"]:
        fails.append("NaN or Inf in the outputs")
    checks = [
        ("mean cosine", figures["mean_cosine"], t.min_mean_cosine, ">="),
        ("worst cosine", figures["worst_cosine"], t.min_worst_cosine, ">="),
        ("zero-shot agreement", figures["agreement"], t.min_agreement, ">="),
        ("accuracy drop", figures.get("accuracy_drop"), t.max_accuracy_drop, "<="),
    ]
    for name, value, bar, op in checks:
        if bar is None or value is None:
            continue
        ok = value >= bar if op == ">=" else value <= bar  # NaN fails both
        if not ok:
            fails.append(f"{name} {value:.4f} (needs {op} {bar})")
    return fails


def summary(result: GateResult) -> str:
    """One line of the figures: for logs and error messages."""
    f = result.figures
    parts = [f"mean cosine {f['mean_cosine']:.5f}", f"worst {f['worst_cosine']:.5f}",
             f"agreement {f['agreement']:.2%} on {f['eval_images']} images of {f['eval_set']}"]  # fmt: skip
    for group, acc in f.get("accuracy", {}).items():
        parts.append(f"accuracy[{group}] {acc['fp32']:.2%} -> {acc['this']:.2%}")
    if not f["finite"]:
        parts.append("NaN/Inf")
    return ", ".join(parts)


def _bank(text: np.ndarray, templates: int) -> np.ndarray:
    text = text / np.linalg.norm(text, axis=-1, keepdims=True)
    bank = text.reshape(-1, templates, text.shape[-1]).mean(1)
    return bank / np.linalg.norm(bank, axis=-1, keepdims=True)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def probe_images(size: int, mean: Sequence[float], std: Sequence[float], seed: int = 0) -> np.ndarray:
    """Preprocessed pixels of the images no calibration set holds: black, white, each saturated primary, gray
    noise, colour noise, and a hard checkerboard; (9, 3, size, size) float32."""
    rng = np.random.default_rng(seed)
    rgb = [np.zeros((size, size, 3)), np.ones((size, size, 3))]
    for c in range(3):
        img = np.zeros((size, size, 3))
        img[..., c] = 1
        rgb.append(img)
    rgb.append(np.repeat(rng.uniform(0, 1, (size, size, 1)), 3, -1))
    rgb.append(rng.uniform(0, 1, (size, size, 3)))
    y, x = np.mgrid[0:size, 0:size]
    rgb.append(np.repeat((((x // 4) + (y // 4)) % 2)[..., None], 3, -1).astype(np.float64))
    rgb.append(np.clip(rng.normal(0.5, 0.5, (size, size, 3)), 0, 1))
    pixels = (np.round(np.stack(rgb) * 255) / 255 - np.asarray(mean)) / np.asarray(std)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
