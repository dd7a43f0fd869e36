"""Zero-shot pieces that need no model: templates, labels, the label bank and its cache, scoring and ties."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest

from edgeclip import zeroshot
from edgeclip.contract import HeadSpec
from edgeclip.errors import InputError
from tests.reference import load_by_path


class FakeText:
    """A deterministic stand-in for Model.encode_text that counts the texts it embeds."""

    def __init__(self, dim: int = 8) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            rng = np.random.default_rng(zlib.crc32(text.encode()))
            v = rng.normal(size=self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, np.float32).reshape(len(texts), self.dim)


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "labels"


# ---------------------------------------------------------------- templates


def test_imagenet_templates_are_clips_80():
    reference = load_by_path("open_clip", "zero_shot_metadata.py").OPENAI_IMAGENET_TEMPLATES
    assert zeroshot.load_templates("imagenet") == tuple(t("{}") for t in reference)


def test_default_templates_and_set_names():
    assert set(zeroshot.template_sets()) >= {"default", "imagenet"}
    default = zeroshot.load_templates()
    assert default == zeroshot.load_templates("default")
    assert 1 < len(default) < 20 and all(t.count("{}") == 1 for t in default)


def test_templates_from_file_and_list(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {}.\na {} in the wild\n")
    assert zeroshot.load_templates(f) == ("a photo of a {}.", "a {} in the wild")
    assert zeroshot.load_templates(str(f)) == ("a photo of a {}.", "a {} in the wild")
    assert zeroshot.load_templates(["x {} y"]) == ("x {} y",)


def test_template_line_without_placeholder_is_named(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a photo of a {}.\na photo of a cat\n")
    with pytest.raises(InputError, match=r"line 2 of .*t\.txt \('a photo of a cat'\) has no \{\}"):
        zeroshot.load_templates(f)
    with pytest.raises(InputError, match=r"template 2 \('oops'\) has no \{\}"):
        zeroshot.load_templates(["{}", "oops"])


def test_bad_template_sources(tmp_path):
    with pytest.raises(InputError, match=r"templates 'nope': no such file, and not a shipped template set"):
        zeroshot.load_templates("nope")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="holds no templates"):
        zeroshot.load_templates(empty)
    with pytest.raises(InputError, match="template list is empty"):
        zeroshot.load_templates([])


# ---------------------------------------------------------------- labels


def test_labels_parsing(tmp_path):
    assert zeroshot.labels_from_text("cat, dog ,red car") == ("cat", "dog", "red car")
    f = tmp_path / "labels.txt"
    f.write_text("cat\ndog\n")
    assert zeroshot.labels_from_file(f) == ("cat", "dog")
    f.write_bytes("\ufeffcat\r\ndog\r\n".encode())  # a Windows editor's byte-order mark and line ends
    assert zeroshot.labels_from_file(f) == ("cat", "dog")
    f.write_bytes("\ufeffcat\ncat\n".encode())  # so a repeat behind the mark is still a repeat
    with pytest.raises(InputError, match="duplicated labels: 'cat'"):
        zeroshot.labels_from_file(f)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "the label list is empty"),
        (["cat", " ", "dog"], r"blank or non-text labels at positions 2 \(' '\) \(counting from 1\)"),
        (["cat", "dog", "cat", "dog", "emu"], "duplicated labels: 'cat', 'dog'; give each label once"),
        ("cat", "got the single string 'cat'"),
    ],
)
def test_bad_labels_are_named(labels, message):
    with pytest.raises(InputError, match=message):
        zeroshot.check_labels(labels)


def test_blank_lines_at_the_end_of_a_file_are_ignored(tmp_path):
    """An editor's extra newlines at the end are not blank items (blank lines inside still are: they would shift)."""
    labels, templates = tmp_path / "labels.txt", tmp_path / "t.txt"
    labels.write_text("cat\ndog\n\n  \n")
    templates.write_text("a photo of a {}.\n\n")
    assert zeroshot.labels_from_file(labels) == ("cat", "dog")
    assert zeroshot.load_templates(templates) == ("a photo of a {}.",)


def test_bad_label_files(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("cat\n\ndog\n")
    with pytest.raises(InputError, match=r"labels\.txt: line 2 is blank"):
        zeroshot.labels_from_file(f)
    f.write_text("cat\n\n \ndog\n")
    with pytest.raises(InputError, match=r"labels\.txt: lines 2, 3 are blank"):
        zeroshot.labels_from_file(f)
    with pytest.raises(InputError, match=r"labels file .*missing\.txt does not exist"):
        zeroshot.labels_from_file(tmp_path / "missing.txt")
    with pytest.raises(InputError, match=r"blank or non-text labels at positions 2"):
        zeroshot.labels_from_text("cat,,dog")


# ---------------------------------------------------------------- label bank


def test_ensemble_matches_open_clip():
    """Our template ensembling against open_clip's build_zero_shot_classifier, on the same text encoder."""
    import torch

    reference = load_by_path("open_clip", "zero_shot_classifier.py")
    encode = FakeText(dim=6)

    class Texts(list):  # what the reference's tokenizer returns must have .to(device); the texts pass through
        def to(self, device):
            return self

    class Model:
        def encode_text(self, texts, normalize=False):
            assert normalize
            return torch.from_numpy(encode(texts))

    labels, templates = ["cat", "dog", "emu"], ["a photo of a {}.", "a {} drawing", "{}!"]
    want = reference.build_zero_shot_classifier(Model(), Texts, labels, templates, num_classes_per_batch=2)
    got = zeroshot.build_label_bank(encode, labels, templates)
    assert got.dtype == np.float32 and got.shape == (3, 6)
    np.testing.assert_allclose(got, want.numpy().T, atol=1e-6)


def test_ensemble_by_hand():
    def encode(texts):  # two templates pointing along x and y: their mean lies on the diagonal
        return np.array([[1, 0], [0, 1]] * (len(texts) // 2), np.float32)

    bank = zeroshot.build_label_bank(encode, ["a"], ["{} one", "{} two"])
    np.testing.assert_allclose(bank, [[2**-0.5, 2**-0.5]], rtol=1e-6)


def test_bank_cache_second_run_embeds_nothing(cache_home):
    labels, templates = ("cat", "dog"), ("a photo of a {}.", "a {}")
    first = FakeText()
    bank = zeroshot.cached_label_bank(first, labels, templates, model_key="m", embed_dim=8)
    assert sum(len(c) for c in first.calls) == 4
    assert len(list(cache_home.glob("*.npy"))) == 1 and not list(cache_home.glob(".*"))  # no temp files left
    second = FakeText()
    again = zeroshot.cached_label_bank(second, labels, templates, model_key="m", embed_dim=8)
    assert second.calls == []
    np.testing.assert_array_equal(bank, again)
    # Another model, other labels or other templates: other entries.
    for key, labs, temps in (("m2", labels, templates), ("m", ("cat",), templates), ("m", labels, ("{}",))):
        zeroshot.cached_label_bank(second, labs, temps, model_key=key, embed_dim=8)
    assert len(second.calls) == 3 and len(list(cache_home.glob("*.npy"))) == 4


@pytest.mark.parametrize("damage", ["garbage", "text", "shape", "not-unit"])
def test_corrupt_cache_is_rebuilt_with_a_warning(cache_home, damage):
    labels, templates = ("cat", "dog"), ("{}",)
    bank = zeroshot.cached_label_bank(FakeText(), labels, templates, model_key="m", embed_dim=8)
    (path,) = cache_home.glob("*.npy")
    if damage == "garbage":
        path.write_bytes(b"\x93NUMPY not really")
    elif damage == "text":  # numpy's error would advise loading it "unsafely" (unpickling)
        path.write_bytes(b"garbage\n")
    elif damage == "shape":
        np.save(path, bank[:1])
    else:
        np.save(path, bank * 3)
    encode = FakeText()
    with pytest.warns(RuntimeWarning, match=r"label cache .* is unusable .*; rebuilding it") as caught:
        rebuilt = zeroshot.cached_label_bank(encode, labels, templates, model_key="m", embed_dim=8)
    assert "pickle" not in str(caught[0].message)
    assert len(encode.calls) == 1
    np.testing.assert_array_equal(rebuilt, bank)
    np.testing.assert_array_equal(np.load(path), bank)  # the file was repaired


def test_unwritable_cache_only_warns(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")  # fails for root too, unlike a chmod
    with pytest.warns(RuntimeWarning, match="cannot write label cache .*; going on without it"):
        bank = zeroshot.cached_label_bank(FakeText(), ["a"], ["{}"], model_key="m", embed_dim=8, directory=blocker)
    assert bank.shape == (1, 8)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECLIP_CACHE", str(tmp_path / "c"))
    assert zeroshot.cache_dir() == tmp_path / "c" / "labels"
    monkeypatch.delenv("EDGECLIP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert zeroshot.cache_dir() == tmp_path / "x" / "edgeclip" / "labels"


# ---------------------------------------------------------------- scoring


def test_softmax_scores_and_ties_by_hand():
    # cosines 0, 1, 1 at logit scale ln 2: exp gives 1, 2, 2, so the probabilities are 0.2, 0.4, 0.4.
    image = np.array([[1.0, 0.0]], np.float32)
    bank = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    probs = zeroshot.scores(image, bank, HeadSpec(embed_dim=2, logit_scale=float(np.log(2))))
    np.testing.assert_allclose(probs, [[0.2, 0.4, 0.4]], rtol=1e-6)
    (top,) = zeroshot.top_labels(probs, ["x", "y", "z"], top_k=2)
    assert top.labels == ("y", "z") and top.scores == pytest.approx((0.4, 0.4))
    (swapped,) = zeroshot.top_labels(probs[:, [0, 2, 1]], ["x", "z", "y"], top_k=3)
    assert swapped.labels == ("z", "y", "x")  # a tie goes to the label given first


def test_sigmoid_head_by_hand():
    head = HeadSpec(embed_dim=2, logit_scale=2.0, logit_bias=-2.0, activation="sigmoid")
    probs = zeroshot.scores(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]), head)
    np.testing.assert_allclose(probs, [[0.5, 1 / (1 + np.e**2)]], rtol=1e-12)


def test_top_k_bounds():
    probs = np.array([[0.1, 0.6, 0.3]])
    (all_three,) = zeroshot.top_labels(probs, ["a", "b", "c"], top_k=10)
    assert all_three.labels == ("b", "c", "a")
    for bad in (0, -1, True, 1.5):
        with pytest.raises(InputError, match=r"top_k \(--top-k\) must be a whole number >= 1, got"):
            zeroshot.top_labels(probs, ["a", "b", "c"], top_k=bad)


def test_softmax_does_not_overflow():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probs = zeroshot.scores(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [-1.0, 0.0]]), HeadSpec(logit_scale=1e4))
    assert np.isfinite(probs).all() and probs[0, 0] == pytest.approx(1.0)


def test_templates_given_a_directory_say_so(tmp_path):
    with pytest.raises(InputError, match="is a directory; give a file with one template per line"):
        zeroshot.load_templates(tmp_path)
