"""Triton Python-backend model: text strings to the token ids of an edgeclip bundle's text graph.

`edgeclip triton` copies this file to `<name>_tokenizer/1/model.py`, beside the bundle's manifest (`edgeclip.json`)
and tokenizer files. Triton's Python environment needs edgeclip installed (`pip install edgeclip`: numpy,
tokenizers and ftfy are what the tokenizer uses; no ONNX Runtime is loaded here).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

try:
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend at run time
except ImportError:  # imported outside Triton (edgeclip's own package): the module is a template there
    pb_utils = None

INPUT = "TEXT"
OUTPUT = "input_ids"


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        from edgeclip.contract import ModelContract
        from edgeclip.tokenizer import Tokenizer

        here = os.path.join(args["model_repository"], str(args["model_version"]))
        with open(os.path.join(here, "edgeclip.json"), encoding="utf-8") as f:
            spec = ModelContract.from_dict(json.load(f)["contract"]).text
        folder = os.path.join(here, "tokenizer")
        self.tokenizer = Tokenizer.from_pretrained_dir(folder, spec) if os.path.isdir(folder) else Tokenizer(spec)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, INPUT).as_numpy()  # (B, 1) of bytes
            strings = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts.reshape(-1)]
            ids = np.ascontiguousarray(self.tokenizer(strings), dtype=np.int64)  # (B, context_length)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, ids)]))
        return responses
