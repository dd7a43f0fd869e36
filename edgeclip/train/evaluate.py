"""Zero-shot evaluation of a PyTorch CLIP on the synthetic world's fixed evaluation sets.

Each candidate label is put into several prompt templates (phrasings the world's captions use); a label's text
embedding is the renormalized mean of its templates' embeddings. Figures: top-1 accuracy on seen and held-out
color-shape pairs (64 candidates), counting (24 candidates) and position (32 candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from edgeclip.contract import ModelContract
from edgeclip.models.clip import CLIP
from edgeclip.world.vocab import article

Template = Callable[[str], str]

# Per evaluation kind: phrasings of the world's captions ("a photo of a red star", "there is a red star", ...).
PREFIXES = ("a photo of", "a picture of", "an image of", "a rendering of", "a drawing of")
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "color_shape": (
        lambda label: f"{article(label)} {label}",
        lambda label: f"there is {article(label)} {label}",
        *(lambda label, p=p: f"{p} {article(label)} {label}" for p in PREFIXES),
    ),
    "count": (
        lambda label: label,
        lambda label: f"there {'is' if label.startswith('one ') else 'are'} {label}",
        *(lambda label, p=p: f"{p} {label}" for p in PREFIXES),
    ),
    "position": (
        lambda label: f"{article(label)} {label}",
        lambda label: f"there is {article(label)} {label}",
        *(lambda label, p=p: f"{p} {article(label)} {label}" for p in PREFIXES),
    ),
}


def _text_ids(texts: Sequence[str], context_length: int) -> torch.Tensor:
    from edgeclip.tokenizer import tokenize

    return torch.from_numpy(np.asarray(tokenize(list(texts), context_length)).astype(np.int64))


class WorldEvaluator:
    """Prepares the evaluation sets once (pixels, prompt ids), then scores a model in a few forward passes."""

    def __init__(
        self,
        contract: ModelContract,
        sizes: dict[str, int | None] | None = None,
        seed: int = 1234,
        batch_size: int = 256,
    ) -> None:
        from edgeclip.preprocess import Preprocessor
        from edgeclip.world import EVAL_KINDS, eval_set

        sizes = sizes if sizes is not None else dict.fromkeys(EVAL_KINDS)
        pre = Preprocessor(contract.image)
        self.batch_size = batch_size
        self.sets: dict[str, dict[str, Any]] = {}
        for kind, n in sizes.items():
            items = eval_set(kind, n, seed)
            labels = items[0].labels
            prompts = [template(label) for label in labels for template in TEMPLATES[kind]]
            self.sets[kind] = {
                "pixels": torch.from_numpy(pre([item.image for item in items])),
                "truth": torch.tensor([labels.index(item.label) for item in items]),
                "heldout": torch.tensor([item.heldout for item in items]),
                "ids": _text_ids(prompts, contract.text.context_length),
                "templates": len(TEMPLATES[kind]),
            }

    @torch.no_grad()
    def predictions(self, model: CLIP, kind: str) -> torch.Tensor:
        """The predicted label index of every item of one set."""
        data = self.sets[kind]
        device = model.logit_scale.device
        text = torch.nn.functional.normalize(self._encode(model.encode_text, data["ids"], device), dim=-1)
        text = text.view(-1, data["templates"], text.shape[-1]).mean(1)  # (labels, D): the template ensemble
        text = torch.nn.functional.normalize(text, dim=-1)
        image = torch.nn.functional.normalize(self._encode(model.encode_image, data["pixels"], device), dim=-1)
        return (image @ text.t()).argmax(-1)

    def _encode(
        self, fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        return torch.cat([fn(chunk.to(device)).float().cpu() for chunk in inputs.split(self.batch_size)])

    def __call__(self, model: CLIP) -> dict[str, float]:
        """Top-1 accuracies: "seen" and "heldout" (color-shape), "count", "position" (the sets prepared)."""
        was_training = model.training
        model.eval()
        figures: dict[str, float] = {}
        try:
            for kind, data in self.sets.items():
                correct = self.predictions(model, kind) == data["truth"]
                if kind == "color_shape":
                    held = data["heldout"]
                    figures["seen"] = float(correct[~held].float().mean()) if (~held).any() else float("nan")
                    figures["heldout"] = float(correct[held].float().mean()) if held.any() else float("nan")
                else:
                    figures[kind] = float(correct.float().mean())
        finally:
            model.train(was_training)
        return figures
