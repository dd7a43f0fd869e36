"""A manifest is data read from disk: every field is checked by type and range when a bundle opens.

Each damaged variant of a valid bundle's edgeclip.json must be refused with one message that names the manifest
file and the field, says what the field must be and what was found; the valid bundle still opens and runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from edgeclip.bundle import MANIFEST_NAME, Bundle, Manifest
from edgeclip.errors import BundleError
from tests.test_runtime import TINY_CONTEXT, TINY_DIM, TINY_SIZE, make_bundle

FIX = "fix the manifest or export the bundle again"
DAMAGED = "the bundle is damaged: export it again"
DELETE = object()

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runnable two-graph bundle with tokenizer files of its own (graphs: [image, text])."""
    return make_bundle(tmp_path_factory.mktemp("valid") / "tiny", tokenizer_files=True)


def _copy(valid: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(valid, target)
    return target


def put(path: str, value: Any) -> Edit:
    """An edit setting the field at the dotted `path` (`graphs.1.inputs.0.shape`) to `value` (DELETE: remove it)."""
    *parents, last = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value

    return edit


def both(*edits: Edit) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        for e in edits:
            e(data)

    return edit


def _fixed_text_length(length: int) -> Edit:
    return put("graphs.1.inputs.0.shape", ["batch", length])


NAN, INF = float("nan"), float("inf")
V = TINY_SIZE  # the image graph takes (batch, 3, 8, 8)

# (id, edit, the message after "<bundle>/edgeclip.json: ")
CASES: list[tuple[str, Edit, str]] = [
    # format and name
    ("version-true", put("format_version", True), "format_version must be the whole number 1, found true (a boolean)"),
    ("version-float", put("format_version", 1.0), "format_version must be the whole number 1, found 1.0"),
    ("version-string", put("format_version", "1"), 'format_version must be the whole number 1, found "1" (a string)'),
    ("version-missing", put("format_version", DELETE), "format_version is missing"),
    ("name-number", put("name", 5), "name must be a non-empty string, found 5"),
    ("name-empty", put("name", ""), 'name must be a non-empty string, found "" (a string)'),
    ("provenance-list", put("provenance", [1]), "provenance must be an object ({...}), found a list of 1"),
    # text
    *[
        (
            f"context-{tag}",
            put("contract.text.context_length", value),
            f"contract.text.context_length must be a whole number from 2 to 65536, found {found}",
        )
        for tag, value, found in [
            ("0", 0, "0"),
            ("1", 1, "1"),
            ("string", "77", '"77" (a string)'),
            ("float", 8.5, "8.5"),
            ("bool", True, "true (a boolean)"),
            ("huge", 10**9, "1000000000"),
            ("null", None, "null"),
        ]
    ],
    (
        "context-longer-than-graph",
        both(_fixed_text_length(TINY_CONTEXT), put("contract.text.context_length", TINY_CONTEXT + 1)),
        f"contract.text.context_length is {TINY_CONTEXT + 1}, but graphs[1] (text.onnx) takes input_ids of shape "
        f"(batch, {TINY_CONTEXT}): a graph of fixed length takes exactly context_length ids",
    ),
    (
        "pooling",
        put("contract.text.pooling", "mean"),
        'contract.text.pooling must be one of "eot", "argmax", "last", found "mean" (a string)',
    ),
    (
        "clean",
        put("contract.text.clean", "ftfy"),
        'contract.text.clean must be one of "clip", "whitespace", "none", found "ftfy" (a string)',
    ),
    (
        "lower-case",
        put("contract.text.lower_case", "yes"),
        'contract.text.lower_case must be true or false, found "yes" (a string)',
    ),
    ("causal", put("contract.text.causal", 1), "contract.text.causal must be true or false, found 1"),
    *[
        (
            f"{name}-{tag}",
            put(f"contract.text.{name}", value),
            f"contract.text.{name} must be a whole number from 0 to 49407, an id of the vocabulary (vocab_size 49408), "
            f"found {found}",
        )
        for name, tag, value, found in [
            ("eot_id", "vocab", 49408, "49408"),
            ("eot_id", "negative", -1, "-1"),
            ("eot_id", "string", "49407", '"49407" (a string)'),
            ("sot_id", "big", 10**6, "1000000"),
            ("pad_id", "negative", -5, "-5"),
        ]
    ],
    ("vocab-size", put("contract.text.vocab_size", 1), "contract.text.vocab_size must be a whole number >= 2, found 1"),
    (
        "tokenizer-files-differ",
        put("contract.text.tokenizer_files", []),
        "contract.text.tokenizer_files is [], but the manifest's tokenizer lists ['tokenizer/vocab.json', "
        "'tokenizer/merges.txt']; the two must name the same files",
    ),
    (
        "text-unknown-field",
        put("contract.text.context", 77),
        "contract.text has unknown fields 'context' (known: context_length, vocab_size, sot_id, eot_id, pad_id, "
        "pooling, lower_case, clean, causal, tokenizer_files)",
    ),
    # head
    (
        "embed-string",
        put("contract.head.embed_dim", "4"),
        'contract.head.embed_dim must be a whole number >= 1, found "4" (a string)',
    ),
    ("embed-zero", put("contract.head.embed_dim", 0), "contract.head.embed_dim must be a whole number >= 1, found 0"),
    (
        "embed-disagrees",
        put("contract.head.embed_dim", 512),
        f"contract.head.embed_dim is 512, but graphs[0] (image.onnx) gives image_embeds of shape (batch, {TINY_DIM}): "
        f"the embedding size must be the graphs' output size",
    ),
    *[
        (
            f"scale-{tag}",
            put("contract.head.logit_scale", value),
            f"contract.head.logit_scale must be a finite number > 0 and <= 10000, found {found}",
        )
        for tag, value, found in [
            ("nan", NAN, "NaN"),
            ("inf", INF, "Infinity"),
            ("negative", -1.0, "-1.0"),
            ("zero", 0, "0"),
            ("absurd", 1e30, "1e+30"),
            ("string", "100", '"100" (a string)'),
        ]
    ],
    (
        "bias-nan",
        put("contract.head.logit_bias", NAN),
        "contract.head.logit_bias must be a finite number from -10000 to 10000, found NaN",
    ),
    (
        "activation",
        put("contract.head.activation", "relu"),
        'contract.head.activation must be one of "softmax", "sigmoid", found "relu" (a string)',
    ),
    # image
    ("size-zero", put("contract.image.size", 0), "contract.image.size must be a whole number from 1 to 16384, found 0"),
    (
        "size-string",
        put("contract.image.size", "8"),
        'contract.image.size must be a whole number from 1 to 16384, found "8" (a string)',
    ),
    (
        "size-disagrees",
        put("contract.image.size", V + 1),
        f"contract.image.size is {V + 1}, but graphs[0] (image.onnx) takes pixels of shape (batch, 3, {V}, {V})",
    ),
    (
        "mean-two",
        put("contract.image.mean", [0.5, 0.5]),
        "contract.image.mean must be a list of 3 finite numbers (R, G, B), found a list of 2",
    ),
    (
        "mean-string",
        put("contract.image.mean", [0.5, "0.5", 0.5]),
        'contract.image.mean[1] must be a finite number, found "0.5" (a string)',
    ),
    (
        "mean-inf",
        put("contract.image.mean", [0.5, 0.5, INF]),
        "contract.image.mean[2] must be a finite number, found Infinity",
    ),
    (
        "std-zero",
        put("contract.image.std", [0.2, 0, 0.2]),
        "contract.image.std[1] must be a finite number > 0, found 0",
    ),
    (
        "std-negative",
        put("contract.image.std", [-0.2, 0.2, 0.2]),
        "contract.image.std[0] must be a finite number > 0, found -0.2",
    ),
    (
        "resize",
        put("contract.image.resize", "crop"),
        'contract.image.resize must be one of "shortest", "squash", found "crop" (a string)',
    ),
    (
        "interpolation",
        put("contract.image.interpolation", "bilinear"),
        'contract.image.interpolation must be one of "bicubic", found "bilinear" (a string)',
    ),
    (
        "channel-order",
        put("contract.image.channel_order", "BGR"),
        'contract.image.channel_order must be one of "RGB", found "BGR" (a string)',
    ),
    ("image-missing", put("contract.image", DELETE), "contract.image is missing"),
    ("contract-list", put("contract", []), "contract must be an object ({...}), found a list of 0"),
    # graphs
    ("graphs-empty", put("graphs", []), "graphs must be a list of at least 1, found a list of 0"),
    ("graphs-object", put("graphs", {}), "graphs must be a list ([...]), found an empty object"),
    (
        "tower",
        put("graphs.0.tower", "audio"),
        'graphs[0].tower must be one of "image", "text", found "audio" (a string)',
    ),
    (
        "precision",
        put("graphs.0.precision", "int4"),
        'graphs[0].precision must be one of "fp32", "fp16", "int8", found "int4" (a string)',
    ),
    (
        "no-fp32",
        put("graphs.0.precision", "fp16"),
        "graphs has fp16 graphs of the image tower but no fp32 one; every tower keeps its fp32 graph (the reference "
        "the other precisions were checked against)",
    ),
    ("file-number", put("graphs.0.file", 5), "graphs[0].file must be a non-empty string, found 5"),
    (
        "file-outside",
        put("graphs.0.file", "../x.onnx"),
        "the manifest graphs[0].file names the file '../x.onnx', which is not a plain path inside the bundle",
    ),
    (
        "sha-short",
        put("graphs.1.sha256", "abc"),
        "graphs[1].sha256 must be the sha256 of the graph file and its data file (64 lowercase hex digits), "
        'found "abc" (a string)',
    ),
    ("inputs-empty", put("graphs.1.inputs", []), "graphs[1].inputs must be a list of at least 1, found a list of 0"),
    (
        "dtype",
        put("graphs.1.inputs.0.dtype", "long"),
        'graphs[1].inputs[0].dtype must be one of "float32", "float16", "float64", "int64", "int32", "int16", "int8", '
        '"uint8", "uint16", "uint32", "uint64", "bool", found "long" (a string)',
    ),
    *[
        (
            f"shape-{tag}",
            put("graphs.0.inputs.0.shape", ["batch", 3, value, V]),
            f"graphs[0].inputs[0].shape[2] must be a whole number >= 1 or the name of a dynamic axis (a string), "
            f"found {found}",
        )
        for tag, value, found in [
            ("zero", 0, "0"),
            ("bool", True, "true (a boolean)"),
            ("float", 8.0, "8.0"),
            ("null", None, "null"),
        ]
    ],
    (
        "shape-string",
        put("graphs.0.outputs.0.shape", "batch"),
        'graphs[0].outputs[0].shape must be a list ([...]), found "batch" (a string)',
    ),
    (
        "spec-name",
        put("graphs.0.outputs.0.name", ""),
        'graphs[0].outputs[0].name must be a non-empty string, found "" (a string)',
    ),
    (
        "backends-unknown",
        put("graphs.0.backends", ["cuda"]),
        'graphs[0].backends[0] must be one of "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", '
        '"torch", found "cuda" (a string)',
    ),
    (
        "backends-string",
        put("graphs.0.backends", "onnxruntime"),
        'graphs[0].backends must be a list ([...]), found "onnxruntime" (a string)',
    ),
    (
        "backends-twice",
        put("graphs.0.backends", ["onnxruntime", "onnxruntime"]),
        "graphs[0].backends names a backend twice: ['onnxruntime', 'onnxruntime']",
    ),
    ("scheme", put("graphs.0.scheme", 5), "graphs[0].scheme must be a string, found 5"),
    ("gate", put("graphs.0.gate", []), "graphs[0].gate must be an object ({...}), found a list of 0"),
    ("parity", put("graphs.0.parity", "good"), 'graphs[0].parity must be an object ({...}), found "good" (a string)'),
    # tokenizer
    (
        "tokenizer-string",
        put("tokenizer", "tokenizer/vocab.json"),
        'tokenizer must be a list ([...]), found "tokenizer/vocab.json" (a string)',
    ),
]


def _damage(valid: Path, tmp_path: Path, edit: Edit) -> Path:
    bundle = _copy(valid, tmp_path)
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    edit(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return bundle


def _refused(bundle: Path) -> str:
    with pytest.raises(BundleError) as caught:
        Bundle.open(bundle)
    return str(caught.value)


@pytest.mark.parametrize(("edit", "message"), [pytest.param(e, m, id=i) for i, e, m in CASES])
def test_a_damaged_field_is_refused_by_name(valid: Path, tmp_path: Path, edit: Edit, message: str) -> None:
    bundle = _damage(valid, tmp_path, edit)
    assert _refused(bundle) == f"{bundle / MANIFEST_NAME}: {message}; {FIX}"


def test_the_valid_bundle_opens_and_each_case_names_a_different_damage(valid: Path) -> None:
    manifest = Bundle.open(valid).manifest
    assert manifest.contract.head.embed_dim == TINY_DIM and manifest.contract.text.context_length == TINY_CONTEXT
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest
    assert len({i for i, _, _ in CASES}) == len(CASES) >= 40


def test_a_fixed_length_text_graph_of_the_contract_length_opens(valid: Path, tmp_path: Path) -> None:
    bundle = _damage(valid, tmp_path, _fixed_text_length(TINY_CONTEXT))
    assert Bundle.open(bundle).graph("text").inputs[0].shape == ("batch", TINY_CONTEXT)


def test_a_context_longer_than_a_dynamic_text_graph_takes_is_refused_at_load(tmp_path: Path) -> None:
    # The manifest itself is valid (a dynamic-length graph takes any length); the graph's positions are fewer.
    import edgeclip
    from edgeclip.runtime import builtin_bundle_path

    shipped = builtin_bundle_path()
    context = Bundle.open(shipped).manifest.contract.text.context_length
    bundle = _damage(shipped, tmp_path, put("contract.text.context_length", context * 2))
    for precision in ("fp32", "int8"):
        with pytest.raises(BundleError, match=rf"text graph text\..*onnx of bundle .* does not take {context * 2} "
                           r"tokens, the context length its manifest gives \(contract.text.context_length\): .+\. "
                           "Export the bundle again$"):  # fmt: skip
            edgeclip.load(bundle, backend="onnxruntime", precision=precision)
    with edgeclip.load(shipped, backend="onnxruntime") as model, pytest.warns(RuntimeWarning, match="cut to fit"):
        assert model.encode_text(["a " * (context * 3)]).shape == (1, model.contract.head.embed_dim)  # as shipped


def test_a_manifest_nested_thousands_deep_is_refused(valid: Path, tmp_path: Path) -> None:
    bundle = _copy(valid, tmp_path)
    (bundle / MANIFEST_NAME).write_text("[" * 10_000 + "]" * 10_000)
    assert _refused(bundle) == f"{bundle / MANIFEST_NAME} nests lists or objects thousands of levels deep; {DAMAGED}"
    data = json.loads((valid / MANIFEST_NAME).read_text())
    data["provenance"]["note"] = json.loads("[" * 40 + "]" * 40)  # parses, but deeper than any manifest
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))
    assert _refused(bundle) == (
        f"{bundle / MANIFEST_NAME} nests lists or objects more than 32 levels deep (a manifest is about 6); {DAMAGED}"
    )


def test_a_number_too_long_to_read_is_invalid_json(valid: Path, tmp_path: Path) -> None:
    bundle = _copy(valid, tmp_path)
    text = (valid / MANIFEST_NAME).read_text().replace('"context_length": 8', '"context_length": ' + "9" * 5000)
    (bundle / MANIFEST_NAME).write_text(text)
    message = _refused(bundle)
    assert message.startswith(f"{bundle / MANIFEST_NAME} is not valid JSON (") and message.endswith(DAMAGED)


@pytest.mark.parametrize("which", ["graph", "tokenizer"])
def test_a_file_linking_outside_the_bundle_is_refused(valid: Path, tmp_path: Path, which: str) -> None:
    bundle = _copy(valid, tmp_path)
    name, field = ("text.onnx", "graphs[1].file") if which == "graph" else ("tokenizer/merges.txt", "tokenizer[1]")
    outside = tmp_path / "elsewhere" / Path(name).name
    outside.parent.mkdir()
    shutil.copy(bundle / name, outside)  # the same bytes: the hash alone would not notice
    (bundle / name).unlink()
    os.symlink(outside, bundle / name)
    assert _refused(bundle) == (
        f"{bundle / MANIFEST_NAME}: {field} names {name}, a symbolic link to {outside.resolve()}, outside the bundle; "
        f"a bundle holds its own files: copy the file into the bundle in place of the link, or export the bundle again"
    )


def test_a_link_inside_the_bundle_is_fine(valid: Path, tmp_path: Path) -> None:
    bundle = _copy(valid, tmp_path)
    (bundle / "graphs").mkdir()
    os.replace(bundle / "image.onnx", bundle / "graphs" / "image.onnx")
    os.symlink(Path("graphs") / "image.onnx", bundle / "image.onnx")
    Bundle.open(bundle)


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize("case", ["context-0", "scale-string", "embed-disagrees"])
def test_classify_on_a_damaged_bundle_is_one_error_line(valid: Path, tmp_path: Path, case: str) -> None:
    script = Path(sys.executable).parent / "edgeclip"
    if not script.exists():
        pytest.skip("the edgeclip script is not installed beside this Python")
    image = tmp_path / "gray.png"
    Image.new("RGB", (12, 10), (128, 128, 128)).save(image)
    env = {"EDGECLIP_CACHE": str(tmp_path / "cache"), "PATH": str(script.parent)}
    command = [str(script), "classify", str(image), "--labels", "cat,dog", "--bundle"]
    ok = subprocess.run([*command, str(valid)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    edit, message = next((e, m) for i, e, m in CASES if i == case)
    bundle = _damage(valid, tmp_path, edit)
    bad = subprocess.run([*command, str(bundle)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == f"error: {bundle / MANIFEST_NAME}: {message}; {FIX}\n"


def test_the_crop_rounding_is_kept_and_checked() -> None:
    """The rounding "floor" (transformers' processors) is written and read back; the default "round" is not
    written, so files from before the field existed read the same; any other value is refused by name."""
    from edgeclip.contract import ImageSpec, ModelContract
    from edgeclip.errors import BundleError

    floor = ModelContract(name="m", image=ImageSpec(size=32, crop="floor"))
    assert floor.to_dict()["image"]["crop"] == "floor"
    assert ModelContract.from_dict(json.loads(json.dumps(floor.to_dict()))) == floor
    assert "crop" not in ModelContract(name="m").to_dict()["image"]
    bad = floor.to_dict()
    bad["image"]["crop"] = "ceil"
    with pytest.raises(BundleError, match=r"contract.image.crop"):
        ModelContract.from_dict(bad)
