"""What training feeds the model, through the runtime's own code: one implementation of each input rule.

- Pixels: `edgeclip.images.decode` (alpha, EXIF orientation, 16-bit PNGs, as the runtime decodes them), the
  Preprocessor's resize and crop, and its lookup table (`Preprocessor.lookup`) for the normalization.
- Token ids: the model's tokenizer (a checkpoint's own files, else the CLIP BPE shipped with edgeclip, as the
  runtime picks it), trimmed after every row's pooled token by the runtime's rule.
- Prompt ensembles: `edgeclip.zeroshot.ensemble`. The logit-scale clamp: `edgeclip.models.loss.MAX_LOGIT_SCALE`.
  Captions' prefixes: `edgeclip.world.captions.PREFIXES`. Contracts of models trained from scratch:
  `edgeclip.models.config.contract_from_config`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeclip.contract import TextSpec
from edgeclip.tokenizer import Tokenizer


def model_tokenizer(spec: TextSpec, tokenizer_dir: Path | None) -> Tokenizer:
    """The tokenizer a model's contract and checkpoint folder mean (the runtime's choice of tokenizer files)."""
    return Tokenizer(spec) if tokenizer_dir is None else Tokenizer.from_pretrained_dir(tokenizer_dir, spec)


def text_ids(ids: np.ndarray, spec: TextSpec) -> np.ndarray:
    """(B, T) int64 ids without the padding columns after every row's pooled token, as the runtime trims them."""
    from edgeclip.runtime import trim_padding

    return np.ascontiguousarray(trim_padding(np.asarray(ids), spec), dtype=np.int64)
