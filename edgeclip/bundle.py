"""The bundle: a portable directory of ONNX graphs and the manifest that describes them.

Written by export, read by every runtime backend. Torch-free and onnx-free: plain JSON, files and hashes.

    edgeclip.json   the manifest (format, contract, graphs with their sha256 and parity figures, provenance)
    image.onnx      pixels (batch, 3, S, S) float32 -> image_embeds (batch, D), L2-normalized
    text.onnx       input_ids (batch, L) int64 -> text_embeds (batch, D), L2-normalized
    tokenizer/      optional: vocab.json + merges.txt
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeclip.contract import ModelContract
from edgeclip.errors import BundleError

FORMAT = "edgeclip-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "edgeclip.json"
TOWERS = ("image", "text")
PRECISIONS = ("fp32", "fp16", "int8")
# The runtime backends a graph can be meant for (GraphEntry.backends; empty: every one of them). Names only: the
# bundle does not import the runtime.
BACKEND_NAMES = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")

_HOW_TO_MAKE = "make one with 'edgeclip export CHECKPOINT --out DIR'"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and shape (ints, or names of dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        shape = tuple(d if isinstance(d, str) else int(d) for d in data["shape"])
        return cls(name=str(data["name"]), dtype=str(data["dtype"]), shape=shape)


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the bundle: a tower at a precision, with its file, I/O, hash and export-time parity."""

    tower: str
    precision: str
    file: str  # relative to the bundle, POSIX separators
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str
    parity: dict[str, Any] = field(default_factory=dict)  # fp32: against PyTorch at export
    # The backends this graph is meant for; empty: every backend. Two graphs of one tower and precision (TensorRT's
    # int8 Q/DQ and ONNX Runtime CPU's fastest int8) are told apart by their backends.
    backends: tuple[str, ...] = ()
    scheme: str = ""  # how a reduced graph was made, e.g. "fp16-islands", "qdq-s8s8", "qoperator-u8s8"
    gate: dict[str, Any] = field(default_factory=dict)  # reduced precisions: the accuracy gate against fp32

    def serves(self, backend: str) -> bool:
        """Whether this graph is meant for `backend`."""
        return not self.backends or backend in self.backends

    def to_dict(self) -> dict[str, Any]:
        return {
            "tower": self.tower,
            "precision": self.precision,
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "sha256": self.sha256,
            "parity": dict(self.parity),
            "backends": list(self.backends),
            "scheme": self.scheme,
            "gate": dict(self.gate),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphEntry:
        return cls(
            tower=str(data["tower"]),
            precision=str(data["precision"]),
            file=_relative_file(str(data["file"])),
            inputs=tuple(TensorSpec.from_dict(t) for t in data["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
            sha256=str(data["sha256"]),
            parity=dict(data.get("parity", {})),
            backends=tuple(str(b) for b in data.get("backends", ())),
            scheme=str(data.get("scheme", "")),
            gate=dict(data.get("gate", {})),
        )


@dataclass(frozen=True)
class Manifest:
    """What `edgeclip.json` holds."""

    name: str
    contract: ModelContract
    graphs: tuple[GraphEntry, ...]
    tokenizer: tuple[str, ...] = ()  # files relative to the bundle; empty: the CLIP BPE shipped with edgeclip
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        seen: set[tuple[str, str, str]] = set()  # (tower, precision, backend)
        for g in self.graphs:
            if g.tower not in TOWERS or g.precision not in PRECISIONS:
                raise BundleError(
                    f"graph {g.file}: unknown tower {g.tower!r} or precision {g.precision!r} "
                    f"(towers: {', '.join(TOWERS)}; precisions: {', '.join(PRECISIONS)})"
                )
            unknown = [b for b in g.backends if b not in BACKEND_NAMES]
            if unknown:
                raise BundleError(
                    f"graph {g.file}: unknown backends {unknown} (backends: {', '.join(BACKEND_NAMES)})"
                )
            for backend in g.backends or BACKEND_NAMES:
                if (g.tower, g.precision, backend) in seen:
                    raise BundleError(
                        f"the manifest lists two {g.precision} graphs of the {g.tower} tower for backend {backend}"
                    )
                seen.add((g.tower, g.precision, backend))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "name": self.name,
            "contract": self.contract.to_dict(),
            "graphs": [g.to_dict() for g in self.graphs],
            "tokenizer": list(self.tokenizer),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise BundleError(
                f'this is not an edgeclip bundle manifest: expected "format": {FORMAT!r}, found {found!r}; '
                f"{_HOW_TO_MAKE}"
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            advice = (
                "upgrade edgeclip to read it, or export the bundle again with this version"
                if isinstance(version, int) and version > FORMAT_VERSION
                else "export the bundle again with this version of edgeclip"
            )
            raise BundleError(
                f"unknown bundle format version {version!r}: this edgeclip reads format version {FORMAT_VERSION}; "
                f"{advice}"
            )
        try:
            return cls(
                name=str(data["name"]),
                contract=ModelContract.from_dict(data["contract"]),
                graphs=tuple(GraphEntry.from_dict(g) for g in data["graphs"]),
                tokenizer=tuple(_relative_file(str(f)) for f in data.get("tokenizer", [])),
                provenance=dict(data.get("provenance", {})),
                format_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(
                f"the bundle manifest is incomplete or malformed ({exc!r}); export the bundle again"
            ) from exc


class Bundle:
    """An opened bundle directory. `Bundle.open` checks it; the graphs are read by the runtime backends."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Read and check the bundle at `path`; with `verify`, also the sha256 of every graph file."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"no bundle at {path}: the directory does not exist; {_HOW_TO_MAKE}")
        if not path.is_dir():
            raise BundleError(f"{path} is a file, not a bundle directory; {_HOW_TO_MAKE}")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not an edgeclip bundle: it has no {MANIFEST_NAME}; {_HOW_TO_MAKE}")
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"{manifest_path} is not valid JSON ({exc}); the bundle is damaged: export it again"
            ) from exc
        try:
            manifest = Manifest.from_dict(data)
        except BundleError as exc:
            raise BundleError(f"{manifest_path}: {exc}") from None
        bundle = cls(path, manifest)
        bundle._check_files(verify)
        return bundle

    def _check_files(self, verify: bool) -> None:
        for entry in self.manifest.graphs:
            file = self.file(entry)
            if not file.is_file():
                raise BundleError(
                    f"bundle {self.path} lists the {entry.tower} graph ({entry.precision}) as {entry.file}, "
                    f"but that file is missing; export the bundle again"
                )
            if verify:
                found = sha256_file(file)
                if found != entry.sha256:
                    raise BundleError(
                        f"graph file {entry.file} in bundle {self.path} was modified after export: its sha256 is "
                        f"{found[:16]}..., the manifest says {entry.sha256[:16]}...; export the bundle again"
                    )
        for name in self.manifest.tokenizer:
            if not (self.path / name).is_file():
                raise BundleError(
                    f"bundle {self.path} lists tokenizer file {name}, but it is missing; export the bundle again"
                )

    def graph(self, tower: str, precision: str = "fp32", backend: str | None = None) -> GraphEntry:
        """The graph of `tower` ("image" | "text") at `precision` ("fp32" | "fp16" | "int8") that `backend` runs
        (None: the first listed, whatever backend it is meant for)."""
        present = [g for g in self.manifest.graphs if g.tower == tower]
        for entry in present:
            if entry.precision == precision and (backend is None or entry.serves(backend)):
                return entry
        if not present:
            towers = sorted({g.tower for g in self.manifest.graphs})
            raise BundleError(
                f"bundle {self.path} has no {tower} graph; it has graphs of: {', '.join(towers) or 'nothing'}"
            )
        have = sorted({g.precision for g in present}, key=PRECISIONS.index)
        if precision in have:  # there is one, but for other backends
            others = sorted({b for g in present if g.precision == precision for b in g.backends})
            raise BundleError(
                f"bundle {self.path} has a {precision} graph of the {tower} tower only for {', '.join(others)}, "
                f"not for {backend}; pick another precision ({', '.join(have)}) or backend"
            )
        raise BundleError(
            f"bundle {self.path} has no {precision} graph of the {tower} tower; it has {', '.join(have)}; "
            f"add one with 'edgeclip quantize {self.path} --{precision}'"
        )

    def graphs_for(self, backend: str) -> list[GraphEntry]:
        """Every graph `backend` can run, in manifest order."""
        return [g for g in self.manifest.graphs if g.serves(backend)]

    def file(self, entry: GraphEntry) -> Path:
        """Where the graph file of `entry` lies."""
        return self.path / entry.file

    def tokenizer_dir(self) -> Path | None:
        """The directory of the bundled tokenizer files (vocab.json, merges.txt), or None: the shipped CLIP BPE."""
        if not self.manifest.tokenizer:
            return None
        return (self.path / self.manifest.tokenizer[0]).parent

    def graph_hash(self) -> str:
        """A short stable hash of all graphs (tower, precision, sha256): the key of caches built from them."""
        lines = sorted(f"{g.tower}/{g.precision}:{g.sha256}" for g in self.manifest.graphs)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        graphs = ", ".join(f"{g.tower}/{g.precision}" for g in self.manifest.graphs)
        return f"Bundle({str(self.path)!r}, name={self.manifest.name!r}, graphs=[{graphs}])"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in chunks (graphs can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _chmod_as_new_folder(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)


def write_bundle_atomically(target: Path, fill: Callable[[Path], Manifest], *, force: bool = False) -> Manifest:
    """Make the bundle at `target` through `fill(tmp_dir) -> Manifest`, all or nothing.

    `fill` writes the graph files into a fresh directory beside `target`; the manifest is written last, then the
    directory is renamed into place. An existing non-empty `target` is refused unless `force`, and even then only
    when it is a bundle (so a mistyped --out never deletes someone's files). On any exception (Ctrl-C included) the
    temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    _check_target(target, force)  # before the slow work, so a refusal costs nothing
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    _chmod_as_new_folder(tmp)  # mkdtemp makes it 0o700: a bundle is shared data, readable as any new folder is
    try:
        manifest = fill(tmp)
        _write_manifest(tmp, manifest)
        _fsync_tree(tmp)
        _check_target(target, force)  # again: something may have appeared there while fill ran
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise BundleError(f"{target} exists and is a file, not a bundle directory; choose another output directory")
    if not any(target.iterdir()):
        return
    if not force:
        raise BundleError(
            f"{target} already exists and is not empty; pass --force to replace the bundle there, "
            f"or choose another output directory"
        )
    if not (target / MANIFEST_NAME).is_file():
        raise BundleError(
            f"{target} is not empty and is not an edgeclip bundle (no {MANIFEST_NAME}), so --force will not replace "
            f"it; choose another output directory or empty it yourself"
        )


def _move_into_place(tmp: Path, target: Path) -> None:
    # An empty directory can simply go. A bundle is renamed aside first so that at every moment either the old or
    # the new bundle exists whole (after a crash between the two renames, both lie beside `target`).
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()  # only the unique name is wanted: rename needs the destination absent (or an empty dir on POSIX)
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # put the old bundle back
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    for entry in manifest.graphs:
        if not (directory / entry.file).is_file():
            raise BundleError(f"the manifest lists graph file {entry.file}, but export did not write it (a bug)")
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")


def _fsync_tree(root: Path) -> None:
    # Without this a power cut after the rename can leave a renamed directory of empty files.
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform or file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _relative_file(name: str) -> str:
    """A file name from a manifest, checked to stay inside the bundle."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name:
        raise BundleError(f"the manifest names the file {name!r}, which is not a plain path inside the bundle")
    return str(pure)
