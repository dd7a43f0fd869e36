"""The CLIP BPE tokenizer: texts to the int64 ids a CLIP text tower takes. No torch.

edgeclip tokenizes every model exactly as the reference tokenizer that CLIP models were trained with: OpenAI's
`simple_tokenizer.py` (which open_clip copies). Text is cleaned (ftfy, HTML entities unescaped twice, whitespace
runs folded, lower-cased), split by the reference regex, byte-level BPE encoded with `</w>` word ends, and framed
as `[sot, ids..., eot]`, padded with 0 and truncated so that eot stays the last token (open_clip's `tokenize()`).

Hugging Face directories get the same pipeline: their own `vocab.json` + `merges.txt` (or `tokenizer.json`)
supply the ids and the special ids, nothing else. transformers' `CLIPTokenizer` is not followed: it pads with the
end token, and it neither unescapes HTML entities nor fixes ligatures (`&amp;`, `ﬁ` get other ids). The models were
trained with the reference, and with causal attention and pooling at the end token the padding id cannot change an
embedding.

The BPE runs in the Rust `tokenizers` library for speed. Where it could not match the reference exactly, the work
is done here instead: the cleaning in Python (ftfy, `html`, Python's `str.lower`, which differs from Rust's); the
regex spelled out for the regex engine inside `tokenizers` (case folding, Unicode 17 letters); and texts holding
the special token strings are split by the same regex but mapped in Python.

Where the references disagree, OpenAI's is followed: its special tokens `<|startoftext|>` / `<|endoftext|>` written
in a text become the special ids (open_clip's copy uses `<start_of_text>` / `<end_of_text>` instead).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeclip.contract import TextSpec
from edgeclip.errors import CheckpointError, InputError

if TYPE_CHECKING:
    import tokenizers

__all__ = ["DEFAULT_MERGES", "EOT_TOKEN", "SOT_TOKEN", "Tokenizer", "tokenize"]

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# The CLIP BPE merges (MIT, OpenAI), shipped as package data; see data/NOTICE.
DEFAULT_MERGES = Path(__file__).with_name("data") / "bpe_simple_vocab_16e6.txt.gz"
_WORD_END = "</w>"
# The reference keeps the first 49152 - 256 - 2 merges of its file: 256 bytes, 256 bytes + </w>, the merges and two
# special tokens make the 49,408 ids every CLIP model was trained with.
_CLIP_MERGES = 49152 - 256 - 2

# Letters (L) and numbers (N) added in Unicode 17, which the reference's `regex` module (2026.11) knows and the
# Oniguruma tables inside `tokenizers` (Unicode 16) do not: without them such characters would split differently.
_NEW_LETTERS = (
    (0x558, 0x558), (0x58B, 0x58C), (0x88F, 0x88F), (0xC5C, 0xC5C), (0xCDC, 0xCDC), (0x208F, 0x208F),
    (0x209D, 0x209F), (0xA7CE, 0xA7CF), (0xA7D2, 0xA7D2), (0xA7D4, 0xA7D4), (0xA7DD, 0xA7DD), (0xA7E2, 0xA7E2),
    (0xA7F1, 0xA7F1), (0xAB6C, 0xAB6D), (0x107BB, 0x107BF), (0x10940, 0x10959), (0x10EC5, 0x10EC7),
    (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB), (0x11DF1, 0x11DF1), (0x16EA0, 0x16EB8),
    (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF3), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA), (0x18D09, 0x18D20),
    (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128), (0x1B168, 0x1B168),
    (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96), (0x1DFCD, 0x1DFFF),
    (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED), (0x1E6F0, 0x1E6F4),
    (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD), (0x323B0, 0x33479),
    (0x3D000, 0x3FC3F),
)  # fmt: skip
_NEW_NUMBERS = ((0x11DE0, 0x11DE9), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686), (0x16FF4, 0x16FF6))
# The reference regex is compiled with IGNORECASE, which matches these letters by simple case folding.
_FOLDS = {"i": "iIİ", "k": "kKK", "s": "sSſ"}
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def _caseless(literal: str) -> str:
    """`literal` as an Oniguruma pattern that matches what the reference's IGNORECASE regex matches."""
    parts = []
    for ch in literal:
        if ch.isascii() and ch.isalpha():
            parts.append("[" + _FOLDS.get(ch.lower(), ch.lower() + ch.upper()) + "]")
        else:
            parts.append(re.escape(ch))
    return "".join(parts)


def _char_class(ranges: Iterable[tuple[int, int]]) -> str:
    return "".join(f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)


def _split_pattern() -> str:
    """The reference's regex, written out for the engine inside `tokenizers`: under IGNORECASE it is
    `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`."""
    letters = r"\p{L}" + _char_class(_NEW_LETTERS)
    numbers = r"\p{N}" + _char_class(_NEW_NUMBERS)
    alternatives = [_caseless(SOT_TOKEN), _caseless(EOT_TOKEN), *("'" + _caseless(c) for c in _CONTRACTIONS)]
    # U+0345 (combining ypogegrammeni) case-folds to a letter, so under IGNORECASE the reference's "other" class
    # does not match it, and neither does [\p{L}]: the reference drops it like whitespace.
    alternatives += [f"[{letters}]+", f"[{numbers}]", rf"[^\s{letters}{numbers}\x{{345}}]+"]
    return "|".join(alternatives)


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """The reference's reversible map of the 256 bytes to printable characters (printable latin-1 kept as is)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + n) for n, b in enumerate(moved)}}


@dataclass(frozen=True)
class _Vocabulary:
    """Token -> id and the ranked merges, as the files gave them."""

    ids: dict[str, int]
    merges: list[tuple[str, str]]
    source: str  # for messages


@dataclass(frozen=True)
class _Built:
    """The Rust tokenizer and the little that is checked against a spec. The vocabulary's Python copy (49,408
    tokens and their merges: about 20 MiB of dicts, strings and tuples) is not kept: `tokenizers` holds its own."""

    rust: tokenizers.Tokenizer
    specials: dict[str, int]  # the special token strings a text may hold -> their ids
    size: int  # the largest id + 1
    source: str  # for messages


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise CheckpointError(f"cannot read the tokenizer file {path}: {exc}; pass an intact file") from exc


def _parse_merges(lines: Iterable[Any], path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(lines):
        pair = line.split() if isinstance(line, str) else line
        if len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise CheckpointError(
                f"merge {n + 1} of {path} is {line!r}, not two tokens separated by a space; "
                f"pass the merges file of a byte-level BPE (merges.txt)"
            )
        merges.append((pair[0], pair[1]))
    return merges


def _reference_vocabulary(merges_file: Path) -> _Vocabulary:
    """The vocabulary built as the reference builds it from its merges file."""
    lines = _read_text(merges_file).split("\n")[1 : 1 + _CLIP_MERGES]  # line 1: a version header
    if len(lines) < _CLIP_MERGES or not lines[-1].strip():
        found = len([line for line in lines if line.strip()])
        raise CheckpointError(
            f"the merges file {merges_file} holds {found} merges; a CLIP BPE file holds at least {_CLIP_MERGES} "
            f"after its header line: pass bpe_simple_vocab_16e6.txt.gz, or a vocab.json with its merges.txt"
        )
    merges = _parse_merges(lines, merges_file)
    symbols = list(_bytes_to_unicode().values())
    tokens = [*symbols, *(s + _WORD_END for s in symbols), *("".join(m) for m in merges), SOT_TOKEN, EOT_TOKEN]
    return _Vocabulary({t: i for i, t in enumerate(tokens)}, merges, str(merges_file))


def _hf_vocabulary(vocab_file: Path, merges_file: Path) -> _Vocabulary:
    """A Hugging Face slow-tokenizer pair: vocab.json (token -> id) and merges.txt (ranked, after a #version line)."""
    ids = _read_json(vocab_file)
    lines = [line for line in _read_text(merges_file).split("\n") if line.strip() and not line.startswith("#version")]
    return _checked(ids, _parse_merges(lines, merges_file), str(vocab_file))


def _tokenizer_json_vocabulary(path: Path) -> _Vocabulary:
    """The BPE vocabulary and merges inside a `tokenizer.json` (what transformers 5 saves); its pipeline is ignored."""
    model = _read_json(path).get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != _WORD_END:
        raise CheckpointError(
            f"{path} does not hold a CLIP BPE model (model.type 'BPE' with end_of_word_suffix '{_WORD_END}'); "
            f"pass the tokenizer files of a CLIP model"
        )
    return _checked(model.get("vocab"), _parse_merges(model.get("merges") or [], path), str(path))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read_text(path))
    except ValueError as exc:
        raise CheckpointError(f"the tokenizer file {path} is not valid JSON ({exc}); pass an intact file") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"the tokenizer file {path} holds a {type(data).__name__}, not a JSON object")
    return data


def _checked(ids: Any, merges: list[tuple[str, str]], source: str) -> _Vocabulary:
    """A vocabulary from foreign files, checked where `tokenizers` would silently drop what it cannot encode."""
    if not isinstance(ids, dict) or not all(isinstance(v, int) for v in ids.values()):
        raise CheckpointError(f"the vocabulary in {source} is not a mapping of tokens to integer ids")
    symbols = list(_bytes_to_unicode().values())
    missing = [s for s in [*symbols, *(s + _WORD_END for s in symbols)] if s not in ids]
    missing += [a + b for a, b in merges if a + b not in ids or a not in ids or b not in ids]
    if missing:
        raise CheckpointError(
            f"the vocabulary in {source} lacks {len(missing)} tokens that a byte-level CLIP BPE needs "
            f"(e.g. {missing[:3]}); pass the vocab.json and merges.txt saved together with the model"
        )
    return _Vocabulary(ids, merges, source)


@functools.lru_cache(maxsize=8)
def _build(kind: str, files: tuple[Path, ...], stamps: tuple[int, ...]) -> _Built:
    """The Rust tokenizer of a vocabulary, built once per process (`stamps` rebuild it when a file changes)."""
    del stamps
    if kind == "reference":
        vocab = _reference_vocabulary(files[0])
    elif kind == "hf":
        vocab = _hf_vocabulary(files[0], files[1])
    else:
        vocab = _tokenizer_json_vocabulary(files[0])
    for token in (SOT_TOKEN, EOT_TOKEN):
        if token not in vocab.ids:
            raise CheckpointError(
                f"the vocabulary in {vocab.source} has no {token} token; a CLIP vocabulary holds "
                f"{SOT_TOKEN} and {EOT_TOKEN}: pass the tokenizer files of a CLIP model"
            )
    from tokenizers import Regex, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    try:
        bpe = models.BPE(vocab=vocab.ids, merges=vocab.merges, end_of_word_suffix=_WORD_END, fuse_unk=False)
    except Exception as exc:  # tokenizers raises a bare Exception on inconsistent files
        raise CheckpointError(f"the BPE files {vocab.source} do not fit together: {exc}") from exc
    rust = RustTokenizer(bpe)
    rust.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # invert=True: the regex matches the pieces to keep; what lies between them (whitespace) is dropped.
            pre_tokenizers.Split(Regex(_split_pattern()), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # the reference's byte-to-unicode map
        ]
    )
    return _Built(rust, {t: vocab.ids[t] for t in (SOT_TOKEN, EOT_TOKEN)}, max(vocab.ids.values()) + 1, vocab.source)


def _refuse_added_tokens(folder: Path, rust: tokenizers.Tokenizer) -> None:
    """CheckpointError when the directory's tokenizer adds tokens beyond its BPE vocabulary (textual inversion, a
    fine-tune's new words): edgeclip would split them into BPE pieces and embed other ids than transformers does."""
    added: dict[str, int] = {}
    whole, extra = folder / "tokenizer.json", folder / "added_tokens.json"
    if whole.is_file():
        for entry in _read_json(whole).get("added_tokens") or []:
            if isinstance(entry, dict) and isinstance(entry.get("content"), str) and isinstance(entry.get("id"), int):
                added[entry["content"]] = entry["id"]
    if extra.is_file():
        added.update({k: v for k, v in _read_json(extra).items() if isinstance(v, int)})
    foreign = sorted((i, t) for t, i in added.items() if rust.token_to_id(t) != i)
    if foreign:
        names = ", ".join(f"{t!r} (id {i})" for i, t in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise CheckpointError(
            f"the tokenizer in {folder} adds {len(foreign)} token(s) beyond its BPE vocabulary: {names}; edgeclip's "
            "tokenizer does not read added tokens and would embed other ids than transformers does for texts that "
            "use them, so this model is not supported"
        )


def _stamp(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError as exc:
        raise CheckpointError(f"the tokenizer file {path} cannot be read: {exc}; pass an existing file") from exc


class Tokenizer:
    """Texts to `(B, context_length)` int64 ids, token for token as the reference CLIP tokenizer.

    No files: the CLIP BPE shipped with edgeclip. `merges_file` alone: a merges file in the reference's layout
    (`bpe_simple_vocab_16e6.txt[.gz]`). `vocab_file` + `merges_file`: a Hugging Face `vocab.json` + `merges.txt`.
    `vocab_file` alone: a Hugging Face `tokenizer.json`. The spec's special ids must match the vocabulary's.
    """

    def __init__(
        self,
        spec: TextSpec | None = None,
        *,
        vocab_file: str | os.PathLike[str] | None = None,
        merges_file: str | os.PathLike[str] | None = None,
    ) -> None:
        files: tuple[Path, ...]
        if vocab_file is None:
            kind, files = "reference", (Path(merges_file or DEFAULT_MERGES).resolve(),)
        elif merges_file is None:
            kind, files = "tokenizer.json", (Path(vocab_file).resolve(),)
        else:
            kind, files = "hf", (Path(vocab_file).resolve(), Path(merges_file).resolve())
        self._built = built = _build(kind, files, tuple(_stamp(f) for f in files))
        # The files read; () for the BPE shipped with edgeclip.
        self.files: tuple[Path, ...] = () if merges_file is None and vocab_file is None else files
        if spec is None:
            spec = TextSpec(vocab_size=built.size, sot_id=built.specials[SOT_TOKEN], eot_id=built.specials[EOT_TOKEN])
        self.spec = spec
        _check_spec(spec, built)

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike[str], spec: TextSpec | None = None) -> Tokenizer:
        """The tokenizer of a Hugging Face model directory: its vocab.json + merges.txt, else its tokenizer.json,
        else (a directory saved without tokenizer files) the CLIP BPE shipped with edgeclip."""
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"{folder} is not a directory; pass the Hugging Face model directory")
        vocab, merges, whole = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
        if vocab.is_file() != merges.is_file():
            present, absent = (vocab, merges) if vocab.is_file() else (merges, vocab)
            raise CheckpointError(
                f"{folder} holds {present.name} but not {absent.name}; a BPE tokenizer needs both: copy the "
                f"missing file from where the model came from"
            )
        if vocab.is_file():
            tokenizer = cls(spec, vocab_file=vocab, merges_file=merges)
        elif whole.is_file():
            tokenizer = cls(spec, vocab_file=whole)
        else:
            return cls(spec)
        _refuse_added_tokens(folder, tokenizer._built.rust)
        return tokenizer

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """`[sot, ids..., eot, pad...]` per text, int64 `(B, context_length)`; over-long texts are cut so that eot
        stays the last token, as open_clip's `tokenize()` does."""
        batch = _as_batch(texts)
        length = self.spec.context_length if context_length is None else context_length
        _check_context_length(length, "context_length")
        spec = self.spec
        out = np.full((len(batch), length), spec.pad_id, dtype=np.int64)
        for row, ids in zip(out, self._encode_cleaned([self._clean(t) for t in batch]), strict=True):
            tokens = [spec.sot_id, *ids[: length - 2], spec.eot_id]
            row[: len(tokens)] = tokens
        return out

    def encode(self, text: str) -> list[int]:
        """The BPE ids of one text, without start and end tokens."""
        if not isinstance(text, str):
            raise InputError(f"encode() takes one str, got {type(text).__name__}: pass the text as a str")
        return self._encode_cleaned([self._clean(text)])[0]

    @property
    def vocab_size(self) -> int:
        return self._built.size

    def save(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write the vocabulary as a Hugging Face `vocab.json` + `merges.txt` pair into `directory` (e.g. a
        bundle); `Tokenizer(vocab_file=..., merges_file=...)` reads it back to the same ids."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        model = json.loads(self._built.rust.to_str())["model"]  # the vocabulary as `tokenizers` holds it
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]  # older `tokenizers`: "a b"
        vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
        vocab_file.write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return vocab_file, merges_file

    def _clean(self, text: str) -> str:
        spec = self.spec
        # Printable ASCII without '&': ftfy and HTML unescaping leave it unchanged; skip them (they dominate the cost).
        if spec.clean == "clip" and not (text.isascii() and text.isprintable() and "&" not in text):
            import ftfy

            text = html.unescape(html.unescape(ftfy.fix_text(text)))
        if spec.clean != "none":
            text = " ".join(text.split())  # what the reference's strip + re.sub(r"\s+", " ") give after ftfy
        if spec.clean != "clip" and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # ftfy would have repaired it; `tokenizers` would fail with a TypeError
                raise InputError(
                    f"text {text[:40]!r} holds a lone surrogate, which is not text; decode its bytes properly"
                ) from None
        return text.lower() if spec.lower_case else text

    def _encode_cleaned(self, texts: list[str]) -> list[list[int]]:
        built = self._built
        out: list[list[int]] = [[] for _ in texts]
        plain = [i for i, t in enumerate(texts) if not any(s in t for s in built.specials)]
        encode = getattr(built.rust, "encode_batch_fast", built.rust.encode_batch)
        for i, encoding in zip(plain, encode([texts[i] for i in plain], add_special_tokens=False), strict=True):
            out[i] = encoding.ids
        for i in sorted(set(range(len(texts))) - set(plain)):
            out[i] = self._encode_with_specials(texts[i])
        return out

    def _encode_with_specials(self, text: str) -> list[int]:
        """The reference maps a special token string to its id only where its regex splits it out as one piece
        (not in '!<|endoftext|>', which the punctuation run swallows); `tokenizers`' added tokens would map every
        occurrence. So: split with the same regex, then map the pieces here."""
        built = self._built
        ids: list[int] = []
        assert built.rust.pre_tokenizer is not None
        for piece, _ in built.rust.pre_tokenizer.pre_tokenize_str(text):
            special = built.specials.get(piece)  # printable ASCII: the byte-level map leaves it unchanged
            ids.extend([special] if special is not None else [t.id for t in built.rust.model.tokenize(piece)])
        return ids


def _check_spec(spec: TextSpec, built: _Built) -> None:
    _check_context_length(spec.context_length, "the text spec's context_length")
    ids = built.specials
    wrong = [
        f"{name} {given} (the vocabulary's {token} is {ids[token]})"
        for name, given, token in (("sot_id", spec.sot_id, SOT_TOKEN), ("eot_id", spec.eot_id, EOT_TOKEN))
        if given != ids[token]
    ]
    if built.size > spec.vocab_size:
        wrong.append(f"vocab_size {spec.vocab_size} (the vocabulary has ids up to {built.size - 1})")
    if wrong:
        raise CheckpointError(
            f"the model's text spec does not fit the tokenizer vocabulary {built.source}: {'; '.join(wrong)}; "
            f"pass the tokenizer files saved with the model"
        )


def _check_context_length(length: object, what: str) -> None:
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise InputError(
            f"{what} is {length!r}; it must be an int >= 2 (room for the start and end tokens), 77 for most CLIP models"
        )


def _as_batch(texts: object) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise InputError(f"texts is {type(texts).__name__}, not str: decode it first, e.g. texts.decode('utf-8')")
    if not isinstance(texts, Iterable):
        raise InputError(f"texts is {type(texts).__name__}; pass a str or a sequence of str")
    batch = list(texts)
    if not batch:
        raise InputError("texts is an empty sequence; pass at least one str (an empty string is a valid text)")
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            hint = "decode bytes first: .decode('utf-8')" if isinstance(text, bytes) else "pass every text as a str"
            raise InputError(f"texts[{i}] is {type(text).__name__} ({text!r:.40}), not str: {hint}")
    return batch


@functools.cache
def _default() -> Tokenizer:
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> np.ndarray:
    """The default CLIP tokenizer (the shipped BPE): int64 `(B, context_length)`, as open_clip's `tokenize()`."""
    return _default()(texts, context_length)
