"""Image loading and preprocessing against the reference pipeline, written here with PIL calls.

The reference is what CLIP models were trained with: torchvision's Resize(size, BICUBIC) and CenterCrop(size) on a
PIL image opened with `.convert("RGB")` (PIL's `resize(..., BICUBIC)`, the crop offset rounded as torchvision does),
ToTensor and Normalize. The contract is a mean absolute difference under 0.01 per element after normalisation;
with the pinned Pillow edgeclip is exact up to rare single 8-bit steps, and the tests hold it to that.
"""

from __future__ import annotations

import io
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclip.contract import ImageSpec
from edgeclip.errors import ImageDecodeError, InputError
from edgeclip.images import load_image
from edgeclip.preprocess import Preprocessor, preprocess, source_box
from tests.images import PHOTO_SIZES, encode, make_photo
from tests.images import pil_reference as reference

SPEC = ImageSpec()
STEP = 1 / 255 / min(SPEC.std)  # one 8-bit step, after normalisation


@cache
def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    return make_photo(width, height, seed)


def assert_matches(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    diff = np.abs(out - ref)
    assert diff.mean() < 0.01, f"mean abs diff {diff.mean():.5f} (contract: < 0.01)"
    # Stricter than the contract: a half-pixel shift or a missing antialias stays under 0.01 on average.
    assert diff.max() <= 2.01 * STEP, f"max abs diff {diff.max():.4f} is more than two 8-bit steps"
    assert (diff > 0).mean() < 0.01, f"{(diff > 0).mean():.2%} of the values differ from the reference"


# ------------------------------------------------------------------------------------------------ the reference
@pytest.mark.parametrize(("width", "height"), PHOTO_SIZES)
def test_matches_reference_for_pil_rgb_and_bgr_inputs(width: int, height: int) -> None:
    rgb = photo(width, height)
    ref = reference(Image.fromarray(rgb))
    pre = Preprocessor()
    assert_matches(pre(Image.fromarray(rgb))[0], ref)
    assert_matches(pre(rgb)[0], ref)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert_matches(pre(bgr, color_order="BGR")[0], ref)


@pytest.mark.parametrize("size", [64, 336])
@pytest.mark.parametrize("resize", ["shortest", "squash"])
def test_matches_reference_for_other_sizes_and_the_squash_rule(size: int, resize: str) -> None:
    spec = ImageSpec(size=size, resize=resize)  # type: ignore[arg-type]
    pre = Preprocessor(spec)
    for width, height in [(7, 5), (227, 224), (640, 480), (480, 640), (1280, 720), (300, 2000)]:
        rgb = photo(width, height)
        assert_matches(pre(rgb)[0], reference(Image.fromarray(rgb), spec))


def test_squash_keeps_the_whole_image() -> None:
    spec = ImageSpec(resize="squash")
    assert source_box(640, 480, spec) == (0.0, 0.0, 640.0, 480.0)
    # Shortest side: a centred square of the short side (to a pixel: torchvision truncates the resized long side).
    assert source_box(640, 480, SPEC) == pytest.approx((80.0, 0.0, 560.0, 480.0), abs=1.0)
    left = photo(640, 480).copy()
    left[:, :60] = 255  # only the squash rule sees the left edge (the bicubic filter reaches 5 pixels past the box)
    assert np.array_equal(Preprocessor()(left), Preprocessor()(photo(640, 480)))
    assert not np.array_equal(Preprocessor(spec)(left), Preprocessor(spec)(photo(640, 480)))


def test_embeddings_match_the_pil_path_through_a_model() -> None:
    """Cosine of image embeddings, edgeclip's preprocessing vs the reference, through OpenAI's own CLIP code."""
    torch = pytest.importorskip("torch")
    from tests.reference import TINY_TEXT, one_thread, openai_model_module

    torch.manual_seed(0)
    model = openai_model_module().CLIP(32, 224, 2, 128, 32, **TINY_TEXT).eval()
    sizes = [(1920, 1080), (480, 640), (150, 100), (300, 2000)]
    rgbs = [photo(w, h, seed) for seed, (w, h) in enumerate(sizes)]
    ours = torch.from_numpy(Preprocessor()(rgbs))
    ref = torch.from_numpy(np.stack([reference(Image.fromarray(rgb)) for rgb in rgbs]))
    with one_thread(), torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(model.encode_image(ours), model.encode_image(ref))
    assert cos.min().item() >= 0.9995, cos


@pytest.mark.slow
def test_random_sizes_shapes_and_specs_on_noise() -> None:
    """Noise is the hardest case for rounding; tall images take PIL's vertical-first path."""
    rng = np.random.default_rng(123)
    for _ in range(150):
        width = int(rng.integers(2, 700))
        height = int(width * rng.uniform(2.0, 6.0)) if rng.random() < 0.3 else int(rng.integers(2, 700))
        resize = "squash" if rng.random() < 0.3 else "shortest"
        spec = ImageSpec(size=int(rng.choice([32, 64, 224, 288])), resize=resize)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        assert_matches(Preprocessor(spec)(pixels)[0], reference(Image.fromarray(pixels), spec))


# ----------------------------------------------------------------------------------------------- input kinds
@pytest.mark.parametrize(("fmt", "params"), [("JPEG", {"quality": 85}), ("PNG", {}), ("WEBP", {}), ("BMP", {}),
                                             ("TIFF", {}), ("GIF", {})])  # fmt: skip
def test_files_and_bytes(tmp_path: Path, fmt: str, params: dict) -> None:
    data = encode(photo(320, 240, 3), fmt, **params)
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    ref = reference(Image.open(path))
    out = Preprocessor()([str(path), path, data, bytearray(data)])
    for row in out:
        assert_matches(row, ref)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "PA", "CMYK", "YCbCr", "1", "I", "F", "HSV"])
def test_pil_modes_follow_convert_rgb(mode: str) -> None:
    image = Image.fromarray(photo(200, 150, 5)).convert("RGBA" if mode in ("LA", "PA") else "RGB")
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.zeros((150, 200), np.uint8)
        alpha[:, 100:] = 255
        image.putalpha(Image.fromarray(alpha))
    if mode == "PA":
        image = image.convert("P").convert("PA")
    image = image.convert(mode)
    assert_matches(Preprocessor()(image)[0], reference(image))


def test_alpha_is_dropped_not_composited() -> None:
    rgb = photo(200, 150, 6)
    rgba = np.dstack([rgb, np.zeros((150, 200), np.uint8)])  # fully transparent
    out = Preprocessor()([Image.fromarray(rgba, "RGBA"), rgba])
    assert_matches(out[0], reference(Image.fromarray(rgb)))
    assert_matches(out[1], reference(Image.fromarray(rgb)))
    white = Image.alpha_composite(Image.new("RGBA", (200, 150), "white"), Image.fromarray(rgba, "RGBA"))
    assert np.abs(out[0] - reference(white)).mean() > 0.1  # what transformers' processor would give


def test_exif_orientation_is_not_applied(tmp_path: Path) -> None:
    from PIL import ImageOps

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "sideways.jpg"
    Image.fromarray(photo(320, 240, 7)).save(path, "JPEG", exif=exif)
    out = Preprocessor()(path)[0]
    assert_matches(out, reference(Image.open(path)))
    assert np.abs(out - reference(ImageOps.exif_transpose(Image.open(path)))).mean() > 0.1


def test_numpy_arrays_of_every_layout() -> None:
    rgb = photo(320, 240, 8)
    ref = reference(Image.fromarray(rgb))
    pre = Preprocessor()
    grey = rgb[:, :, 1].copy()
    assert_matches(pre(grey)[0], reference(Image.fromarray(grey)))
    assert_matches(pre(grey[:, :, None])[0], reference(Image.fromarray(grey)))
    alpha = np.full((240, 320, 1), 7, np.uint8)
    assert_matches(pre(np.concatenate([rgb, alpha], axis=2))[0], ref)
    assert_matches(pre(np.concatenate([rgb[:, :, ::-1], alpha], axis=2), color_order="BGR")[0], ref)
    assert_matches(pre(np.asfortranarray(rgb))[0], ref)
    frame = photo(640, 480, 9)
    assert_matches(pre(frame[::2, ::2])[0], reference(Image.fromarray(np.ascontiguousarray(frame[::2, ::2]))))


def test_sixteen_bit_pixels_are_scaled_to_eight() -> None:
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, (120, 160, 3)).astype(np.uint16)
    eight = np.rint(deep / 257.0).astype(np.uint8)  # v * 255 / 65535, rounded
    pre = Preprocessor()
    assert_matches(pre(deep)[0], reference(Image.fromarray(eight)))
    assert_matches(pre(deep.astype(">u2"))[0], reference(Image.fromarray(eight)))
    grey = deep[:, :, 0]
    expected = reference(Image.fromarray(eight[:, :, 0]))
    assert_matches(pre(Image.fromarray(grey))[0], expected)  # PIL mode I;16
    png = encode(Image.fromarray(grey), "PNG")
    assert Image.open(io.BytesIO(png)).mode.startswith("I;16")
    assert_matches(pre(png)[0], expected)


def test_bgr_and_rgb() -> None:
    rgb = photo(640, 480, 10)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    pre = Preprocessor()
    assert np.array_equal(pre(bgr, color_order="BGR"), pre(rgb))
    swapped = pre(bgr)  # a BGR frame passed as RGB: red and blue planes trade places
    assert not np.allclose(swapped, pre(rgb), atol=0.1)
    assert np.array_equal(pre(rgb, color_order="BGR"), swapped)
    assert np.array_equal(load_image(bgr, color_order="BGR"), rgb)
    assert np.array_equal(pre(Image.fromarray(rgb), color_order="BGR"), pre(rgb))  # PIL knows its channel order


def test_mixed_batches_threads_and_four_d_arrays(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(encode(photo(150, 100, 11), "PNG"))
    images = [str(path), encode(photo(33, 20, 12), "JPEG"), Image.fromarray(photo(480, 640, 13)), photo(1280, 720)]
    out = preprocess(images)
    assert out.shape == (4, 3, 224, 224) and out.dtype == np.float32 and out.flags.c_contiguous
    for row, image in zip(out, images, strict=True):
        assert np.array_equal(row, preprocess(image)[0])
    assert np.array_equal(Preprocessor(threads=3)(images), out)
    frames = np.stack([photo(320, 240, s) for s in range(3)])  # (B, H, W, C)
    assert np.array_equal(Preprocessor()(frames), Preprocessor()(list(frames)))


def test_load_image_gives_hwc_uint8_rgb(tmp_path: Path) -> None:
    rgb = photo(150, 100, 14)
    path = tmp_path / "a.png"
    path.write_bytes(encode(rgb, "PNG"))
    for image in [path, str(path), encode(rgb, "PNG"), Image.fromarray(rgb), np.dstack([rgb, rgb[:, :, :1]])]:
        loaded = load_image(image)
        assert loaded.dtype == np.uint8 and loaded.shape == (100, 150, 3)
        assert np.array_equal(loaded, rgb) and loaded.flags.writeable
    assert load_image(rgb) is rgb  # already HWC uint8 RGB: no copy
    assert np.array_equal(load_image(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, axis=2))
    assert Preprocessor().resized(rgb).shape == (224, 224, 3)
    assert Preprocessor().resized(rgb[:, :, 0]).shape == (224, 224, 3)


# ---------------------------------------------------------------------------------------------------- errors
def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match=r"cannot read image '.*nope\.jpg': no such file \(working directory"):
        preprocess(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match=r"it is a directory, not an image file"):
        preprocess(tmp_path)
    with pytest.raises(ImageDecodeError, match=r"edgeclip does not download anything; fetch the file yourself"):
        load_image("https://example.com/cat.jpg")


def test_undecodable_files_name_the_file_and_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageDecodeError, match=r"cannot decode image '.*bad\.jpg': not an image format PIL can read "
                       r"\(starts with b'this is '\); pass a JPEG, PNG"):  # fmt: skip
        preprocess(bad)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(encode(photo(320, 240), "JPEG")[:2000])
    with pytest.raises(ImageDecodeError, match=r"cannot decode image '.*truncated\.jpg': .*truncated.* \(the file is "
                       r"corrupt or truncated; re-encode or re-download it\)"):  # fmt: skip
        preprocess(truncated)
    with pytest.raises(ImageDecodeError, match=r"cannot decode the PIL image opened from '.*truncated\.jpg': "):
        preprocess(Image.open(truncated))  # PIL opens lazily: the error comes at the first pixel read
    with pytest.raises(ImageDecodeError, match=r"cannot decode image <0 bytes>: it is empty \(0 bytes\)"):
        preprocess(b"")


def test_decompression_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageDecodeError, match=r"cannot decode image <\d+ bytes>: .*decompression bomb"):
        preprocess(encode(photo(150, 100), "PNG"))


@pytest.mark.parametrize(
    ("image", "found"),
    [
        (np.zeros((0, 5, 3), np.uint8), "5x0"),
        (np.zeros((1, 1, 3), np.uint8), "1x1"),
        (np.zeros((40, 1), np.uint8), "1x40"),
        (Image.new("RGB", (1, 1)), "1x1"),
        (encode(Image.new("RGB", (1, 7)), "PNG"), "1x7"),
    ],
)
def test_too_small_images_say_the_minimum(image: object, found: str) -> None:
    with pytest.raises(InputError, match=rf"is {found} pixels; edgeclip needs at least 2x2"):
        preprocess(image)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), r"dtype float32; edgeclip takes uint8 \(0-255\) or uint16 \(0-65535\) "
         r"pixels\. If the values are in \[0, 1\], pass \(array \* 255\)\.round\(\)\.astype\(np\.uint8\)"),
        (np.zeros((8, 8, 3), np.int64), r"dtype int64; edgeclip takes uint8"),
        (np.zeros((8, 8, 3), bool), r"dtype bool; edgeclip takes uint8"),
        (np.zeros((3, 8, 8), np.uint8), r"shape \(3, 8, 8\); expected HxW \(grey\), HxWx3 \(colour\) or HxWx4 "
         r"\(colour and alpha\)\. It looks channels-first \(CxHxW\): pass array\.transpose\(1, 2, 0\)"),
        (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\); expected HxW"),
        (np.zeros(8, np.uint8), r"shape \(8,\); expected HxW"),
    ],
)  # fmt: skip
def test_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=r"image array has " + message):
        preprocess(array)


def test_bad_batches_types_and_options() -> None:
    with pytest.raises(InputError, match=r"the batch of images is empty: pass at least one image"):
        preprocess([])
    with pytest.raises(InputError, match=r"the batch of images is empty"):
        preprocess(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=r"image 1 of the batch of 3: image array has dtype float64"):
        preprocess([photo(33, 20), np.zeros((8, 8, 3)), photo(33, 20)])
    with pytest.raises(ImageDecodeError, match=r"image 0 of the batch of 2: cannot decode image <3 bytes>"):
        Preprocessor(threads=2)([b"abc", photo(33, 20)])
    with pytest.raises(InputError, match=r"unsupported image type int: pass a file path, encoded bytes, a PIL image"):
        preprocess(42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"unsupported image type dict"):
        preprocess([{}])  # type: ignore[list-item]
    with pytest.raises(InputError, match=r"A 4-D array is a batch: pass it to Preprocessor"):
        load_image(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match=r"color_order must be 'RGB' or 'BGR', got 'rgb': use 'BGR' for frames"):
        preprocess(photo(33, 20), color_order="rgb")
    with pytest.raises(InputError, match=r"color_order must be 'RGB' or 'BGR', got 'BRG'"):
        load_image(photo(33, 20), color_order="BRG")
    with pytest.raises(InputError, match=r"threads must be an int of at least 1, got 0"):
        Preprocessor(threads=0)


def test_unsupported_spec() -> None:
    spec = ImageSpec(size=0, resize="letterbox", mean=(0.5, 0.5))  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"unsupported ImageSpec: size must be a positive int, got 0; resize must be "
                       r"'shortest' or 'squash', got 'letterbox'; mean and std must hold 3 numbers each"):  # fmt: skip
        Preprocessor(spec)


# ------------------------------------------------------------------------------------------------ fast mode
FAST = Preprocessor(mode="fast")
LARGE = ((1920, 1080), (1080, 1920), (4000, 3000), (300, 2000))


@pytest.mark.parametrize(("width", "height"), LARGE)
@pytest.mark.parametrize("source", ["jpeg", "array", "png"])
def test_fast_mode_stays_within_the_contract_on_large_images(width: int, height: int, source: str) -> None:
    """Close to the reference (the contract's mean difference), not equal: a few 8-bit steps at edges."""
    rgb = photo(width, height)
    item: object = rgb if source == "array" else encode(rgb, "JPEG" if source == "jpeg" else "PNG")
    decoded = rgb if source != "jpeg" else np.asarray(Image.open(io.BytesIO(item)).convert("RGB"))  # type: ignore[arg-type]
    ref = reference(Image.fromarray(decoded))[None]
    diff = np.abs(FAST(item) - ref)  # type: ignore[arg-type]
    assert diff.mean() < 0.5 * 0.01, f"mean abs diff {diff.mean():.5f}"  # measured at most 0.006 on these
    assert diff.max() < 16 * STEP


@pytest.mark.parametrize(("width", "height"), [(640, 480), (1280, 720), (500, 449), (224, 224)])
def test_fast_mode_is_exact_where_there_is_nothing_to_reduce(width: int, height: int) -> None:
    # Below FAST_REDUCING_GAP times the model's size on the short side, fast is the exact path, file or frame.
    rgb = photo(width, height)
    for item in (rgb, encode(rgb)):
        np.testing.assert_array_equal(FAST(item), Preprocessor()(item))


def test_fast_mode_takes_every_array_layout() -> None:
    rgb = photo(1921, 1081)  # odd sides: the halving drops a last row and column
    want = FAST(rgb)
    np.testing.assert_array_equal(FAST(np.ascontiguousarray(rgb[:, :, ::-1]), color_order="BGR"), want)
    rgba = np.concatenate([rgb, np.zeros_like(rgb[:, :, :1])], axis=2)
    np.testing.assert_array_equal(FAST(rgba), want)  # alpha ignored, as in exact mode
    grey = rgb[:, :, 1]
    np.testing.assert_array_equal(FAST(grey[:, :, None]), FAST(np.repeat(grey[:, :, None], 3, axis=2)))
    np.testing.assert_array_equal(FAST(grey), FAST(grey[:, :, None]))


def test_fast_mode_decodes_large_jpegs_at_reduced_scale() -> None:
    data = encode(photo(4000, 3000))
    pixels = FAST.decode(data)
    assert pixels.full_size == (4000, 3000) and pixels.size == (1000, 750)  # libjpeg's 1/4: 750 >= 2 x 224
    assert Preprocessor().decode(data).size == (4000, 3000) and Preprocessor().decode(data).full_size is None
    assert FAST.decode(encode(photo(4000, 3000), "PNG")).full_size is None  # only JPEG scales while decoding
    # What decode gave goes through unchanged: the same pixels as decoding inside the call.
    np.testing.assert_array_equal(FAST([pixels]), FAST(data))


def test_fast_mode_keeps_embeddings_through_a_model() -> None:
    torch = pytest.importorskip("torch")
    from tests.reference import TINY_TEXT, one_thread, openai_model_module

    torch.manual_seed(0)
    model = openai_model_module().CLIP(32, 224, 2, 128, 32, **TINY_TEXT).eval()
    jpegs = [encode(photo(w, h, seed)) for seed, (w, h) in enumerate(LARGE)]
    with one_thread(), torch.no_grad():
        fast, exact = (model.encode_image(torch.from_numpy(p(jpegs))) for p in (FAST, Preprocessor()))
        cos = torch.nn.functional.cosine_similarity(fast, exact)
    assert cos.min().item() >= 0.999, cos


def test_fast_mode_keeps_the_built_in_models_answers_on_camera_frames() -> None:
    """Zero-shot on the out-of-distribution renderings, each scaled up to a 1080p JPEG as a camera would give it."""
    import edgeclip
    from edgeclip.world.ood import ood_labels, ood_set

    jpegs = []
    for item in ood_set(128):
        h, w = item.image.shape[:2]
        jpegs.append(encode(Image.fromarray(item.image).resize((w * 1080 // h, 1080), Image.Resampling.BICUBIC)))
    labels = list(ood_labels())
    embeds, answers = {}, {}
    for mode in ("exact", "fast"):
        with edgeclip.load(preprocess=mode) as model:
            embeds[mode] = model.encode_image(jpegs)
            answers[mode] = [c.labels[0] for c in model.classify_embeddings(embeds[mode], labels, top_k=1)]
    assert (embeds["fast"] * embeds["exact"]).sum(axis=1).min() > 0.999  # measured: 0.9997
    agree = np.mean([a == b for a, b in zip(answers["fast"], answers["exact"], strict=True)])
    assert agree >= 0.98, f"top-1 agreement {agree:.1%}"


def test_bad_mode() -> None:
    with pytest.raises(InputError, match=r"preprocessing mode must be 'exact' or 'fast', got 'quick'"):
        Preprocessor(mode="quick")


def test_a_very_large_image_is_named_in_the_warning_and_the_error(tmp_path, monkeypatch):
    """PIL's decompression-bomb warning and error do not say which file; ours do, and the error says what to do."""
    path = tmp_path / "big.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: over the warning limit, under the error's
    with pytest.warns(RuntimeWarning) as caught:
        assert load_image(str(path)).shape == (20, 20, 3)
    assert any("big.png" in str(w.message) and "is 20x20 pixels" in str(w.message) for w in caught)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over twice the limit: PIL refuses it
    with pytest.raises(ImageDecodeError, match=r"big.png.*decompression bombs; downscale the image"):
        load_image(str(path))
