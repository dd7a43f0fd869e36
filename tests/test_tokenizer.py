"""The CLIP tokenizer against the references nobody here wrote: open_clip's `tokenize()` and OpenAI's
`simple_tokenizer.py`, loaded by file path, on hard strings that the test generates."""

from __future__ import annotations

import gzip
import json
import random
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from edgeclip.contract import TextSpec
from edgeclip.errors import CheckpointError, InputError
from edgeclip.tokenizer import DEFAULT_MERGES, EOT_TOKEN, SOT_TOKEN, Tokenizer, tokenize
from tests.reference import load_by_path

CONTEXT_LENGTHS = (77, 16, 5, 2)


@cache
def open_clip_module() -> ModuleType:
    return load_by_path("open_clip", "tokenizer.py")


@cache
def openai_tokenizer() -> Any:
    return load_by_path("clip", "simple_tokenizer.py").SimpleTokenizer()


def open_clip_tokenize(texts: list[str], context_length: int) -> np.ndarray:
    return open_clip_module().tokenize(texts, context_length=context_length).numpy()


def padding(ids: np.ndarray) -> np.ndarray:
    """Where the reference's rows are padding: after their (first) end token. Id 0 is also a real token ('!')."""
    eot = np.argmax(ids == openai_tokenizer().encoder[EOT_TOKEN], axis=1)
    return np.arange(ids.shape[1]) > eot[:, None]


# Fragments that stress one rule of the reference each; the generator below glues them together.
HARD = [
    "",
    " ",
    "   \t\n  \r\n ",
    "a photo of a cat.",
    "A Photo Of A CAT!!!",
    "it's the dog's toy, isn't it? we're here, you've seen, I'm sure, she'll go, he'd know",
    "IT'S WE'RE YOU'VE I'M SHE'LL HE'D 'S 'T 'RE 'VE 'M 'LL 'D",
    "'s't're've'm'll'd''s",
    "it’s ‘quoted’ “double” „low“ ‹angle› «guillemets»",
    "café naïve résumé Ångström crème brûlée jalapeño",
    "e\u0301 a\u0308 n\u0303 combining marks versus é ä ñ",
    "日本語のテキスト 中文文本 한국어 텍스트",
    "emoji 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪🇯🇵 ❤️",
    "&amp; &lt;b&gt; &#39;quoted&#39; &quot;x&quot; &nbsp;space &copy; &eacute;",
    "double &amp;amp; &amp;lt;tag&amp;gt; triple &amp;amp;amp; &#38;#39;",
    "<b>bold</b> &amp; html with angle brackets &lt;",
    "ﬁsh ﬂower ﬀ ﬃ ﬄ ﬅ ﬆ ligatures",
    "numbers 1234567890 3.14159 1,000,000 ١٢٣ ²³ ½ Ⅻ ⅻ",
    "mixedCASE camelCase snake_case kebab-case UPPER lower",
    "<|startoftext|> <|endoftext|>",
    "x<|endoftext|>y !<|endoftext|> <|endoftext|>! <|ENDOFTEXT|> <|ſtartoftext|>",
    "<start_of_text> <end_of_text> <|startoftext <|endoftext| |endoftext|>",
    "İstanbul İ ı I i DİYARBAKIR",
    "Straße STRASSE ß ẞ",
    "ſ 'ſ ſtart Kelvin K 212 Ω Å",
    "control \x00\x01\x07\x08\x0b\x0c\x0e\x1b[31mred\x1b[0m\x1c\x1d\x1e\x1f\x7f end",
    "c1 \x80\x85\x91\x92\x93\x94\x9f end",
    "zero\u200bwidth\u200cjoiner\u200dnbsp\u00a0ideo\u3000thin\u2009line\u2028para\u2029",
    "soft\u00adhyphen bom\ufeff rtl\u202eltr\u202d",
    "mojibake: cafÃ© donâ€™t Ã©tÃ©",
    "Ελληνικά ΣΊΣΥΦΟΣ σοφός ᾳ α\u0345 ypogegrammeni",
    "Кириллица ПРИВЕТ мир",
    "עברית العربية हिन्दी ภาษาไทย",
    "tab\tseparated\tvalues\nnew\nlines",
    "fullwidth ＡＢＣ１２３ halfwidth ｶﾀｶﾅ",
    "math 𝐀𝐁𝐂 𝔸𝔹 ∑∫√∞ ≠ ≤ ≥",
    "punctuation !!! ??? ... --- ___ *** ### $$$ %%% @@@ ^^^ ~~~ ``` ||| \\\\ //",
    "a.b,c;d:e!f?g(h)i[j]k{l}m<n>o",
    "new unicode ՘ ֋ ࢏ 𐥀𐥁 𑷠𑷡",
    "sup^er sub_script x² H₂O",
]

# Pieces for the random texts: words, characters and separators from the categories above.
WORDS = [
    "photo", "cat", "dog", "a", "the", "of", "goldfish", "tench", "aircraft", "carrier", "ATM", "café", "naïve",
    "Straße", "İ", "ſ", "K", "ﬁ", "ﬂ", "日本", "中文", "한국", "😀", "👍🏽", "👨‍👩‍👧", "🇫🇷",
    "&amp;", "&lt;", "&#39;", "&amp;amp;", "&quot;", "'s", "'t", "'re", "'S", "'LL", "’s", "“", "”",
    "123", "4.5", "½", "Ⅳ", "<b>", "</b>", "\x00", "\x1b", "\x7f", "\x85", "\u200b", "\u00ad", "\ufeff",
    "Ω", "σ", "ς", "Σ", "α\u0345", "e\u0301", "Ă", "ǅ", "ǈ", "ﬀ", "ﬆ", "𝐀", "ｶ", "Ａ",
    "mixedCase", "UPPER", "--", "...", "!?", "😀😀😀", "cafÃ©", "â€™",
]  # fmt: skip
SPECIAL = ["<|endoftext|>", "<|startoftext|>", "<|ENDOFTEXT|>", "<|ſtartoftext|>", "<end_of_text>", "!<|endoftext|>"]
SEPARATORS = [" ", "", "  ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "-", "_", ", ", ". ", "'", "\x0b", "\x1c"]


def hard_strings() -> list[str]:
    """At least 1,000 hard texts, the same on every run: the fragments, random mixtures of them, random code points,
    random printable ASCII (the fast path that skips ftfy), and texts far longer than any context."""
    rng = random.Random(20240229)
    texts = list(HARD)
    for _ in range(550):
        pieces = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        texts.append("".join(p + rng.choice(SEPARATORS) for p in pieces))
    for _ in range(150):
        blocks = [(0x20, 0x7F), (0x80, 0x2FF), (0x300, 0x36F), (0x370, 0x52F), (0x2000, 0x206F), (0x3000, 0x30FF),
                  (0x4E00, 0x4E80), (0xFB00, 0xFB4F), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF), (0x0, 0x1F)]  # fmt: skip
        texts.append("".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(rng.randint(1, 30))))
    printable = [chr(c) for c in range(0x20, 0x7F)]
    for _ in range(250):
        texts.append("".join(rng.choice(printable) for _ in range(rng.randint(0, 60))))
    for _ in range(60):
        pieces = [rng.choice(WORDS + SPECIAL) for _ in range(rng.randint(0, 8))]
        pieces.insert(rng.randint(0, len(pieces)), rng.choice(SPECIAL))
        texts.append("".join(p + rng.choice(SEPARATORS) for p in pieces))
    plain = [t for t in HARD if not contains_special(t)]
    for n in range(40):
        texts.append(" ".join(rng.choice(plain + WORDS) for _ in range(20 + n)))
    return texts


def contains_special(text: str) -> bool:
    """Whether the two references' regexes (which ignore case, so '<|ſtartoftext|>' counts) may split differently."""
    import regex

    return regex.search(r"<\|startoftext\|>|<\|endoftext\|>|<start_of_text>|<end_of_text>", text, regex.I) is not None


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return hard_strings()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def test_encode_matches_openai_reference(texts: list[str], tok: Tokenizer) -> None:
    assert len(texts) >= 1000
    ref = openai_tokenizer()
    mismatches = [t for t in texts if tok.encode(t) != ref.encode(t)]
    assert mismatches == []


@pytest.mark.parametrize("context_length", CONTEXT_LENGTHS[:3])
def test_arrays_match_open_clip_tokenize(texts: list[str], tok: Tokenizer, context_length: int) -> None:
    # Where a text holds a special token string, the references disagree (OpenAI: <|endoftext|>, open_clip:
    # <end_of_text>); edgeclip follows OpenAI's, checked above. Everything else must equal open_clip's arrays.
    common = [t for t in texts if not contains_special(t)]
    assert len(common) >= 1000
    ours = tok(common, context_length)
    assert ours.dtype == np.int64 and ours.shape == (len(common), context_length)
    np.testing.assert_array_equal(ours, open_clip_tokenize(common, context_length))
    np.testing.assert_array_equal(tokenize(common, context_length), ours)


def test_special_token_strings_follow_openai_with_open_clip_framing(texts: list[str], tok: Tokenizer) -> None:
    special = [t for t in texts if contains_special(t)]
    assert len(special) >= 20
    ref = openai_tokenizer()
    eot = ref.encoder[EOT_TOKEN]
    for text in special:
        ids = [ref.encoder[SOT_TOKEN], *ref.encode(text), eot]
        for length in CONTEXT_LENGTHS:
            expected = np.zeros(length, np.int64)  # open_clip's framing: cut, eot last, zero padding
            cut = ids[:length]
            cut[-1] = eot
            expected[: len(cut)] = cut
            np.testing.assert_array_equal(tok(text, length)[0], expected)
    # The written special tokens do become the special ids where the reference's regex splits them out.
    assert tok.encode("a <|endoftext|> b") == ref.encode("a <|endoftext|> b")
    assert ref.encoder[EOT_TOKEN] in tok.encode("a <|endoftext|> b")


def test_empty_and_whitespace_texts_are_start_and_end(tok: Tokenizer) -> None:
    out = tok(["", " ", "\t\n  \u3000"], 6)
    np.testing.assert_array_equal(out, open_clip_tokenize(["", " ", "\t\n  \u3000"], 6))
    assert out[:, :2].tolist() == [[tok.spec.sot_id, tok.spec.eot_id]] * 3


def test_single_string_is_a_batch_of_one_and_default_context(tok: Tokenizer) -> None:
    out = tok("a photo of a cat")
    assert out.shape == (1, 77)
    np.testing.assert_array_equal(out, open_clip_tokenize(["a photo of a cat"], 77))


def test_spec_lower_case_false_matches_open_clip_whitespace_clean(texts: list[str]) -> None:
    # open_clip's clean="whitespace" is the reference cleaning without lower-casing; the regex still ignores case.
    ref = open_clip_module().SimpleTokenizer(clean="whitespace")
    ours = Tokenizer(TextSpec(lower_case=False))
    common = [t for t in texts if not contains_special(t)][::3]
    np.testing.assert_array_equal(ours(common, 16), ref(common, 16).numpy())


def test_spec_pad_id_and_context_length_are_honoured() -> None:
    ours = Tokenizer(TextSpec(context_length=9, pad_id=7))
    out = ours(["a cat", "a photo of a cat on a mat in the sun"])
    ref = open_clip_tokenize(["a cat", "a photo of a cat on a mat in the sun"], 9)
    assert out.shape == (2, 9)
    np.testing.assert_array_equal(np.where(padding(ref), 7, ref), out)


def write_hf_files(folder: Path, permutation: dict[int, int] | None = None) -> dict[str, int]:
    """vocab.json + merges.txt as Hugging Face stores them, derived from the reference's own vocabulary."""
    ref = openai_tokenizer()
    vocab = {t: (permutation or {}).get(i, i) for t, i in ref.encoder.items()}
    ranked = sorted(ref.bpe_ranks, key=ref.bpe_ranks.__getitem__)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranked), encoding="utf-8")
    return vocab


def test_hf_directory_gives_the_reference_ids(tmp_path: Path, texts: list[str]) -> None:
    write_hf_files(tmp_path)
    hf = Tokenizer.from_pretrained_dir(tmp_path, TextSpec())
    common = [t for t in texts if not contains_special(t)]
    np.testing.assert_array_equal(hf(common, 77), open_clip_tokenize(common, 77))
    assert hf.files == (tmp_path / "vocab.json", tmp_path / "merges.txt")


def test_hf_directory_ids_and_special_ids_come_from_its_vocabulary(tmp_path: Path, texts: list[str]) -> None:
    # A vocabulary whose ids are shuffled: every id, the special ones included, must come from vocab.json.
    rng = random.Random(1)
    order = list(range(49408))
    rng.shuffle(order)
    permutation = dict(enumerate(order))
    vocab = write_hf_files(tmp_path, permutation)
    hf = Tokenizer.from_pretrained_dir(tmp_path)
    assert (hf.spec.sot_id, hf.spec.eot_id) == (vocab[SOT_TOKEN], vocab[EOT_TOKEN])
    sample = [t for t in texts if not contains_special(t)][::4]
    ref = open_clip_tokenize(sample, 16)
    mapped = np.vectorize(permutation.__getitem__)(ref)
    expected = np.where(padding(ref), 0, mapped)  # padding stays 0: it is not a token of the vocabulary
    np.testing.assert_array_equal(hf(sample, 16), expected)


def test_tokenizer_json_directory(tmp_path: Path, texts: list[str]) -> None:
    # transformers 5 saves tokenizer.json only; written here by the tokenizers library's own serializer.
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models

    ref = openai_tokenizer()
    ranked = sorted(ref.bpe_ranks, key=ref.bpe_ranks.__getitem__)
    RustTokenizer(models.BPE(ref.encoder, ranked, end_of_word_suffix="</w>")).save(str(tmp_path / "tokenizer.json"))
    hf = Tokenizer.from_pretrained_dir(tmp_path, TextSpec())
    sample = [t for t in texts if not contains_special(t)][::5]
    np.testing.assert_array_equal(hf(sample, 77), open_clip_tokenize(sample, 77))


def test_directory_without_tokenizer_files_uses_the_shipped_bpe(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    np.testing.assert_array_equal(
        Tokenizer.from_pretrained_dir(tmp_path)("a photo of a cat"), open_clip_tokenize(["a photo of a cat"], 77)
    )


def test_save_round_trips(tmp_path: Path, tok: Tokenizer, texts: list[str]) -> None:
    vocab_file, merges_file = tok.save(tmp_path)
    again = Tokenizer(vocab_file=vocab_file, merges_file=merges_file)
    np.testing.assert_array_equal(again(texts[::7], 16), tok(texts[::7], 16))


def test_merges_file_alone_in_the_reference_layout() -> None:
    # Plain text and gzip read alike; the reference's own file gives the reference ids.
    ours = Tokenizer(merges_file=DEFAULT_MERGES)
    assert ours.encode("a photo of a cat") == openai_tokenizer().encode("a photo of a cat")
    assert ours.vocab_size == len(openai_tokenizer().encoder)


def test_regex_matches_the_reference_on_sampled_code_points() -> None:
    """The regex spelled out for `tokenizers` splits each code point as the reference's regex does, in every context
    (a letter run, a punctuation run, digits, alone, after an apostrophe); the full sweep is the slow test below."""
    points = [*range(0, 0x110000, 211), 0x345, 0x17F, 0x212A, 0x130, 0x131, 0xDF, 0x3C2]
    points += [cp for a, b in _new_ranges() for cp in (a, b)]
    assert split_mismatches(points) == []


@pytest.mark.slow
def test_regex_matches_the_reference_on_every_code_point() -> None:
    assert split_mismatches(range(0x110000)) == []


def _new_ranges() -> list[tuple[int, int]]:
    from edgeclip.tokenizer import _NEW_LETTERS, _NEW_NUMBERS

    return [*_NEW_LETTERS, *_NEW_NUMBERS]


def split_mismatches(points: Any) -> list[str]:
    import regex
    from tokenizers import Regex, pre_tokenizers

    from edgeclip.tokenizer import _split_pattern

    reference = openai_tokenizer().pat
    assert reference.flags & regex.IGNORECASE
    ours = pre_tokenizers.Split(Regex(_split_pattern()), behavior="removed", invert=True)
    bad = []
    for cp in points:
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        text = f"x{c}x!{c}!1{c}1 {c} '{c} {c}{c}"
        if [p for p, _ in ours.pre_tokenize_str(text)] != regex.findall(reference, text):
            bad.append(hex(cp))
    return bad


# Bad input: each error says what was wrong, what was found and what to do.


@pytest.mark.parametrize(("bad", "kind"), [(None, "NoneType"), (3, "int"), (b"a cat", "bytes")])
def test_non_string_text_names_index_and_type(tok: Tokenizer, bad: object, kind: str) -> None:
    with pytest.raises(InputError, match=rf"texts\[1\] is {kind} .*not str"):
        tok(["a cat", bad])  # type: ignore[list-item]


def test_bytes_batch_is_refused_with_a_hint(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match=r"texts is bytes, not str: decode it first"):
        tok(b"a cat")  # type: ignore[arg-type]


def test_non_sequence_is_refused(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match=r"texts is NoneType; pass a str or a sequence of str"):
        tok(None)  # type: ignore[arg-type]


def test_empty_batch_is_refused(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match=r"texts is an empty sequence; pass at least one str"):
        tok([])


@pytest.mark.parametrize("length", [1, 0, -5, True, 7.0])
def test_bad_context_length_is_refused(tok: Tokenizer, length: Any) -> None:
    with pytest.raises(InputError, match=r"context_length is .*; it must be an int >= 2"):
        tok("a cat", length)


def test_bad_spec_context_length_is_refused() -> None:
    with pytest.raises(InputError, match=r"the text spec's context_length is 1; it must be an int >= 2"):
        Tokenizer(TextSpec(context_length=1))


def test_encode_refuses_non_string(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match=r"encode\(\) takes one str, got int"):
        tok.encode(5)  # type: ignore[arg-type]


def test_spec_that_does_not_fit_the_vocabulary_is_refused() -> None:
    with pytest.raises(CheckpointError, match=r"does not fit the tokenizer vocabulary .*eot_id 49 \(the vocabulary's"):
        Tokenizer(TextSpec(eot_id=49, vocab_size=50))
    with pytest.raises(CheckpointError, match=r"vocab_size 50 \(the vocabulary has ids up to 49407\)"):
        Tokenizer(TextSpec(vocab_size=50))


def test_half_a_tokenizer_directory_is_refused(tmp_path: Path) -> None:
    write_hf_files(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(CheckpointError, match=r"holds vocab.json but not merges.txt; a BPE tokenizer needs both"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is not a directory; pass the Hugging Face model directory"):
        Tokenizer.from_pretrained_dir(tmp_path / "nope")


def test_short_or_broken_merges_files_are_refused(tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\na b\n")
    with pytest.raises(CheckpointError, match=r"holds 1 merges; a CLIP BPE file holds at least 48894"):
        Tokenizer(merges_file=short)
    broken = tmp_path / "broken.txt"  # plain text is read like the gzip file
    lines = gzip.decompress(DEFAULT_MERGES.read_bytes()).decode().split("\n")
    lines[5] = "abc"
    broken.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"merge 5 of .* is 'abc', not two tokens"):
        Tokenizer(merges_file=broken)
    with pytest.raises(CheckpointError, match=r"cannot be read: .*; pass an existing file"):
        Tokenizer(merges_file=tmp_path / "absent.txt")


def test_vocabulary_missing_tokens_is_refused(tmp_path: Path) -> None:
    vocab = write_hf_files(tmp_path)
    del vocab["a</w>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match=r"lacks \d+ tokens that a byte-level CLIP BPE needs"):
        Tokenizer.from_pretrained_dir(tmp_path)
    (tmp_path / "vocab.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match=r"is not valid JSON"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_vocabulary_without_special_tokens_is_refused(tmp_path: Path) -> None:
    vocab = write_hf_files(tmp_path)
    del vocab[EOT_TOKEN]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match=r"has no <\|endoftext\|> token"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_foreign_tokenizer_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}))
    with pytest.raises(CheckpointError, match=r"does not hold a CLIP BPE model"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_import_is_light() -> None:
    code = (
        "import sys, edgeclip.tokenizer; "
        "print(sorted(m for m in ('torch', 'onnx', 'tokenizers', 'ftfy', 'regex') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_tokenizer_with_added_tokens_is_refused_and_one_without_loads(tmp_path: Path) -> None:
    # transformers saves its special tokens as added tokens too (at their vocabulary ids): those are fine. A token
    # added beyond the BPE vocabulary (textual inversion) would be split into BPE pieces here: refused.
    from transformers import CLIPTokenizer

    write_hf_files(tmp_path / "files")
    hf = CLIPTokenizer(str(tmp_path / "files" / "vocab.json"), str(tmp_path / "files" / "merges.txt"))
    hf.save_pretrained(tmp_path / "plain")
    want = hf("a photo of a <sks> dog")["input_ids"]  # no padding: transformers pads with its own pad id
    assert (
        Tokenizer.from_pretrained_dir(tmp_path / "plain")(["a photo of a <sks> dog"], 16)[0, : len(want)].tolist()
        == want
    )
    hf.add_tokens(["<sks>"])
    hf.save_pretrained(tmp_path / "added")
    with pytest.raises(CheckpointError, match=r"adds 1 token\(s\) beyond its BPE vocabulary: '<sks>' \(id 49408\)"):
        Tokenizer.from_pretrained_dir(tmp_path / "added")


def test_a_lone_surrogate_without_ftfy_cleaning_is_a_clear_error() -> None:
    """With clean "clip" ftfy repairs it; without, `tokenizers` failed with a TypeError about its input types."""
    from edgeclip.contract import TextSpec
    from edgeclip.errors import InputError
    from edgeclip.tokenizer import Tokenizer

    for clean in ("none", "whitespace"):
        with pytest.raises(InputError, match="lone surrogate"):
            Tokenizer(TextSpec(clean=clean))(["a\ud800b"])
    assert Tokenizer(TextSpec())(["a\ud800b"]).shape == (1, 77)
