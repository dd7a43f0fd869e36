"""Zero-shot evaluation of a PyTorch CLIP on the synthetic world's fixed evaluation sets.

Each candidate label is put into several prompt templates (phrasings the world's captions use); a label's text
embedding is the renormalized mean of its templates' embeddings (`edgeclip.zeroshot.ensemble`, the runtime's rule).
Figures: top-1 accuracy on seen and held-out color-shape pairs (64 candidates), counting (24 candidates) and
position (32 candidates), and on the out-of-distribution renderings of `edgeclip.world.ood` (the same 64
candidates; "ood", and "ood_<family>")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgeclip.contract import ModelContract
from edgeclip.models.clip import CLIP
from edgeclip.world.captions import PREFIXES
from edgeclip.world.vocab import article

if TYPE_CHECKING:
    from edgeclip.tokenizer import Tokenizer

Template = Callable[[str], str]

# Per evaluation kind: phrasings of the world's captions ("a photo of a red star", "there is a red star", ...).
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


def _text_ids(texts: Sequence[str], contract: ModelContract, tokenizer: Tokenizer | None) -> torch.Tensor:
    from edgeclip.train.inputs import model_tokenizer, text_ids

    tok = tokenizer if tokenizer is not None else model_tokenizer(contract.text, None)
    return torch.from_numpy(text_ids(tok(list(texts), contract.text.context_length), contract.text))


class WorldEvaluator:
    """Prepares the evaluation sets once (pixels, prompt ids), then scores a model in a few forward passes."""

    def __init__(
        self,
        contract: ModelContract,
        sizes: dict[str, int | None] | None = None,
        seed: int = 1234,
        batch_size: int = 256,
        *,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        """`tokenizer`: the model's (default: the CLIP BPE shipped with edgeclip, checked against the contract)."""
        from edgeclip.preprocess import Preprocessor
        from edgeclip.world import EVAL_KINDS, eval_set

        sizes = sizes if sizes is not None else dict.fromkeys((*EVAL_KINDS, "ood"))
        pre = Preprocessor(contract.image)
        self.batch_size = batch_size
        self.sets: dict[str, dict[str, Any]] = {}
        for kind, n in sizes.items():
            if kind == "ood":
                self.sets[kind] = self._ood_set(pre, contract, n, tokenizer)
                continue
            items = eval_set(kind, n, seed)
            labels = items[0].labels
            prompts = [template(label) for label in labels for template in TEMPLATES[kind]]
            self.sets[kind] = {
                "pixels": torch.from_numpy(pre([item.image for item in items])),
                "truth": torch.tensor([labels.index(item.label) for item in items]),
                "heldout": torch.tensor([item.heldout for item in items]),
                "ids": _text_ids(prompts, contract, tokenizer),
                "templates": len(TEMPLATES[kind]),
            }

    @staticmethod
    def _ood_set(pre: Any, contract: ModelContract, n: int | None, tokenizer: Tokenizer | None) -> dict[str, Any]:
        from edgeclip.world.ood import ood_labels, ood_set

        items, labels = ood_set(n), ood_labels()
        prompts = [template(label) for label in labels for template in TEMPLATES["color_shape"]]
        return {
            "pixels": torch.from_numpy(pre([item.image for item in items])),
            "truth": torch.tensor([labels.index(item.label) for item in items]),
            "families": [item.family for item in items],
            "ids": _text_ids(prompts, contract, tokenizer),
            "templates": len(TEMPLATES["color_shape"]),
        }

    @torch.no_grad()
    def predictions(self, model: CLIP, kind: str) -> torch.Tensor:
        """The predicted label index of every item of one set."""
        data = self.sets[kind]
        device = model.logit_scale.device
        from edgeclip.zeroshot import ensemble

        prompts = self._encode(model.encode_text, data["ids"], device)
        text = torch.from_numpy(ensemble(prompts.numpy(), data["templates"]))  # (labels, D), as the runtime's bank
        image = torch.nn.functional.normalize(self._encode(model.encode_image, data["pixels"], device), dim=-1)
        return (image @ text.t()).argmax(-1)

    def _encode(
        self, fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, device: torch.device
    ) -> torch.Tensor:
        return torch.cat([fn(chunk.to(device)).float().cpu() for chunk in inputs.split(self.batch_size)])

    def __call__(self, model: CLIP) -> dict[str, float]:
        """Top-1 accuracies: "seen" and "heldout" (color-shape), "count", "position", "ood" and its families (the
        sets prepared)."""
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
                elif kind == "ood":
                    figures["ood"] = float(correct.float().mean())
                    families = np.array(data["families"])
                    for family in dict.fromkeys(data["families"]):
                        figures[f"ood_{family}"] = float(correct[torch.from_numpy(families == family)].float().mean())
                else:
                    figures[kind] = float(correct.float().mean())
        finally:
            model.train(was_training)
        return figures
