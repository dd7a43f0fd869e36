"""Export to verified bundles, checked against models nobody here wrote (transformers CLIPModel, OpenAI's model.py).

Two tiny checkpoints in real on-disk formats are exported once per module (an HF directory through the CLI, an
OpenAI-layout state dict through the library); the other tests reuse their graphs instead of exporting again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import edgeclip.export as export_module
from edgeclip.bundle import Bundle, TensorSpec
from edgeclip.cli import main
from edgeclip.errors import CheckpointError, EdgeClipError, InputError
from edgeclip.export import MIN_COSINE, bundle_from_checkpoint, onnx_from_torch
from tests.reference import load_by_path, openai_model_module, perturb

SIZE, EMBED, CONTEXT, EOT = 32, 16, 77, 49407


def _write_clip_tokenizer_files(directory: Path) -> None:
    """vocab.json + merges.txt as an HF CLIP directory holds them, made from OpenAI's reference BPE."""
    ref = load_by_path("clip", "simple_tokenizer.py").SimpleTokenizer()
    (directory / "vocab.json").write_text(json.dumps(ref.encoder), encoding="utf-8")
    merges = sorted(ref.bpe_ranks, key=ref.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), "utf-8")


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    import transformers

    torch.manual_seed(0)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = transformers.CLIPConfig(
        text_config={
            **layers,
            "max_position_embeddings": CONTEXT,
            "vocab_size": 49408,
            "eos_token_id": EOT,
            "bos_token_id": EOT - 1,
        },
        vision_config={**layers, "image_size": SIZE, "patch_size": 8},
        projection_dim=EMBED,
    )
    model = perturb(transformers.CLIPModel(config)).eval()
    path = tmp_path_factory.mktemp("hf") / "tiny-hf"
    model.save_pretrained(path)
    _write_clip_tokenizer_files(path)
    return path, model


@pytest.fixture(scope="module")
def hf_bundle(hf_model_dir: tuple[Path, Any], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The HF checkpoint exported through the CLI, with its --json report."""
    out = tmp_path_factory.mktemp("bundles") / "hf"
    result = CliRunner().invoke(main, ["export", str(hf_model_dir[0]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def openai_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """An OpenAI-layout state dict (built with OpenAI's own model.py) exported through the library."""
    torch.manual_seed(1)
    model = openai_model_module().CLIP(
        embed_dim=EMBED, image_resolution=SIZE, vision_layers=2, vision_width=64, vision_patch_size=8,
        context_length=CONTEXT, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2,
    )  # fmt: skip
    model = perturb(model).eval()
    source = tmp_path_factory.mktemp("openai") / "tiny-openai.pt"
    torch.save(model.state_dict(), source)
    report = bundle_from_checkpoint(source, tmp_path_factory.mktemp("bundles") / "openai")
    assert report.path.is_dir() and report.seconds > 0
    return report.path, model


def _run(bundle: Path, tower: str, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(bundle / f"{tower}.onnx"), providers=["CPUExecutionProvider"])
    name = {"image": "pixels", "text": "input_ids"}[tower]
    return session.run(None, {name: feed})[0]


def _ids(batch: int, length: int, seed: int) -> np.ndarray:
    """Random token ids with one end-of-text token per row (at varied places), zeros after it, as tokenizers pad."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, EOT - 1, (batch, length))
    ids[:, 0] = EOT - 1
    for row, end in enumerate(rng.integers(1, length, batch)):
        ids[row, end], ids[row, end + 1 :] = EOT, 0
    return ids.astype(np.int64)


def _normalized(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t, dim=-1).detach().numpy()


def _assert_close(got: np.ndarray, want: np.ndarray) -> None:
    cos = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cos.min() > MIN_COSINE and np.abs(got - want).max() < 1e-5, (cos.min(), np.abs(got - want).max())


def test_hf_bundle_matches_transformers_at_any_batch_and_length(hf_model_dir: tuple[Path, Any], hf_bundle) -> None:
    (_, hf), (bundle, _) = hf_model_dir, hf_bundle
    pixels = np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = _normalized(hf.get_image_features(pixel_values=torch.from_numpy(pixels)).pooler_output)
    _assert_close(_run(bundle, "image", pixels), want)
    _assert_close(_run(bundle, "image", pixels[:1]), want[:1])
    for batch, length in [(1, CONTEXT), (4, CONTEXT), (3, 20), (2, 2)]:
        ids = _ids(batch, length, seed=length)
        with torch.no_grad():
            want = _normalized(hf.get_text_features(input_ids=torch.from_numpy(ids)).pooler_output)
        _assert_close(_run(bundle, "text", ids), want)


def test_openai_bundle_matches_openai_model(openai_bundle: tuple[Path, Any]) -> None:
    bundle, model = openai_bundle
    pixels = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    ids = _ids(3, CONTEXT, seed=1)  # OpenAI's model pools at the largest id: the single eot here
    with torch.no_grad():
        _assert_close(_run(bundle, "image", pixels), _normalized(model.encode_image(torch.from_numpy(pixels))))
        _assert_close(_run(bundle, "text", ids), _normalized(model.encode_text(torch.from_numpy(ids))))


def test_manifest_holds_contract_graphs_parity_and_provenance(hf_bundle, openai_bundle) -> None:
    (hf_path, report), (openai_path, _) = hf_bundle, openai_bundle
    bundle = Bundle.open(hf_path)  # verifies every sha256
    m = bundle.manifest
    assert m.name == "tiny-hf" and report["path"] == str(hf_path) and report["seconds"] > 0
    assert bundle.graph("image").inputs == (TensorSpec("pixels", "float32", ("batch", 3, SIZE, SIZE)),)
    assert bundle.graph("image").outputs == (TensorSpec("image_embeds", "float32", ("batch", EMBED)),)
    assert bundle.graph("text").inputs == (TensorSpec("input_ids", "int64", ("batch", "length")),)
    assert bundle.graph("text").outputs == (TensorSpec("text_embeds", "float32", ("batch", EMBED)),)
    for graph, reported in zip(m.graphs, report["graphs"], strict=True):
        assert graph.parity["min_cosine"] >= MIN_COSINE and graph.parity["max_abs_diff"] < 1e-5
        assert reported["min_cosine"] == graph.parity["min_cosine"]
        assert graph.parity["rows"] == 2 * sum(b[0] for b in graph.parity["batches"])  # batch N, then one by one
    assert [b[1] for b in bundle.graph("text").parity["batches"]] == [CONTEXT, 8]  # full and short lengths
    assert m.contract.image.size == SIZE and m.contract.text.eot_id == EOT and m.contract.head.embed_dim == EMBED
    # The HF tokenizer files travel with the bundle, byte for byte; the OpenAI bundle uses the shipped BPE.
    assert m.tokenizer == m.contract.text.tokenizer_files == ("tokenizer/vocab.json", "tokenizer/merges.txt")
    assert Bundle.open(openai_path).manifest.tokenizer == ()
    p = m.provenance
    assert p["source"] == "tiny-hf" and p["source_format"] == "hf" and len(p["source_sha256"]) == 64
    assert p["opset"] >= 17 and p["torch_version"] == torch.__version__ and p["created"].endswith("+00:00")
    assert Bundle.open(openai_path).manifest.provenance["source"] == "tiny-openai.pt"


def test_the_models_own_tokenizer_travels_with_the_bundle(hf_model_dir: tuple[Path, Any], hf_bundle) -> None:
    from edgeclip.tokenizer import Tokenizer

    texts = ["a photo of a cat", "Ünïcödé &amp; ﬁsh", "x" * 300, "", "日本語のテキスト 🤖"]
    source = Tokenizer.from_pretrained_dir(hf_model_dir[0])
    shipped = Tokenizer.from_pretrained_dir(hf_bundle[0] / "tokenizer")
    assert (shipped(texts) == source(texts)).all()


def test_a_tokenizer_json_only_directory_is_exported_as_vocab_and_merges(
    hf_model_dir: tuple[Path, Any], tmp_path: Path
) -> None:
    """transformers 5 saves only tokenizer.json: the bundle still gets the model's own vocabulary."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers.models import BPE

    from edgeclip.tokenizer import Tokenizer

    src = tmp_path / "hf"
    shutil.copytree(hf_model_dir[0], src)
    rust = RustTokenizer(BPE.from_file(str(src / "vocab.json"), str(src / "merges.txt"), end_of_word_suffix="</w>"))
    rust.save(str(src / "tokenizer.json"))
    expected = Tokenizer.from_pretrained_dir(hf_model_dir[0])(["a red star", "Ünïcödé &amp; ﬁsh"])
    (src / "vocab.json").unlink()
    (src / "merges.txt").unlink()
    bundle = bundle_from_checkpoint(src, tmp_path / "bundle").path
    assert Bundle.open(bundle).manifest.tokenizer == ("tokenizer/vocab.json", "tokenizer/merges.txt")
    assert (Tokenizer.from_pretrained_dir(bundle / "tokenizer")(["a red star", "Ünïcödé &amp; ﬁsh"]) == expected).all()


def test_text_graph_pools_with_integer_ops(hf_bundle, openai_bundle) -> None:
    for bundle in (hf_bundle[0], openai_bundle[0]):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(bundle / "text.onnx")))
        graph = model.graph
        elem = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
        producer = {out: node for node in graph.node for out in node.output}
        floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
        for node in graph.node:
            if node.op_type in ("ArgMax", "ArgMin"):
                assert elem[node.input[0]] not in floats, f"{node.name} takes a float tensor"
                cast = producer.get(node.input[0])
                if cast is not None and cast.op_type == "Cast":
                    assert next(a.i for a in cast.attribute if a.name == "to") not in floats
        assert export_module.float_argmax_nodes(model) == []


def _reuse_graphs(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> list[str]:
    """Make export copy `bundle`'s graphs instead of exporting (seconds instead of a minute); returns the calls."""
    calls: list[str] = []

    def fake(model: Any, tower: str, path: Path, *, opset: int = 18) -> Any:
        calls.append(tower)
        entry = Bundle.open(bundle, verify=False).graph(tower)
        shutil.copyfile(bundle / entry.file, path)
        if entry.data:  # the copy refers to its weights by this name, beside it
            shutil.copyfile(bundle / entry.data, path.parent / entry.data)
        return entry.inputs, entry.outputs

    monkeypatch.setattr(export_module.to_onnx, "onnx_from_torch", fake)
    return calls


def test_a_graph_that_misses_parity_fails_the_export_and_writes_nothing(
    hf_model_dir, openai_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OpenAI model's graph offered as the HF model's: same shapes, other weights.
    _reuse_graphs(monkeypatch, openai_bundle[0])
    out = tmp_path / "b"
    with pytest.raises(
        EdgeClipError,
        match=r"the image graph does not match PyTorch: min cosine -?\d\.\d{7} \(needs >= 0\.99999\), max abs diff ",
    ):
        bundle_from_checkpoint(hf_model_dir[0], out)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_existing_bundle_and_force_replaces_it(
    hf_model_dir, hf_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b"
    shutil.copytree(hf_bundle[0], out)
    (out / "old.txt").write_text("from the old bundle")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = _reuse_graphs(monkeypatch, hf_bundle[0])
    result = CliRunner().invoke(main, ["export", str(hf_model_dir[0]), "--out", str(out)])
    assert result.exit_code == 1 and calls == []
    assert "already exists and is not empty; pass --force" in result.stderr and "Traceback" not in result.output
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    result = CliRunner().invoke(main, ["export", str(hf_model_dir[0]), "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert calls == ["image", "text"] and f"written to {out}" in result.stdout and "min cosine" in result.stdout
    assert not (out / "old.txt").exists() and Bundle.open(out).manifest.name == "tiny-hf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or old dir left


def test_cli_reports_a_missing_checkpoint_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["export", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: no checkpoint at" in result.stderr and not (tmp_path / "b").exists()


def test_no_builtin_model_yet_says_how_to_pass_a_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeclip import builtin
    from edgeclip.errors import CheckpointError

    def missing(name: str = "tiny") -> Path:
        raise CheckpointError("the weights of the built-in model 'tiny' are missing")

    monkeypatch.setattr(builtin, "checkpoint_path", missing)
    with pytest.raises(EdgeClipError, match=r"no built-in model to export yet .*'edgeclip export PATH' with an OpenAI"):
        bundle_from_checkpoint(None)


def test_bad_bundle_name_and_old_opset_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"bundle name '\.\./up' is not usable as a directory name; use letters"):
        bundle_from_checkpoint(tmp_path / "x.pt", name="../up")
    with pytest.raises(InputError, match=r"opset 13 is too old: the dynamo exporter writes opset 18 or newer"):
        onnx_from_torch(None, "image", tmp_path / "x.onnx", opset=13)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"unknown tower 'audio'; the towers are: image, text"):
        export_module.tower_module(None, "audio")  # type: ignore[arg-type]


def test_default_out_is_export_name_under_the_current_dir(
    hf_model_dir, hf_bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _reuse_graphs(monkeypatch, hf_bundle[0])
    monkeypatch.chdir(tmp_path)
    report = bundle_from_checkpoint(hf_model_dir[0], name="mine")
    assert report.path == Path("export") / "mine" and Bundle.open(tmp_path / "export" / "mine").manifest.name == "mine"
    assert set(report.parity) == {"image/fp32", "text/fp32"}
    assert report.to_dict()["graphs"][1]["min_cosine"] == report.parity["text/fp32"]["min_cosine"]


def _pooling_graph(cast_to: int) -> onnx.ModelProto:
    """ids (B, L) int64 -> the argmax position, after a Cast to `cast_to`: how a pooling step looks in a graph."""
    h = onnx.helper
    nodes = [
        h.make_node("Cast", ["input_ids"], ["cast"], to=cast_to),
        h.make_node("ArgMax", ["cast"], ["pos"], name="pool", axis=-1, keepdims=0),
    ]
    graph = h.make_graph(
        nodes,
        "pooling",
        [h.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "length"])],
        [h.make_tensor_value_info("pos", onnx.TensorProto.INT64, ["batch"])],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)])


def test_float_argmax_is_found_and_an_integer_one_is_not() -> None:
    assert export_module.float_argmax_nodes(_pooling_graph(onnx.TensorProto.FLOAT)) == ["pool"]
    assert export_module.float_argmax_nodes(_pooling_graph(onnx.TensorProto.FLOAT16)) == ["pool"]
    assert export_module.float_argmax_nodes(_pooling_graph(onnx.TensorProto.INT32)) == []


@pytest.fixture
def tiny_clip() -> Any:
    from edgeclip.models.clip import CLIP
    from edgeclip.models.config import CLIPConfig, TextConfig, VisionConfig

    vision = VisionConfig(image_size=16, layers=1, width=16, patch_size=8, head_width=8)
    return CLIP(CLIPConfig(embed_dim=8, vision=vision, text=TextConfig(width=16, heads=2, layers=1))).eval()


@pytest.mark.parametrize(
    ("write", "message"),
    [
        ("float-argmax", r"the text graph pools with an argmax over floats \(nodes pool\): token ids above 2\*\*24"),
        ("invalid", r"the exported text graph fails the ONNX checker: "),
        ("raise", r"torch.onnx could not export the text tower \(RuntimeError: unsupported op\); check that the model"),
    ],
)
def test_exporter_failures_are_reported(
    write: str, message: str, tiny_clip: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_export(module: Any, args: Any, f: str, **kwargs: Any) -> None:
        if write == "raise":
            raise RuntimeError("unsupported op\nmore detail")
        model = _pooling_graph(onnx.TensorProto.FLOAT)
        if write == "invalid":
            model.graph.node[1].input[0] = "nowhere"  # an input nothing produces
        onnx.save(model, f)

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    with pytest.raises(EdgeClipError, match=message):
        onnx_from_torch(tiny_clip, "text", tmp_path / "text.onnx")


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_export(tmp_path: Path) -> None:
    from tests.reference import openai_clip

    torch.save(openai_clip().state_dict(), tmp_path / "small-vocab.pt")  # a vocabulary of 100 tokens
    # The tokenizer refuses a text spec that does not fit its vocabulary; export asks it before the slow work.
    with pytest.raises(CheckpointError, match=r"text spec does not fit the tokenizer vocabulary .* vocab_size 100"):
        bundle_from_checkpoint(tmp_path / "small-vocab.pt", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small-vocab.pt"]


def _fp16_initializers(path: Path) -> int:
    return sum(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(path)).graph.initializer)


def test_weights_published_in_fp16_are_stored_in_fp16_losslessly(
    openai_bundle: tuple[Path, Any], tmp_path: Path
) -> None:
    """OpenAI published its checkpoints in fp16: such weights are stored as fp16 + Cast, computing exactly as fp32."""
    fp32_bundle, model = openai_bundle
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    bundle = bundle_from_checkpoint(tmp_path / "half.pt", tmp_path / "bundle").path
    opened, fp32_opened = Bundle.open(bundle), Bundle.open(fp32_bundle)
    for tower in ("image", "text"):
        assert _fp16_initializers(fp32_bundle / f"{tower}.onnx") == 0  # fp32-trained weights stay as they are
        assert _fp16_initializers(bundle / f"{tower}.onnx") > 0
        size, fp32_size = opened.graph_bytes(opened.graph(tower)), fp32_opened.graph_bytes(fp32_opened.graph(tower))
        assert size < 0.7 * fp32_size
    # The same numbers as OpenAI's model holding those fp16 values in fp32.
    reference = model.__class__(**_openai_shape(model))
    reference.load_state_dict({k: v.float() for k, v in half.items()})
    pixels = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = _normalized(reference.eval().encode_image(torch.from_numpy(pixels)))
    _assert_close(_run(bundle, "image", pixels), want)


def _openai_shape(model: Any) -> dict[str, Any]:
    return {
        "embed_dim": EMBED, "image_resolution": SIZE, "vision_layers": 2, "vision_width": 64, "vision_patch_size": 8,
        "context_length": CONTEXT, "vocab_size": 49408, "transformer_width": 64, "transformer_heads": 1,
        "transformer_layers": 2,
    }  # fmt: skip


def test_exported_graphs_keep_their_weights_beside_them(hf_bundle: tuple[Path, dict]) -> None:
    """Each graph's weights lie in NAME.onnx.data (ONNX Runtime maps them: less memory at load), covered by its
    sha256 together with the graph file."""
    bundle = Bundle.open(hf_bundle[0])
    for tower in ("image", "text"):
        entry = bundle.graph(tower)
        assert entry.data == f"{tower}.onnx.data"
        graph, data = bundle.files(entry)
        proto = onnx.load(str(graph), load_external_data=False)
        outside = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert outside and all(e.value == data.name for t in outside for e in t.external_data if e.key == "location")
        assert sum(len(t.raw_data) for t in proto.graph.initializer) < 1024 * len(proto.graph.initializer)


def test_exported_graphs_hold_no_paths_of_the_exporting_machine(hf_bundle: tuple[Path, dict]) -> None:
    """torch.onnx writes each node's Python stack trace, with absolute file paths, into the node's metadata: they
    are dropped (a bundle is shipped to other machines), the module scopes that name where a node came from stay."""
    import sys

    import edgeclip

    here = [p.encode() for p in (sys.prefix, str(Path(edgeclip.__file__).parents[1]))]
    for graph in sorted(Path(hf_bundle[0]).glob("*.onnx")):
        data = graph.read_bytes()
        assert b"pkg.torch.onnx.stack_trace" not in data and not any(p in data for p in here), graph.name
        assert b"pkg.torch.onnx.name_scopes" in data, graph.name
