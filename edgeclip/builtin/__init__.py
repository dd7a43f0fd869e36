"""The built-in model "tiny": a small CLIP trained by `edgeclip train` on the synthetic world, shipped as weights.

Torch-free: this module only knows where the weights and the recipe live and what architecture they have.
Load the weights with `edgeclip.checkpoint.load_checkpoint(checkpoint_path())`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeclip.contract import ModelContract
from edgeclip.errors import CheckpointError
from edgeclip.models.config import CLIPConfig, config_from_dict, contract_from_config

NAME = "tiny"
_HERE = Path(__file__).resolve().parent
WEIGHTS_FILE = "tiny.safetensors"
RECIPE_FILE = "recipe.json"


def recipe_path() -> Path:
    """The training recipe of the built-in model (architecture, data and optimisation settings) as JSON."""
    return _HERE / RECIPE_FILE


def recipe() -> dict[str, Any]:
    """The training recipe as a dict (see `edgeclip.train.run`): "arch", "config", "image", "train", "world"."""
    data: dict[str, Any] = json.loads(recipe_path().read_text())
    return data


def config() -> CLIPConfig:
    """The architecture of the built-in model."""
    return config_from_dict(recipe()["config"])


def contract() -> ModelContract:
    """What the built-in model expects of its inputs (its logit scale is read from the weights when loaded)."""
    return contract_from_config(NAME, config(), recipe()["image"])


def checkpoint_path(name: str = NAME) -> Path:
    """Path of the shipped weights of a built-in model (only "tiny" exists)."""
    if name != NAME:
        raise CheckpointError(f"unknown built-in model {name!r}; the built-in models are: {NAME!r}")
    path = _HERE / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(
            f"the weights of the built-in model {name!r} are missing ({WEIGHTS_FILE} is not in the installed package); "
            "train them with scripts/train_builtin.sh or reinstall edgeclip"
        )
    return path
