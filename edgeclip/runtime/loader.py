"""`load(bundle) -> Model`: open a bundle, choose each tower's precision and start its graphs on a backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edgeclip.bundle import PRECISIONS, Bundle, GraphEntry
from edgeclip.errors import BackendError, BundleError, InputError
from edgeclip.runtime.backends import SPECS, Runner, create_runner, resolve_backend
from edgeclip.runtime.backends.base import DimLimits, RunnerRequest
from edgeclip.runtime.model import Model

if TYPE_CHECKING:
    from edgeclip.contract import ModelContract

__all__ = ["best_precision", "builtin_bundle_path", "load", "parse_precision", "runner_request"]


def builtin_bundle_path() -> Path:
    """Where the bundle of the built-in model is shipped inside the package (it may not be there yet)."""
    return Path(__file__).resolve().parents[1] / "builtin" / "bundle"


def load(
    path: str | os.PathLike[str] | Bundle | None = None,
    backend: str = "auto",
    precision: str | Mapping[str, str] | None = None,
    *,
    threads: int | None = None,
    spinning: bool | None = None,
    verify: bool = True,
    preprocess: str = "exact",
) -> Model:
    """Open a bundle and start its graphs on a backend.

    path: a bundle directory (None: the built-in model). backend: "auto" (the fastest available; `Model.backend`
    says which) or a name from `available_backends()`; an unavailable one is a BackendError, never replaced.
    precision: "fp32" | "fp16" | "int8" for both towers, per tower as {"image": "int8", "text": "fp16"} or
    "image=int8,text=fp16" (a tower not named: the default), None: for each tower the fastest graph the bundle has
    for the backend that passed its accuracy gate (`best_precision`). threads: CPU threads per graph (None: the
    backend's default), and the threads that decode and resize the images of a batch (None: every core, at most 8).
    spinning: whether a graph's idle CPU threads spin after each call, waiting for the next (None: the backend's
    default; ONNX Runtime spins, which is faster for back-to-back calls of one graph): False for a program that
    shares a CPU of few cores with other processes, or calls several graphs in turn there, where one graph's
    spinning threads slow the next (benchmarks/RESULTS.md). verify: check the sha256 of the graph files.
    preprocess: "exact" (the reference pipeline) or "fast" (large JPEGs decoded at reduced scale, large images
    box-reduced before the bicubic resize: several times cheaper on camera frames, close but not equal;
    `edgeclip.preprocess`). The GPU
    preprocessing of the torch-cuda backend is always exact.
    """
    from edgeclip.preprocess import check_mode

    check_mode(preprocess)
    if spinning is not None and not isinstance(spinning, bool):
        raise InputError(f"spinning must be True, False or None (the backend's default), got {spinning!r}")
    wanted = parse_precision(precision)
    bundle = path if isinstance(path, Bundle) else Bundle.open(_bundle_path(path), verify=verify)
    name = resolve_backend(backend)
    runners: dict[str, Runner] = {}
    precisions: dict[str, str] = {}
    files: dict[str, str] = {}
    try:
        for tower in sorted({g.tower for g in bundle.manifest.graphs}):
            chosen = wanted.get(tower) or best_precision(bundle, tower, name)
            entry = bundle.graph(tower, chosen, backend=name)
            runners[tower] = _start(bundle, entry, name, auto=backend == "auto", threads=threads, spinning=spinning)
            precisions[tower] = entry.precision
            files[tower] = entry.file
    except BaseException:
        for runner in runners.values():
            runner.close()
        raise
    return Model(bundle, name, runners, precisions, files, preprocess=preprocess, threads=threads)


def parse_precision(precision: str | Mapping[str, str] | None) -> dict[str, str]:
    """`load`'s precision argument as {tower: precision} (towers not named: the default)."""
    if precision is None:
        return {}
    given = precision
    if isinstance(precision, str):
        if "=" not in precision:
            precision = {"image": precision, "text": precision}
        else:
            pairs = [part.split("=", 1) for part in precision.split(",") if part.strip()]
            items = [(k.strip(), v.strip()) for k, v in (p if len(p) == 2 else (p[0], "") for p in pairs)]
            repeated = sorted({k for k, _ in items if [t for t, _ in items].count(k) > 1})
            if repeated:
                raise InputError(
                    f"precision {given!r} names {', '.join(repeated)} more than once; name each tower once"
                )
            precision = dict(items)
    if not isinstance(precision, Mapping):
        raise InputError(f"precision must be a string or a mapping of tower to precision, got {given!r}")
    towers = ("image", "text")
    bad_towers = [t for t in precision if t not in towers]
    bad = [p for p in precision.values() if p not in PRECISIONS]
    if bad_towers or bad:
        raise InputError(
            f"unknown precision {given!r}; give one of {', '.join(PRECISIONS)}, or per tower as "
            "'image=int8,text=fp16' (or None: the fastest that passed its gate)"
        )
    return dict(precision)


def best_precision(bundle: Bundle, tower: str, backend: str) -> str:
    """The precision `load(precision=None)` runs for `tower` on `backend`: the fastest the bundle has for that
    backend whose graph passed its accuracy gate (fp32 needs none)."""
    present = {
        g.precision
        for g in bundle.graphs_for(backend)
        if g.tower == tower and (g.precision == "fp32" or g.gate.get("passed") is True)
    }
    for precision in SPECS[backend].precisions:
        if precision in present:
            return precision
    return "fp32"  # not reached for a valid bundle; bundle.graph then names what is present


def runner_request(
    bundle: Bundle, entry: GraphEntry, *, threads: int | None = None, spinning: bool | None = None
) -> RunnerRequest:
    """What a backend is given to start the graph `entry` of `bundle` (its limits read from the contract)."""
    if len(entry.inputs) != 1 or len(entry.outputs) != 1:
        raise BundleError(
            f"graph {entry.file} of bundle {bundle.path} has {len(entry.inputs)} inputs and {len(entry.outputs)} "
            f"outputs; edgeclip graphs have one of each: export the bundle again"
        )
    return RunnerRequest(
        path=bundle.file(entry),
        inputs=tuple(entry.inputs),
        outputs=tuple(entry.outputs),
        bundle_dir=bundle.path,
        tower=entry.tower,
        precision=entry.precision,
        sha256=entry.sha256,
        threads=threads,
        spinning=spinning,
        dim_limits=_dim_limits(entry.tower, entry.inputs[0].shape, bundle.manifest.contract),
    )


def _start(
    bundle: Bundle, entry: GraphEntry, backend: str, *, auto: bool, threads: int | None, spinning: bool | None
) -> Runner:
    request = runner_request(bundle, entry, threads=threads, spinning=spinning)
    try:
        runner = create_runner(backend, request)
    except BackendError as exc:
        if not auto:
            raise
        # auto never falls back on its own: a backend that looked available but fails is reported.
        raise BackendError(
            f"backend 'auto' chose {backend!r}, the fastest that looked available here, and it failed: {exc}. "
            "Pass another backend explicitly (see 'edgeclip info')"
        ) from exc
    try:
        _check_context(bundle, entry, runner)
    except BaseException:
        runner.close()
        raise
    return runner


def _check_context(bundle: Bundle, entry: GraphEntry, runner: Runner) -> None:
    """A text graph of dynamic length takes any length up to the table of positions it was exported with; the
    manifest's context length (data read from disk) must not exceed it. One call at that length shows it here
    rather than at the first long text."""
    shape = entry.inputs[0].shape
    if entry.tower != "text" or len(shape) != 2 or not isinstance(shape[1], str):
        return
    import numpy as np

    text = bundle.manifest.contract.text
    ids = np.zeros((1, text.context_length), dtype=np.int64)
    ids[0, -1] = text.eot_id
    try:
        runner.infer({entry.inputs[0].name: ids})
    except BackendError as exc:
        raise BundleError(
            f"text graph {entry.file} of bundle {bundle.path} does not take {text.context_length} tokens, the "
            f"context length its manifest gives (contract.text.context_length): {' '.join(str(exc).split())}. "
            "Export the bundle again"
        ) from exc


def _bundle_path(path: str | os.PathLike[str] | None) -> Path:
    if path is not None:
        return Path(path)
    from edgeclip import runtime  # through the package, where callers (and tests) may point it elsewhere

    builtin = runtime.builtin_bundle_path()
    if not (builtin / "edgeclip.json").is_file():
        raise BundleError(
            f"the built-in bundle is missing from this installation ({builtin} has no edgeclip.json): reinstall "
            "edgeclip, or pass a bundle directory: edgeclip.load('export/<name>') or --bundle DIR, made with "
            "'edgeclip export CHECKPOINT --out DIR'"
        )
    return builtin


def _dim_limits(tower: str, shape: tuple[int | str, ...], contract: ModelContract) -> DimLimits:
    # The text graph takes any length up to the context length it was exported with (its position embeddings).
    if tower == "text" and len(shape) == 2 and isinstance(shape[1], str):
        return {shape[1]: (1, contract.text.context_length)}
    return {}
