"""The bundle: a portable directory of ONNX graphs and the manifest that describes them.

Written by export, read by every runtime backend. Torch-free and onnx-free: plain JSON, files and hashes.

    edgeclip.json   the manifest (format, contract, graphs with their sha256 and parity figures, provenance)
    image.onnx      pixels (batch, 3, S, S) float32 -> image_embeds (batch, D), L2-normalized
    text.onnx       input_ids (batch, L) int64 -> text_embeds (batch, D), L2-normalized
    *.onnx.data     each graph's weights, beside it (edgeclip.graphfile); older bundles keep them inside the graph
    image.fp16.onnx, image.int8.onnx, ...   reduced-precision variants, with their accuracy gate in the manifest
    tokenizer/      optional: vocab.json + merges.txt
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgeclip.contract import ModelContract, contract_from_node
from edgeclip.errors import BundleError
from edgeclip.fileio import atomic_directory, sha256_files
from edgeclip.fileio import sha256_file as sha256_file  # re-exported: callers hash graph files through the bundle
from edgeclip.schema import MAX_DEPTH, Node, too_deep

FORMAT = "edgeclip-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "edgeclip.json"
TOWERS = ("image", "text")
PRECISIONS = ("fp32", "fp16", "int8")
# The runtime backends a graph can be meant for (GraphEntry.backends; empty: every one of them). Names only: the
# bundle does not import the runtime.
BACKEND_NAMES = ("onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "torch")
# Element types a graph input or output may have, by their numpy names (what the runtime checks feeds against).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32", "uint64",
          "bool")  # fmt: skip
_FIX = "fix the manifest or export the bundle again"

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
        return _tensor_spec(Node.root(data, error=BundleError, hint=_FIX))


@dataclass(frozen=True)
class GraphEntry:
    """One ONNX graph of the bundle: a tower at a precision, with its file, I/O, hash and export-time parity."""

    tower: str
    precision: str
    file: str  # relative to the bundle, POSIX separators
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str  # of the graph file's bytes followed by its data file's (when it has one)
    parity: dict[str, Any] = field(default_factory=dict)  # fp32: against PyTorch at export
    # The backends this graph is meant for; empty: every backend. Two graphs of one tower and precision (TensorRT's
    # int8 Q/DQ and ONNX Runtime CPU's fastest int8) are told apart by their backends.
    backends: tuple[str, ...] = ()
    scheme: str = ""  # how a reduced graph was made, e.g. "fp16-islands", "qdq-s8s8", "qoperator-u8s8"
    gate: dict[str, Any] = field(default_factory=dict)  # reduced precisions: the accuracy gate against fp32
    # The graph's external weights file ("": the weights are inside the graph file), relative to the bundle.
    data: str = ""

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
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphEntry:
        return _graph_entry(Node.root(data, error=BundleError, hint=_FIX))


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
                raise BundleError(f"graph {g.file}: unknown backends {unknown} (backends: {', '.join(BACKEND_NAMES)})")
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
    def from_dict(cls, data: Any) -> Manifest:
        """The manifest in `data` (parsed JSON), every field checked by type and range, and against each other
        (the contract's sizes against the graphs'): a bad one is a BundleError that names it."""
        root = Node.root(data, error=BundleError, hint=_FIX)
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = root.get("format", None).value if isinstance(data, Mapping) else type(data).__name__
            raise BundleError(
                f'this is not an edgeclip bundle manifest: expected "format": {FORMAT!r}, found {found!r}; '
                f"{_HOW_TO_MAKE}"
            )
        version = root.get("format_version")
        if not isinstance(version.value, int) or isinstance(version.value, bool):  # true == 1 and 1.0 == 1
            version.fail(f"the whole number {FORMAT_VERSION}")
        if version.value != FORMAT_VERSION:
            advice = (
                "upgrade edgeclip to read it, or export the bundle again with this version"
                if version.value > FORMAT_VERSION
                else "export the bundle again with this version of edgeclip"
            )
            raise BundleError(
                f"unknown bundle format version {version.value!r}: this edgeclip reads format version "
                f"{FORMAT_VERSION}; {advice}"
            )
        manifest = cls(
            name=root.get("name").string(),
            contract=contract_from_node(root.get("contract")),
            graphs=tuple(_graph_entry(g) for g in root.get("graphs").items(min_len=1)),
            tokenizer=tuple(_relative_file(f.string(), f) for f in root.get("tokenizer", []).items()),
            provenance=root.get("provenance", {}).object_copy(),
            format_version=version.value,
        )
        _check_consistency(manifest, root)
        return manifest


def _tensor_spec(node: Node) -> TensorSpec:
    shape: list[int | str] = []
    for dim in node.get("shape").items():
        if isinstance(dim.value, str):
            shape.append(dim.string())
        elif not isinstance(dim.value, int) or isinstance(dim.value, bool) or dim.value < 1:
            dim.fail("a whole number >= 1 or the name of a dynamic axis (a string)")
        else:
            shape.append(dim.value)
    return TensorSpec(name=node.get("name").string(), dtype=node.get("dtype").choice(DTYPES), shape=tuple(shape))


def _graph_entry(node: Node) -> GraphEntry:
    tower = node.get("tower").choice(TOWERS)
    precision = node.get("precision").choice(PRECISIONS)
    file = node.get("file")
    name = _relative_file(file.string(), file)
    inputs = tuple(_tensor_spec(t) for t in node.get("inputs").items(min_len=1))
    outputs = tuple(_tensor_spec(t) for t in node.get("outputs").items(min_len=1))
    sha = node.get("sha256")
    if not isinstance(sha.value, str) or len(sha.value) != 64 or not all(c in "0123456789abcdef" for c in sha.value):
        sha.fail("the sha256 of the graph file and its data file (64 lowercase hex digits)")
    data = node.get("data", "")
    data_name = _relative_file(data.string(nonempty=False), data) if data.value else ""
    backends = node.get("backends", [])
    names = tuple(b.choice(BACKEND_NAMES) for b in backends.items())
    if len(set(names)) != len(names):
        backends.refuse(f"names a backend twice: {list(names)}")
    return GraphEntry(
        tower=tower,
        precision=precision,
        file=name,
        inputs=inputs,
        outputs=outputs,
        sha256=sha.value,
        parity=node.get("parity", {}).object_copy(),
        backends=names,
        scheme=node.get("scheme", "").string(nonempty=False),
        gate=node.get("gate", {}).object_copy(),
        data=data_name,
    )


def _check_consistency(manifest: Manifest, root: Node) -> None:
    """The contract against the graphs: what each field says must be what the graphs take and give."""
    contract = root.get("contract")
    head, image, text = contract.get("head"), contract.get("image"), contract.get("text")
    spec = manifest.contract
    for tower in sorted({g.tower for g in manifest.graphs}):
        if not any(g.tower == tower and g.precision == "fp32" for g in manifest.graphs):
            have = sorted({g.precision for g in manifest.graphs if g.tower == tower})
            root.get("graphs").refuse(
                f"has {', '.join(have)} graphs of the {tower} tower but no fp32 one; every tower keeps its fp32 "
                f"graph (the reference the other precisions were checked against)"
            )
    for i, g in enumerate(manifest.graphs):
        where = f"graphs[{i}] ({g.file})"
        for out in g.outputs:
            if out.shape and isinstance(out.shape[-1], int) and out.shape[-1] != spec.head.embed_dim:
                head.get("embed_dim").refuse(
                    f"is {spec.head.embed_dim}, but {where} gives {out.name} of shape {_shape(out)}: the embedding "
                    f"size must be the graphs' output size"
                )
        first = g.inputs[0].shape
        if g.tower == "image" and len(first) == 4:
            sides = [d for d in first[2:] if isinstance(d, int)]
            if any(d != spec.image.size for d in sides):
                image.get("size").refuse(
                    f"is {spec.image.size}, but {where} takes {g.inputs[0].name} of shape {_shape(g.inputs[0])}"
                )
        if g.tower == "text" and len(first) == 2 and isinstance(first[1], int) and first[1] != spec.text.context_length:
            text.get("context_length").refuse(
                f"is {spec.text.context_length}, but {where} takes {g.inputs[0].name} of shape "
                f"{_shape(g.inputs[0])}: a graph of fixed length takes exactly context_length ids"
            )
    if manifest.tokenizer != spec.text.tokenizer_files:
        text.get("tokenizer_files").refuse(
            f"is {list(spec.text.tokenizer_files)}, but the manifest's tokenizer lists {list(manifest.tokenizer)}; "
            f"the two must name the same files"
        )


def _shape(spec: TensorSpec) -> str:
    return f"({', '.join(str(d) for d in spec.shape)})"


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
        data = _read_manifest_json(manifest_path)
        try:
            manifest = Manifest.from_dict(data)
        except BundleError as exc:
            raise BundleError(f"{manifest_path}: {exc}") from None
        bundle = cls(path, manifest)
        bundle._check_files(verify)
        return bundle

    def _check_files(self, verify: bool) -> None:
        for i, entry in enumerate(self.manifest.graphs):
            for file, field_name in zip(self.files(entry), (f"graphs[{i}].file", f"graphs[{i}].data"), strict=False):
                self._check_inside(file, field_name)
                if not file.is_file():
                    weights = f" with its weights in {entry.data}" if entry.data else ""
                    raise BundleError(
                        f"bundle {self.path} lists the {entry.tower} graph ({entry.precision}) as {entry.file}"
                        f"{weights}, but {file.relative_to(self.path).as_posix()} is missing; export the bundle again"
                    )
            if verify:
                found = sha256_files(*self.files(entry))
                if found != entry.sha256:
                    weights = f" (with its weights in {entry.data})" if entry.data else ""
                    raise BundleError(
                        f"graph file {entry.file}{weights} in bundle {self.path} was modified after export: the "
                        f"sha256 is {found[:16]}..., the manifest says {entry.sha256[:16]}...; export the bundle again"
                    )
        for i, name in enumerate(self.manifest.tokenizer):
            self._check_inside(self.path / name, f"tokenizer[{i}]")
            if not (self.path / name).is_file():
                raise BundleError(
                    f"bundle {self.path} lists tokenizer file {name}, but it is missing; export the bundle again"
                )

    def _check_inside(self, file: Path, field: str) -> None:
        # The names were checked to be plain relative paths; a symbolic link among them can still lead out.
        if not file.resolve().is_relative_to(self.path.resolve()):
            raise BundleError(
                f"{self.path / MANIFEST_NAME}: {field} names {file.relative_to(self.path)}, a symbolic link to "
                f"{file.resolve()}, outside the bundle; a bundle holds its own files: copy the file into the bundle "
                f"in place of the link, or export the bundle again"
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
            usable = [
                p for p in have if backend is None or any(g.precision == p and g.serves(backend) for g in present)
            ]
            instead = f"pick another precision ({', '.join(usable)}) or backend" if usable else "pick another backend"
            raise BundleError(
                f"bundle {self.path} has an {precision} graph of the {tower} tower only for {', '.join(others)}, "
                f"not for {backend}; {instead}"
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

    def files(self, entry: GraphEntry) -> tuple[Path, ...]:
        """The graph file of `entry` and its external weights file, if it has one: what a copy of the graph needs."""
        return (self.path / entry.file, *((self.path / entry.data,) if entry.data else ()))

    def graph_bytes(self, entry: GraphEntry) -> int:
        """The size on disk of the graph of `entry`, weights included."""
        return sum(p.stat().st_size for p in self.files(entry))

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


def _read_manifest_json(path: Path) -> Any:
    """The parsed JSON of the manifest at `path`; a file that is not JSON, or JSON nested absurdly deep, is a
    BundleError."""
    damaged = "the bundle is damaged: export it again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # json's parser recurses once per level
        raise BundleError(f"{path} nests lists or objects thousands of levels deep; {damaged}") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError; also integers too long to convert
        raise BundleError(f"{path} is not valid JSON ({exc}); {damaged}") from exc
    if too_deep(data):
        raise BundleError(
            f"{path} nests lists or objects more than {MAX_DEPTH} levels deep (a manifest is about 6); {damaged}"
        )
    return data


def write_bundle_atomically(target: Path, fill: Callable[[Path], Manifest], *, force: bool = False) -> Manifest:
    """Make the bundle at `target` through `fill(tmp_dir) -> Manifest`, all or nothing.

    `fill` writes the graph files into a fresh directory beside `target`; the manifest is written last, then the
    directory is renamed into place. An existing non-empty `target` is refused unless `force`, and even then only
    when it is a bundle (so a mistyped --out never deletes someone's files). On any exception (Ctrl-C included) the
    temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    _check_target(target, force)  # before the slow work, so a refusal costs nothing
    # Checked again before the rename: something may have appeared there while fill ran.
    with atomic_directory(target, before_replace=lambda: _check_target(target, force)) as tmp:
        manifest = fill(tmp)
        _write_manifest(tmp, manifest)
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


def _write_manifest(directory: Path, manifest: Manifest) -> None:
    for entry in manifest.graphs:
        if not (directory / entry.file).is_file():
            raise BundleError(f"the manifest lists graph file {entry.file}, but export did not write it (a bug)")
        if entry.data and not (directory / entry.data).is_file():
            raise BundleError(f"the manifest lists data file {entry.data}, but export did not write it (a bug)")
    text = json.dumps(manifest.to_dict(), indent=2, sort_keys=False) + "\n"
    (directory / MANIFEST_NAME).write_text(text, encoding="utf-8")


def _relative_file(name: str, node: Node | None = None) -> str:
    """A file name from a manifest, checked to stay inside the bundle (its links are checked when it opens)."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name:
        where = f"{node.path} " if node is not None else ""
        raise BundleError(
            f"the manifest {where}names the file {name!r}, which is not a plain path inside the bundle; {_FIX}"
        )
    return str(pure)
