"""The reduced-precision options shared by `edgeclip export` and `edgeclip quantize`, and their typed form."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

CALIB_METHODS = ("percentile", "entropy", "minmax")  # edgeclip.precision.int8.CALIB_METHODS (no onnx import here)
CPU_SCHEMES = ("auto", "dynamic-u8s8", "qdq-u8s8", "qoperator-u8s8")

_OPTIONS = [
    click.option("--fp16/--no-fp16", default=False, help="Add fp16 graphs of both towers (LayerNorm, softmax, the "
                 "projection and the L2 norm stay fp32), behind the fp16 accuracy gate."),
    click.option("--int8/--no-int8", default=False, help="Add int8 graphs: Q/DQ for TensorRT and ONNX Runtime's "
                 "fastest CPU format, calibrated, behind the int8 accuracy gate."),
    click.option("--int8-towers", default="image,text", show_default=True, metavar="TOWERS",
                 help="Which towers --int8 quantizes (the others stay float): image, text or image,text."),
    click.option("--calib", type=click.Path(path_type=Path), default=None, metavar="DIR",
                 help="Your images for int8 calibration (any size; default for the built-in model: its world)."),
    click.option("--calib-text", type=click.Path(path_type=Path), default=None, metavar="FILE",
                 help="Captions or label prompts, one per line, to calibrate the text tower."),
    click.option("--eval", "eval_dir", type=click.Path(path_type=Path), default=None, metavar="DIR",
                 help="A labelled set for the gate: one sub-folder of images per label (default: the built-in "
                 "model's evaluation sets, or agreement with fp32 on held-out calibration images)."),
    click.option("--calib-method", type=click.Choice(CALIB_METHODS), default="percentile", show_default=True,
                 help="How activation ranges are calibrated."),
    click.option("--int8-skip", default="auto", show_default=True, metavar="NODES|auto",
                 help="Nodes (comma-separated) to leave in float besides the stem and the projection; auto: while "
                 "the gate fails, the linear layers that add the most error."),
    click.option("--cpu-int8", type=click.Choice(CPU_SCHEMES), default="auto", show_default=True,
                 help="The int8 format for ONNX Runtime CPU (auto: dynamic, measured fastest here)."),
]  # fmt: skip


def precision_options(f: F) -> F:
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def to_precision(kwargs: dict[str, Any]) -> Any:
    """The PrecisionOptions the options in `kwargs` mean (popped from it)."""
    from edgeclip.precision.variants import PrecisionOptions

    towers = tuple(t.strip() for t in kwargs.pop("int8_towers").split(",") if t.strip())
    skip = kwargs.pop("int8_skip").strip()
    return PrecisionOptions(
        fp16=kwargs.pop("fp16"),
        int8=kwargs.pop("int8"),
        int8_towers=towers,
        calib=kwargs.pop("calib"),
        calib_text=kwargs.pop("calib_text"),
        eval_dir=kwargs.pop("eval_dir"),
        method=kwargs.pop("calib_method"),
        skip=None if skip in ("", "auto") else tuple(s.strip() for s in skip.split(",") if s.strip()),
        cpu_scheme=kwargs.pop("cpu_int8"),
    )


def echo_graphs(graphs: Any) -> None:
    """One line per graph: fp32 parity against PyTorch, reduced precisions their gate."""
    for g in graphs:
        if g.precision == "fp32":
            p = g.parity
            click.echo(f"  {g.file} (fp32): min cosine {p['min_cosine']:.8f} against PyTorch, max abs diff "
                       f"{p['max_abs_diff']:.2e}")  # fmt: skip
            continue
        gate = g.gate
        line = (f"  {g.file} ({g.precision}, {g.scheme}, for {', '.join(g.backends) or 'every backend'}): "
                f"cosine to fp32 mean {gate['mean_cosine']:.5f} worst {gate['worst_cosine']:.5f}, zero-shot "
                f"agreement {gate['agreement']:.2%}")  # fmt: skip
        drop = gate.get("accuracy_drop")
        click.echo(line + (f", accuracy drop {drop * 100:.2f} points" if drop is not None else ""))
