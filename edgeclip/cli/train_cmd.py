"""`edgeclip train`: contrastive training from scratch or fine-tuning. A thin shell over `edgeclip.train.run`.

Exit status: 0 trained; 1 any edgeclip error (bad data, unknown architecture, a checkpoint that does not fit);
2 click's usage errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edgeclip.cli.options import TRAIN_MODULES, handle_errors, json_option, require_extra

_TRAIN_FLAGS = ("steps", "batch_size", "accum", "lr", "warmup", "weight_decay", "grad_clip", "precision", "seed",
                "eval_every", "ckpt_every", "ema")  # fmt: skip


@click.command()
@click.option("--out", type=click.Path(path_type=Path), required=True, metavar="DIR", help="Run folder (checkpoints).")
@click.option("--data", default=None, help="'world' (default), a .csv/.jsonl of image,caption pairs, or a folder.")
@click.option("--arch", default=None, help="Train from scratch with this architecture ('tiny', 'micro', a preset).")
@click.option("--init", type=click.Path(path_type=Path), default=None, help="Fine-tune this checkpoint instead.")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="Continue a run (its folder) exactly.")
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="JSON file of settings (see builtin/).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Pairs per forward pass.")
@click.option("--accum", type=click.IntRange(min=1), default=None, help="Forward passes per optimizer step.")
@click.option("--lr", type=float, default=None, help="Peak learning rate (AdamW).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Linear warmup steps before the cosine.")
@click.option("--weight-decay", type=float, default=None, help="Weight decay of the weight matrices.")
@click.option("--grad-clip", type=float, default=None, help="Max gradient norm (0: off).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None, help="bf16 autocast (default fp32).")
@click.option("--seed", type=int, default=None, help="Seed of the initialisation and the data stream.")
@click.option("--ema", type=click.FloatRange(min=0.0, max=1.0, max_open=True), default=None,
              help="Decay of a moving average of the weights (0.999; 0: off): evaluated, the final model.")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Torch threads (default 1, see README).")
@click.option("--device", default="cpu", show_default=True, help="Train on 'cpu', 'cuda' or 'cuda:N'.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes rendering the synthetic world.")  # fmt: skip
@click.option("--eval-every", type=click.IntRange(min=0), default=None, help="Zero-shot eval period (0: at the end).")
@click.option("--eval/--no-eval", "do_eval", default=True, help="Evaluate on the world's sets.")
@click.option("--ckpt-every", type=click.IntRange(min=1), default=None, help="Checkpoint period in steps.")
@click.option("--final", type=click.Path(path_type=Path), default=None, help="Also write the model to this file.")
@click.option("--final-dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@json_option
@handle_errors
def train(
    out: Path, data: str | None, arch: str | None, init: Path | None, resume: Path | None, recipe: Path | None,
    threads: int | None, device: str, workers: int, do_eval: bool, final: Path | None, final_dtype: str,
    progress: bool, as_json: bool, **flags: Any,
) -> None:  # fmt: skip
    """Train a CLIP contrastively (from scratch, from a checkpoint, or resuming a run)."""
    require_extra("train", modules=TRAIN_MODULES)
    from edgeclip.train.run import RunSpec, run

    spec = RunSpec(
        out=out, data=data, arch=arch, init=init, resume=resume, recipe=recipe, threads=threads, eval=do_eval,
        train={k: v for k, v in flags.items() if k in _TRAIN_FLAGS and v is not None},
        final=final, final_dtype="fp16" if final_dtype == "fp16" else "fp32", progress=progress, device=device,
        workers=workers,
    )  # fmt: skip
    result = run(spec)
    report: dict[str, Any] = {
        "out": str(result.out),
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "final_loss": result.final_loss,
        "images_per_s": round(result.images_per_s, 1),
        "eval": result.evals[-1] if result.evals else None,
        "skipped": result.skipped,
        "final": str(final) if final else None,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    if not result.losses:  # resumed a run that had already done every step
        click.echo(f"the run in {result.out} had already done its {result.steps} steps: nothing left to train")
    else:
        click.echo(f"trained {result.steps} steps in {result.seconds:.0f} s ({result.images_per_s:.0f} images/s), "
                   f"final loss {result.final_loss:.4f}; checkpoints in {result.out}")  # fmt: skip
    if report["eval"]:
        from edgeclip.train.loop import describe_figures

        figures = {k: v for k, v in report["eval"].items() if k not in ("step", "ema")}
        click.echo("zero-shot: " + describe_figures(figures))
        if "ema" in report["eval"]:
            click.echo("zero-shot, the weight average (the final model): " + describe_figures(report["eval"]["ema"]))
    if result.skipped:
        click.echo("skipped: " + ", ".join(f"{n} ({reason})" for reason, n in result.skipped.items()))
    if final:
        click.echo(f"model written to {final} ({final_dtype})")
