"""edgeclip triton: the model repository's configs parsed with Triton's own schema (tritonclient's
model_config_pb2), and the Python-backend tokenizer model run against edgeclip's tokenizer."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgeclip
from edgeclip.cli import main


def _model_config_pb2() -> types.ModuleType:
    # Loaded by file path: `import tritonclient.grpc` would import grpcio, which parsing a config does not need.
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed (the [triton] extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "models"
    result = CliRunner().invoke(main, ["triton", "--out", str(out), "--max-batch", "32"])
    assert result.exit_code == 0, result.stderr
    return out


def _parse(path: Path):  # type: ignore[no-untyped-def]
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return text_format.Parse(path.read_text(), pb2.ModelConfig()), pb2


def test_configs_parse_with_tritons_schema_and_match_the_bundle(repo: Path) -> None:
    model = edgeclip.load(precision="fp32")
    assert sorted(p.name for p in repo.iterdir()) == ["tiny_image", "tiny_text", "tiny_text_ensemble", "tiny_tokenizer"]
    image, pb2 = _parse(repo / "tiny_image" / "config.pbtxt")
    assert image.platform == "onnxruntime_onnx" and image.max_batch_size == 32
    assert image.input[0].name == "pixels" and list(image.input[0].dims) == [3, 64, 64]
    assert image.input[0].data_type == pb2.TYPE_FP32 and list(image.output[0].dims) == [128]
    assert list(image.dynamic_batching.preferred_batch_size) == [8, 32]
    assert (repo / "tiny_image" / "1" / "model.onnx").read_bytes() == (
        model.bundle.path / model.files["image"]
    ).read_bytes()
    text, _ = _parse(repo / "tiny_text" / "config.pbtxt")
    assert text.input[0].name == "input_ids" and text.input[0].data_type == pb2.TYPE_INT64
    assert list(text.input[0].dims) == [-1] and text.output[0].name == "text_embeds"
    tok, _ = _parse(repo / "tiny_tokenizer" / "config.pbtxt")
    assert tok.backend == "python" and tok.input[0].data_type == pb2.TYPE_STRING and list(tok.output[0].dims) == [32]
    ens, _ = _parse(repo / "tiny_text_ensemble" / "config.pbtxt")
    steps = ens.ensemble_scheduling.step
    assert ens.platform == "ensemble" and [s.model_name for s in steps] == ["tiny_tokenizer", "tiny_text"]
    assert steps[0].output_map["input_ids"] == steps[1].input_map["input_ids"]
    assert steps[1].output_map["text_embeds"] == ens.output[0].name == "text_embeds"
    assert ens.input[0].name == tok.input[0].name == "TEXT"


def test_tokenizer_model_code_with_a_fake_triton_python_backend_utils(repo: Path, monkeypatch) -> None:
    """The generated model.py run as Triton would run it, with only the `triton_python_backend_utils` module
    interface faked (Tensor, InferenceResponse, get_input_tensor_by_name): its ids equal edgeclip's tokenizer's."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self._array = name, array

        def as_numpy(self) -> np.ndarray:
            return self._array

    class InferenceResponse:
        def __init__(self, output_tensors: list[Tensor]) -> None:
            self.output_tensors = output_tensors

    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor = Tensor  # type: ignore[attr-defined]
    fake.InferenceResponse = InferenceResponse  # type: ignore[attr-defined]
    fake.get_input_tensor_by_name = lambda request, name: request[name]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    spec = importlib.util.spec_from_file_location("_tokenizer_model", repo / "tiny_tokenizer" / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    served = module.TritonPythonModel()
    served.initialize({"model_repository": str(repo / "tiny_tokenizer"), "model_version": "1"})
    texts = ["a red star", "Two SMALL blue circles &amp; a ring", "", "x " * 100, "ﬁne café 東京"]
    request = {"TEXT": Tensor("TEXT", np.array([[t.encode()] for t in texts], dtype=object))}
    (response,) = served.execute([request])
    ids = response.output_tensors[0].as_numpy()
    assert response.output_tensors[0].name == "input_ids" and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, edgeclip.load().tokenizer(texts))


def test_triton_refuses_a_non_empty_folder_and_a_missing_plan(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = CliRunner().invoke(main, ["triton", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "not empty" in result.stderr and (tmp_path / "mine.txt").read_text() == "keep"
    plan = CliRunner().invoke(main, ["triton", "--out", str(tmp_path / "r"), "--plan", "image=/no/such.plan"])
    assert plan.exit_code == 1 and "no such file" in plan.stderr and not (tmp_path / "r").exists()
    odd = CliRunner().invoke(main, ["triton", "--out", str(tmp_path / "r"), "--plan", "image"])
    assert odd.exit_code == 1 and "TOWER=FILE" in odd.stderr


def test_a_tensorrt_plan_replaces_the_towers_onnx_model(tmp_path: Path) -> None:
    plan = tmp_path / "image.plan"
    plan.write_bytes(b"plan bytes")  # the repository copies a plan as it is; only TensorRT can read it
    out = tmp_path / "repo"
    assert CliRunner().invoke(main, ["triton", "--out", str(out), "--plan", f"image={plan}"]).exit_code == 0
    config, _ = _parse(out / "tiny_image" / "config.pbtxt")
    assert (
        config.platform == "tensorrt_plan" and (out / "tiny_image" / "1" / "model.plan").read_bytes() == b"plan bytes"
    )
    assert not (out / "tiny_image" / "1" / "model.onnx").exists()
