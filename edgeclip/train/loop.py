"""The training loop: AdamW, warmup + cosine, gradient clipping and accumulation, atomic checkpoints, exact resume.

A run writes into its output folder:
- `step-NNNNNNN/` checkpoints: `model.safetensors` (`save_checkpoint`, loadable by `load_checkpoint`), `state.pt`
  (optimizer, RNG, step) and, when `ema` is on, `ema.safetensors` (the averaged weights, loadable the same way).
  Each is written into a temporary folder and renamed into place, so a `kill -9` loses at most the steps since the
  last one and never leaves a half-written `step-*` folder. The newest `keep` are kept.
- `metrics.jsonl`: one line per logged step (loss, learning rate, images/s) and per evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from edgeclip.contract import ModelContract, TextSpec
from edgeclip.errors import CheckpointError, InputError
from edgeclip.models.config import CLIPConfig
from edgeclip.models.loss import MAX_LOGIT_SCALE, clip_loss
from edgeclip.train.data import Batch, BatchSource

if TYPE_CHECKING:
    from edgeclip.models.clip import CLIP
    from edgeclip.tokenizer import Tokenizer

STATE_FILE = "state.pt"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
MAX_LOG_SCALE = math.log(MAX_LOGIT_SCALE)


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 1000
    batch_size: int = 128  # per forward pass; the optimizer sees batch_size * accum pairs per step
    accum: int = 1
    lr: float = 1e-3
    min_lr: float = 0.0  # the cosine schedule ends here
    warmup: int = 100
    weight_decay: float = 0.1  # matrices only: never gains, biases, embeddings or the logit scale
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0
    eval_every: int = 0  # 0: evaluate at the end only
    eval_n: int | None = None  # images per evaluation set (None: the world's default sizes)
    ckpt_every: int = 500
    keep: int = 2
    log_every: int = 10
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); it is evaluated and final


def ema_decay(step: int, decay: float) -> float:
    """The EMA's decay at optimizer step `step` (0-based): ramped up from 0.1 so early weights do not linger."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """An exponential moving average of a model's weights (parameters and float buffers, BatchNorm's statistics
    included), kept beside the model it follows. It changes nothing of the training itself: the same steps, losses
    and random streams with it on or off; only what is evaluated and written at the end differs."""

    def __init__(self, model: CLIP, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise InputError(f"ema {decay}: the decay of the weight average must be between 0 and 1 (0.999 is usual)")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: CLIP, step: int) -> None:
        weight = 1.0 - ema_decay(step, self.decay)
        mine, theirs = self.model.state_dict(), model.state_dict()
        for name, value in theirs.items():
            if value.is_floating_point():
                mine[name].lerp_(value, weight)
            else:  # counters (BatchNorm's num_batches_tracked)
                mine[name].copy_(value)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    steps: int
    seconds: float
    final_loss: float  # mean over the last logged window
    images_per_s: float
    losses: list[float]  # the loss of every step this process ran
    evals: list[dict[str, Any]] = field(default_factory=list)  # with the average's figures under "ema"
    skipped: dict[str, int] = field(default_factory=dict)
    ema: CLIP | None = None  # the weight average (options.ema), the model to write as final


def learning_rate(step: int, options: TrainOptions) -> float:
    """Linear warmup to `lr`, then a cosine down to `min_lr` at the last step."""
    if step < options.warmup:
        return options.lr * (step + 1) / options.warmup
    progress = (step - options.warmup) / max(1, options.steps - options.warmup)
    return options.min_lr + (options.lr - options.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices only (not on gains, biases, embeddings, logit scale)."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or name.endswith("logit_scale"):
            plain.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class TextEncoder:
    """Caption -> token ids with a cache (captions repeat a lot): the runtime's ids, tokenizer and trimming."""

    def __init__(self, spec: TextSpec, tokenizer: Tokenizer | None = None) -> None:
        from edgeclip.train.inputs import model_tokenizer

        self.spec = spec
        self._tokenizer = tokenizer if tokenizer is not None else model_tokenizer(spec, None)
        self._cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        from edgeclip.train.inputs import text_ids

        new = sorted({t for t in texts if t not in self._cache})
        if new:
            full = self._tokenizer(new, self.spec.context_length)
            for text, row in zip(new, np.asarray(full), strict=True):
                self._cache[text] = row
        # The padding columns after every row's pooled token change nothing: dropped, as the runtime does.
        return torch.from_numpy(text_ids(np.stack([self._cache[t] for t in texts]), self.spec))


# ---------------------------------------------------------------------------------------------------- checkpoints
def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    found = [p for p in out.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file() and (p / MODEL_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(path: Path) -> Path:
    """The checkpoint folder `--resume PATH` means: PATH itself, or the newest one inside a run folder."""
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoints(path) if path.is_dir() else []
    if not found:
        raise CheckpointError(
            f"nothing to resume in {path}: it holds no complete step-*/ checkpoint folder "
            f"(with {MODEL_FILE} and {STATE_FILE}); start a new run without --resume"
        )
    return found[-1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_state(
    out: Path,
    step: int,
    model: CLIP,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    keep: int,
    ema: WeightAverage | None = None,
) -> Path:
    """Write checkpoint `step-<step>` atomically (temporary folder + rename), then drop all but the newest `keep`."""
    from edgeclip.checkpoint import save_checkpoint

    final = out / f"step-{step:07d}"
    tmp = out / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    contract = with_logit_scale(info["contract_obj"], model)
    save_checkpoint(model, tmp / MODEL_FILE, contract=contract, extra={"step": step, **info["meta"]})
    names = [MODEL_FILE, STATE_FILE]
    if ema is not None:
        save_checkpoint(ema.model, tmp / EMA_FILE, contract=with_logit_scale(info["contract_obj"], ema.model),
                        extra={"step": step, "ema": ema.decay, **info["meta"]})  # fmt: skip
        names.append(EMA_FILE)
    state = {"step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), **info["state"]}
    torch.save(state, tmp / STATE_FILE)
    for name in names:
        _fsync(tmp / name)
    if final.exists():  # the same step saved by an earlier, interrupted process: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(out)
    for old in checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def describe_config(config: CLIPConfig) -> str:
    """A one-line summary of an architecture, for error messages."""
    v, t = config.vision, config.text
    image = (
        f"ResNet {v.layers} width {v.width}"
        if v.is_resnet
        else f"ViT {v.image_size}px/{v.patch_size} width {v.width} x {v.layers}"
    )
    return f"{image}, text width {t.width} x {t.layers}, context {t.context_length}, embed {config.embed_dim}"


def check_resume_arch(path: Path, saved: CLIPConfig, saved_name: str, wanted: CLIPConfig, wanted_name: str) -> None:
    if saved != wanted:
        raise CheckpointError(
            f"cannot resume from {path}: it was trained with architecture {saved_name!r} ({describe_config(saved)}), "
            f"but this run asks for {wanted_name!r} ({describe_config(wanted)}); resume with --arch {saved_name} "
            "(or without --arch), or start a new run in another --out folder"
        )


# ------------------------------------------------------------------------------------------------------- the loop
def _batches(source: BatchSource, start: int, accum: int) -> Iterator[list[Batch]]:
    step = start
    while True:
        yield [source.batch(step * accum + k) for k in range(accum)]
        step += 1


def train(
    model: CLIP,
    contract: ModelContract,
    source: BatchSource,
    out: Path,
    options: TrainOptions,
    *,
    arch: str,
    resume: Path | None = None,
    evaluate: Callable[[CLIP], dict[str, Any]] | None = None,
    progress: bool = True,
    device: str = "cpu",
    tokenizer: Tokenizer | None = None,
) -> TrainResult:
    """Train `model` (a `CLIP`) contrastively on `source` for `options.steps` steps, checkpointing into `out`.

    `resume`: a checkpoint folder (or a run folder: its newest checkpoint) to continue from exactly; its
    architecture must be the model's. `evaluate(model) -> figures` runs every `eval_every` steps and at the end.
    `device`: where the model trains ("cpu", "cuda", "cuda:1", ...); checkpoints are written the same either way.
    `tokenizer`: the model's (default: the CLIP BPE shipped with edgeclip, checked against the contract).
    """
    if options.batch_size < 2:
        raise InputError(f"batch size {options.batch_size} is too small for a contrastive loss: use at least 2")
    if options.steps < 1:
        raise InputError(f"--steps {options.steps}: train at least one step")
    target = _device(device)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    # Channels-last tensors (oneDNN's layout) and the fused AdamW (one kernel over all parameters) together
    # cut the CPU step of the built-in model from 0.85 to 0.5 s (batch 128, one thread).
    layout = torch.channels_last if model.config.vision.is_resnet else torch.contiguous_format
    model.to(target, memory_format=layout)  # type: ignore[call-overload]  # torch accepts it; its stubs do not
    optimizer = torch.optim.AdamW(
        param_groups(model, options.weight_decay), lr=options.lr, betas=options.betas, eps=options.eps, fused=True
    )
    start = 0
    if resume is not None:
        _check_resume_ema(resume, options.ema)
        start = _restore(resume, model, optimizer, arch)
    ema = WeightAverage(model, options.ema) if options.ema else None
    if ema is not None and resume is not None:
        _restore_ema(resume, ema, start)
    info = {
        "contract_obj": contract,
        "meta": {"arch": arch},
        "state": {"options": _jsonable(asdict(options)), "data": source.describe(), "arch": arch},
    }
    text = TextEncoder(contract.text, tokenizer)
    autocast = options.precision == "bf16"
    log_path = out / "metrics.jsonl"
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    window: list[float] = []
    images, t0 = 0, time.perf_counter()
    bar = _progress(options.steps, start, progress)
    model.train()
    try:
        batches = _batches(source, start, options.accum)
        for step in range(start, options.steps):
            lr = learning_rate(step, options)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_value = 0.0
            for batch in next(batches):
                pixels = torch.from_numpy(batch.pixels).to(target, non_blocking=True).contiguous(memory_format=layout)
                ids = text(batch.texts).to(target, non_blocking=True)
                positives = torch.from_numpy(batch.positives).to(target, non_blocking=True)
                with torch.autocast(target.type, dtype=torch.bfloat16, enabled=autocast):
                    image_emb = model.encode_image(pixels)
                    text_emb = model.encode_text(ids)
                # Pairs with equal captions are positives of each other (multi-positive targets).
                loss = clip_loss(image_emb.float(), text_emb.float(), model.logit_scale, positives)
                (loss / options.accum).backward()
                loss_value += loss.item() / options.accum
                images += len(batch.texts)
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, MAX_LOG_SCALE)  # CLIP's clamp: scale <= 100
            if ema is not None:
                ema.update(model, step)
            losses.append(loss_value)
            window = [*window, loss_value][-options.log_every :]
            done = step + 1
            rate = images / (time.perf_counter() - t0)
            bar.update(loss_value, rate)
            if done % options.log_every == 0 or done == options.steps:
                scale = float(model.logit_scale.detach().exp())
                record = {"step": done, "loss": float(np.mean(window)), "lr": lr, "images_per_s": rate}
                _log(log_path, {**record, "seconds": time.perf_counter() - t0, "scale": scale})
            if evaluate is not None and (
                done == options.steps or (options.eval_every and done % options.eval_every == 0)
            ):
                figures = _run_eval(model, evaluate)
                entry: dict[str, Any] = {"step": done, **figures}
                logged: dict[str, Any] = {"step": done, "eval": figures}
                bar.write(f"step {done}: {describe_figures(figures)}")
                if ema is not None:
                    entry["ema"] = logged["eval_ema"] = averaged = _run_eval(ema.model, evaluate)
                    bar.write(f"step {done} (ema): {describe_figures(averaged)}")
                evals.append(entry)
                _log(log_path, logged)
            if done % options.ckpt_every == 0 or done == options.steps:
                save_training_state(out, done, model, optimizer, info, options.keep, ema)
    finally:
        bar.close()
        source.close()
    seconds = time.perf_counter() - t0
    return TrainResult(
        out=out,
        steps=options.steps,
        seconds=seconds,
        final_loss=float(np.mean(window)) if window else float("nan"),
        images_per_s=images / seconds if seconds > 0 else 0.0,
        losses=losses,
        evals=evals,
        skipped=source.skipped(),
        ema=ema.model if ema is not None else None,
    )


def _device(name: str) -> torch.device:
    """The torch device a `--device` value names, checked: a clear error where it does not exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this PyTorch build or machine has no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: only 'cpu' and 'cuda' devices are supported for training")
    return device


def _restore(path: Path, model: CLIP, optimizer: torch.optim.Optimizer, arch: str) -> int:
    from edgeclip.checkpoint import load_checkpoint

    folder = latest_checkpoint(path)
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    saved = load_checkpoint(folder / MODEL_FILE)
    check_resume_arch(folder, saved.model.config, str(state.get("arch", "?")), model.config, arch)
    model.load_state_dict(saved.model.state_dict())  # copies onto the model's device
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _check_resume_ema(path: Path, decay: float) -> None:
    """Refuse to resume a run that keeps a weight average without one: its final model would silently become the
    last step's weights instead of the average that every evaluation of the run so far reported."""
    folder = latest_checkpoint(path)
    if decay or not (folder / EMA_FILE).is_file():
        return
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    saved = state.get("options", {}).get("ema") if isinstance(state.get("options"), dict) else None
    given = f"--ema {saved}" if saved else "--ema with its decay"
    raise InputError(
        f"{folder} keeps a weight average of the weights ({EMA_FILE}): resume with {given} so that it goes on and "
        f"is the final model as before; to go on without it, delete {folder / EMA_FILE}"
    )


def _restore_ema(path: Path, ema: WeightAverage, step: int) -> None:
    """The weight average saved with the checkpoint `_restore` took; a run that had none starts one from here."""
    from edgeclip.checkpoint import load_checkpoint

    file = latest_checkpoint(path) / EMA_FILE
    if file.is_file():
        ema.model.load_state_dict(load_checkpoint(file).model.state_dict())
    elif step > 0:
        print(f"warning: {file.parent} has no {EMA_FILE}: the weight average starts at step {step}", file=sys.stderr)


def resume_arch(path: Path) -> tuple[str, CLIPConfig]:
    """The architecture name and config of the checkpoint `--resume PATH` means (for runs that do not name one)."""
    from edgeclip.checkpoint import load_checkpoint

    folder = latest_checkpoint(path)
    # map_location as in `_restore`: a run trained on CUDA resumes on a machine without one.
    state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
    return str(state.get("arch", "?")), load_checkpoint(folder / MODEL_FILE).model.config


def _run_eval(model: CLIP, evaluate: Callable[[CLIP], dict[str, Any]]) -> dict[str, Any]:
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model)
    finally:
        model.train(training)


def save_final(model: CLIP, path: Path, contract: ModelContract, dtype: Literal["fp32", "fp16"]) -> None:
    """Write the trained model as one checkpoint file (fp16 storage halves it), with its logit scale in the contract."""
    from edgeclip.checkpoint import save_checkpoint

    final = copy.deepcopy(model).eval()
    if dtype == "fp16":
        final = final.half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(final, path, contract=with_logit_scale(contract, model))


def with_logit_scale(contract: ModelContract, model: CLIP) -> ModelContract:
    """The contract with the model's current (learned) logit scale in its head."""
    scale = min(MAX_LOGIT_SCALE, float(model.logit_scale.detach().exp()))
    return dataclasses.replace(contract, head=dataclasses.replace(contract.head, logit_scale=scale))


def describe_figures(figures: dict[str, float]) -> str:
    """Evaluation figures on one line: "seen 0.997, heldout 0.883, ..."."""
    return ", ".join(f"{k} {v:.3f}" for k, v in figures.items())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class _Bar:
    """A tqdm bar with loss and images/s (tqdm adds the ETA); a no-op when progress is off."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            # Not a terminal (a log file): print a fresh line every 30 s instead of redrawing one.
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             mininterval=0.5 if sys.stderr.isatty() else 30.0)  # fmt: skip

    def update(self, loss: float, rate: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{rate:.0f}", refresh=False)
            self._bar.update(1)

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _progress(total: int, initial: int, enabled: bool) -> _Bar:
    return _Bar(total, initial, enabled)
