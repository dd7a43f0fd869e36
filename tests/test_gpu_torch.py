"""Preprocessing on the model's device, and the torch-cuda backend.

The device preprocessor is checked on the CPU device here (PyTorch's antialiased bicubic is the same code on both)
against edgeclip's CPU path, which is itself checked against PIL in test_preprocess.py. The `gpu` tests run the
same checks, and the backend's parity, on a CUDA GPU (scripts/gpu_check.sh); they are deselected by default.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgeclip
from edgeclip.bundle import Bundle
from edgeclip.contract import ImageSpec
from edgeclip.errors import InputError
from edgeclip.preprocess import Preprocessor
from edgeclip.runtime import Model, builtin_bundle_path, runner_request
from edgeclip.runtime.backends import torch as torch_backend
from edgeclip.runtime.gpu_preprocess import DevicePreprocessor
from tests.images import make_photo

BUILTIN = builtin_bundle_path()
SPEC = ImageSpec(size=224)
EMBED_BAR = 0.999  # embeddings of device-preprocessed photos against CPU-preprocessed ones
# Of tests.images.PHOTO_SIZES: upscaled, at size on one side, odd offsets, landscape, portrait, HD, full HD, strip.
SIZES = ((7, 5), (150, 100), (225, 224), (320, 240), (480, 640), (1280, 720), (1920, 1080), (300, 2000))


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _model(device: str, **options: object) -> Model:
    """The built-in model on the torch backend, preprocessing on `device`."""
    bundle = Bundle.open(BUILTIN)
    opts = torch_backend.TorchOptions(device=device, preprocess_on_device=True, **options)  # type: ignore[arg-type]
    backend = "torch-cuda" if device == "cuda" else "torch"
    runners = {
        t: torch_backend.create(backend, runner_request(bundle, bundle.graph(t)), opts) for t in ("image", "text")
    }
    return Model(bundle, backend, runners, {"image": "fp32", "text": "fp32"})


def _check_resize(device: str) -> None:
    cpu, dev = Preprocessor(SPEC), DevicePreprocessor(SPEC, device)
    for width, height in SIZES:
        photo = make_photo(width, height)
        a, b = cpu.resized(photo).astype(int), dev.resized(photo).astype(int)
        diff = np.abs(a - b)
        # At most one 8-bit step, on a small share of the values (measured: <= 0.05%; 0 where no resize is done).
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005, ((width, height), diff.max(), (diff > 0).mean())
        want = cpu(photo)
        got = dev([photo]).cpu().numpy()
        assert got.shape == want.shape == (1, 3, 224, 224) and got.dtype == np.float32
        step = 1 / 255 / min(SPEC.std) + 1e-5
        assert np.abs(got - want).max() <= step


def test_device_resize_matches_the_cpu_path_on_photos() -> None:
    _check_resize("cpu")


def test_channel_orders_grey_alpha_and_pil_images() -> None:
    from PIL import Image

    dev, cpu = DevicePreprocessor(SPEC), Preprocessor(SPEC)
    rgb = make_photo(320, 240, seed=3)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    rgba = np.concatenate([rgb, np.full((240, 320, 1), 7, np.uint8)], axis=2)
    grey = np.ascontiguousarray(rgb[:, :, 1])
    want = dev([rgb]).numpy()
    np.testing.assert_array_equal(dev([bgr], "BGR").numpy(), want)
    np.testing.assert_array_equal(dev([rgba]).numpy(), want)
    np.testing.assert_array_equal(dev([Image.fromarray(rgb)]).numpy(), want)
    grey_out, grey_cpu = dev([grey]).numpy(), cpu(grey)
    assert np.abs(grey_out - grey_cpu).max() <= 1 / 255 / min(SPEC.std) + 1e-5
    # A batch of one size (a 4-D array) is uploaded and resized together, the rows in order.
    frames = np.stack([make_photo(640, 480, seed=s) for s in range(3)])
    batch = dev(frames).numpy()
    for i in range(3):
        np.testing.assert_allclose(batch[i], dev([frames[i]]).numpy()[0], atol=1e-6)
    with pytest.raises(InputError, match=r"color_order must be 'RGB' or 'BGR'"):
        dev([rgb], "RGBA")
    with pytest.raises(InputError, match=r"image 1 of the batch of 2: "):
        dev([rgb, b"not an image"])


def _check_embeddings(model: Model) -> None:
    photos = [make_photo(w, h, seed=i) for i, (w, h) in enumerate([(1920, 1080), (640, 480), (300, 2000), (64, 64)])]
    with edgeclip.load(backend="onnxruntime", precision="fp32") as ref:
        want = ref.encode_image(photos)
        want_bgr = ref.encode_image([np.ascontiguousarray(p[:, :, ::-1]) for p in photos], color_order="BGR")
    got = model.encode_image(photos)
    assert _cos(got, want).min() >= EMBED_BAR
    got_bgr = model.encode_image([np.ascontiguousarray(p[:, :, ::-1]) for p in photos], color_order="BGR")
    assert _cos(got_bgr, want_bgr).min() >= EMBED_BAR


def test_encode_image_preprocesses_on_the_device_and_matches_the_cpu_path(monkeypatch: pytest.MonkeyPatch) -> None:
    photos = [make_photo(1920, 1080, seed=9)]
    with edgeclip.load(backend="onnxruntime", precision="fp32") as ref:
        want = ref.encode_image(photos)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CPU preprocessor ran")

    with _model("cpu") as model:
        assert model.image_pipeline is not None
        with monkeypatch.context() as patch:  # a 1080p frame never goes through the CPU resize
            patch.setattr(Preprocessor, "__call__", refuse)
            got = model.encode_image(photos)
            files = model.encode_image_files([photos[0], b"broken"])
        assert _cos(got, want).min() >= EMBED_BAR
        assert files.rows == (0,) and files.failed[0][0] == 1
        np.testing.assert_allclose(files.vectors, got, atol=1e-6)
        _check_embeddings(model)


# ------------------------------------------------------------------------------------------- on a CUDA GPU

gpu = pytest.mark.gpu


@gpu
def test_gpu_device_resize_matches_the_cpu_path() -> None:
    _check_resize("cuda")


@gpu
def test_gpu_torch_cuda_matches_onnxruntime_cpu(tmp_path: Path) -> None:
    from tests.test_torch_backend import FP32_BAR, _feed, _ort

    bundle = Bundle.open(BUILTIN)
    for precision, bar in (("fp32", FP32_BAR), ("fp16", 0.999)):
        for tower in ("image", "text"):
            entry = bundle.graph(tower, precision, backend="torch-cuda")
            runner = torch_backend.create("torch-cuda", runner_request(bundle, entry))
            for batch in (1, 8, 64):
                feed = _feed(tower, batch, 64, 20, seed=batch)
                got = runner.infer({runner.inputs[0].name: feed})[runner.outputs[0].name]
                cos = _cos(got, _ort(bundle.file(entry), feed)).min()
                assert cos >= bar, (tower, precision, batch, cos)


@gpu
def test_gpu_load_torch_cuda_preprocesses_on_the_gpu() -> None:
    with edgeclip.load(backend="torch-cuda") as model:
        assert model.image_pipeline is not None and model.precisions == {"image": "fp16", "text": "fp16"}
    with edgeclip.load(backend="torch-cuda", precision="fp32") as model:
        _check_embeddings(model)


@gpu
@pytest.mark.parametrize("option", ["cuda_graphs", "compile"])
def test_gpu_cuda_graphs_and_compile_give_eager_results(option: str) -> None:
    from tests.test_torch_backend import _feed

    bundle = Bundle.open(BUILTIN)
    for tower in ("image", "text"):
        request = runner_request(bundle, bundle.graph(tower))
        eager = torch_backend.create("torch-cuda", request)
        fast = torch_backend.create("torch-cuda", request, torch_backend.TorchOptions(device="cuda", **{option: True}))
        for batch in (1, 8, 1):
            feed = {eager.inputs[0].name: _feed(tower, batch, 64, 20, seed=batch)}
            want = eager.infer(feed)[eager.outputs[0].name]
            for _ in range(3):  # the first call of a shape captures (or compiles), the next ones replay
                np.testing.assert_allclose(fast.infer(feed)[fast.outputs[0].name], want, atol=1e-5)


@gpu
def test_gpu_torch_cuda_is_probed_available() -> None:
    from edgeclip.runtime.backends import probe

    ok, why = probe("torch-cuda")
    assert ok and "CUDA" in why and torch.cuda.is_available()


def test_a_fixed_batch_graph_is_filled_up_on_the_device(tmp_path: Path) -> None:
    from tests.test_runtime import make_bundle, photos, pixels_of, reference_image

    bundle = Bundle.open(make_bundle(tmp_path / "fixed", batch=2))
    opts = torch_backend.TorchOptions(preprocess_on_device=True)
    runners = {
        t: torch_backend.create("torch", runner_request(bundle, bundle.graph(t)), opts) for t in ("image", "text")
    }
    images = photos(3)
    calls: list[int] = []
    forward = runners["image"].forward

    def counted(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        calls.append(len(tensors[0]))
        return forward(tensors)

    runners["image"].forward = counted  # type: ignore[method-assign]
    with Model(bundle, "torch", runners, {"image": "fp32", "text": "fp32"}) as model:
        got = model.encode_image(images)  # chunks of 2 and 1: the 1 is filled up to the graph's batch of 2
    assert calls == [2, 2]
    want = reference_image(pixels_of(images, bundle.manifest.contract.image))
    assert got.shape == want.shape and _cos(got, want).min() >= EMBED_BAR
