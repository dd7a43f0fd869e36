"""One training run from its settings: architecture or checkpoint, data, options, recipe file. The CLI's library.

A recipe is a JSON file of settings (the built-in model's is `edgeclip/builtin/recipe.json`): keys "arch" (a name),
"config" (an architecture, for a name that is not a preset), "image" (ImageSpec fields other than size), "data",
"threads", "train" (TrainOptions fields) and "world" (WorldOptions fields). Settings given directly win.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeclip.contract import ModelContract
from edgeclip.errors import InputError
from edgeclip.models.config import PRESETS, CLIPConfig, TextConfig, VisionConfig, config_from_dict, contract_from_config
from edgeclip.train.data import WorldOptions
from edgeclip.train.loop import TrainOptions, TrainResult

# A model small enough for tests: a few training steps take a second.
MICRO = CLIPConfig(
    embed_dim=32,
    vision=VisionConfig(image_size=32, layers=1, width=32, patch_size=8, head_width=16, act="gelu"),
    text=TextConfig(context_length=16, width=32, heads=2, layers=1, act="gelu"),
)


# "targets", "measured" (accuracies) and "comment" are documentation: training ignores them.
RECIPE_KEYS = frozenset(
    {"arch", "config", "image", "data", "threads", "train", "world", "targets", "measured", "comment"}
)


def known_archs() -> list[str]:
    return sorted([*PRESETS, "micro", "tiny"])


def arch_config(name: str, recipe: dict[str, Any] | None = None) -> CLIPConfig:
    """The architecture a name means: "tiny" (the built-in model), "micro" (tests), a recipe's own, or a preset."""
    if recipe is not None and recipe.get("arch") == name and "config" in recipe:
        return config_from_dict(recipe["config"])
    if name == "tiny":
        from edgeclip import builtin

        return builtin.config()
    if name == "micro":
        return MICRO
    if name in PRESETS:
        return PRESETS[name]
    raise InputError(f"unknown architecture preset {name!r}; known presets: {', '.join(known_archs())}")


def default_contract(name: str, config: CLIPConfig, image: dict[str, Any] | None = None) -> ModelContract:
    """The contract of a model trained from scratch: the runtime's defaults at the model's sizes."""
    return contract_from_config(name, config, image)


def load_recipe(path: Path) -> dict[str, Any]:
    try:
        recipe: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(
            f"cannot read the recipe {path}: {exc}; give a JSON file like edgeclip/builtin/recipe.json"
        ) from None
    unknown = set(recipe) - RECIPE_KEYS
    if unknown:
        raise InputError(f"unknown keys {sorted(unknown)} in the recipe {path}")
    return recipe


def _fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise InputError(f"unknown {where} settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


@dataclass(frozen=True)
class RunSpec:
    out: Path
    data: str | None = None  # "world", a .csv/.jsonl file or a folder (default: the recipe's, else "world")
    arch: str | None = None  # train from scratch with this architecture
    init: Path | None = None  # or fine-tune this checkpoint
    resume: Path | None = None  # continue a run exactly
    recipe: Path | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainOptions fields, over the recipe's
    world: dict[str, Any] = field(default_factory=dict)  # WorldOptions fields, over the recipe's
    threads: int | None = None  # torch threads (default: the recipe's, else 1)
    eval: bool = True  # evaluate on the world's sets (every train.eval_every steps and at the end)
    final: Path | None = None  # also write the trained model here as one file
    final_dtype: Literal["fp32", "fp16"] = "fp32"
    progress: bool = True
    device: str = "cpu"  # where the model trains: "cpu", "cuda", "cuda:N"
    workers: int = 1  # processes rendering the synthetic world ahead of the trainer


def run(spec: RunSpec) -> TrainResult:
    """Build the model, data and evaluator a RunSpec describes, train, and write the final model."""
    import torch

    from edgeclip.train.data import open_source
    from edgeclip.train.heap import keep_freed_memory
    from edgeclip.train.loop import resume_arch, save_final, train

    if spec.final is not None:
        from edgeclip.checkpoint import check_checkpoint_name

        check_checkpoint_name(spec.final)  # before the run, not after it
    recipe = load_recipe(spec.recipe) if spec.recipe is not None else {}
    options = TrainOptions(**_fields(TrainOptions, {**recipe.get("train", {}), **spec.train}, "train"))
    world = WorldOptions(
        **_fields(WorldOptions, {"seed": options.seed, **recipe.get("world", {}), **spec.world}, "world")
    )
    threads = spec.threads if spec.threads is not None else int(recipe.get("threads", 1))
    torch.set_num_threads(threads)
    keep_freed_memory()  # process-wide, as the thread count: a step reuses the last one's memory (train/heap.py)
    if spec.init is not None and spec.arch is not None:
        raise InputError("give either --arch (train from scratch) or --init (fine-tune a checkpoint), not both")
    arch = spec.arch if spec.arch is not None else recipe.get("arch")
    tokenizer_dir = None
    if spec.init is not None:
        from edgeclip.checkpoint import load_checkpoint

        ckpt = load_checkpoint(spec.init)
        model, contract, arch = ckpt.model.train(), ckpt.contract, f"init:{spec.init.name}"
        tokenizer_dir = ckpt.tokenizer_dir
    else:
        if arch is None and spec.resume is not None:
            arch = resume_arch(spec.resume)[0]
        if arch is None:
            raise InputError(f"name an architecture (--arch, one of {', '.join(known_archs())}) or --init a checkpoint")
        from edgeclip.models import CLIP

        config = arch_config(arch, recipe)
        torch.manual_seed(options.seed)
        model = CLIP(config)
        contract = default_contract(arch, config, recipe.get("image"))
    from edgeclip.train.inputs import model_tokenizer

    # The checkpoint's own tokenizer (a fine-tuned Hugging Face model may have another vocabulary), as the runtime.
    tokenizer = model_tokenizer(contract.text, tokenizer_dir)
    data = spec.data if spec.data is not None else recipe.get("data", "world")
    source = open_source(data, contract.image, options.batch_size, options.seed, world, workers=spec.workers)
    evaluate = None
    if spec.eval:
        from edgeclip.train.evaluate import WorldEvaluator

        sets: dict[str, int | None] = dict.fromkeys(("color_shape", "count", "position", "ood"), options.eval_n)
        evaluate = WorldEvaluator(contract, sets, tokenizer=tokenizer)
    result = train(
        model, contract, source, spec.out, options, arch=arch, resume=spec.resume, evaluate=evaluate,
        progress=spec.progress, device=spec.device, tokenizer=tokenizer,
    )  # fmt: skip
    if spec.final is not None:
        save_final(result.ema if result.ema is not None else model, spec.final, contract, spec.final_dtype)
    return result
