"""`edgeclip build BUNDLE`: TensorRT engines for both towers of a bundle, on this device, into the engine cache.

Exit status: 0 every engine found or built; 1 any edgeclip error (no TensorRT, no GPU, a precision the bundle lacks,
a parser or build failure: the message says what to do, and engines already in the cache are kept).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgeclip.bundle import PRECISIONS
from edgeclip.cli.options import handle_errors, json_option


@click.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path))
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Graph precision to compile (default: fp16, then int8, then fp32, the first the bundle has).",
)
@click.option(
    "--profiles",
    multiple=True,
    metavar="TOWER=RANGES",
    help="Optimization profiles, min:opt:max batch per profile, e.g. image=1:1:1,1:8:32; text ranges may "
    "add a length: text=1:1:1x1:32:32,1:8:32 (default: a batch-1 and a batch 1..32 profile).",
)
@click.option(
    "--workspace",
    type=click.IntRange(min=1),
    default=None,
    metavar="MB",
    help="Builder workspace limit in MiB (default: 1024, or a quarter of the free GPU memory if less).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Engine cache root (default: engines/); engines go to DIR/<bundle>/<key>/.",
)
@click.option(
    "--force", is_flag=True, help="Rebuild engines the cache already has (each old one kept until the new is whole)."
)
@click.option("--version-compatible", is_flag=True, help="Engines later TensorRT versions can also run.")
@click.option("--hardware-compatible", is_flag=True, help="Engines for any Ampere-or-newer GPU (a little slower).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=None, help="Builder optimization level (default 3).")
@click.option("--dla-core", type=click.IntRange(min=0), default=None, help="Jetson: build for this DLA core.")
@json_option
@handle_errors
def build(
    bundle: Path | None,
    precision: str | None,
    profiles: tuple[str, ...],
    workspace: int | None,
    out: Path | None,
    force: bool,
    version_compatible: bool,
    hardware_compatible: bool,
    opt_level: int | None,
    dla_core: int | None,
    as_json: bool,
) -> None:
    """Build (or find in the cache) the TensorRT engines of BUNDLE (default: the built-in model) for this GPU."""
    from edgeclip.bundle import Bundle
    from edgeclip.engines.build import BuildOptions, MiB, build_engines
    from edgeclip.engines.profiles import parse_profiles
    from edgeclip.runtime import builtin_bundle_path

    opened = Bundle.open(bundle if bundle is not None else builtin_bundle_path())
    options = BuildOptions(
        profiles=parse_profiles(profiles, context_length=opened.manifest.contract.text.context_length),
        workspace_bytes=None if workspace is None else workspace * MiB,
        optimization_level=opt_level,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        dla_core=dla_core,
    )
    log = (lambda line: click.echo(line, err=True)) if not as_json else (lambda line: None)
    engines = build_engines(opened, precision=precision, root=out, options=options, force=force, log=log)
    if as_json:
        click.echo(json.dumps({"bundle": str(opened.path), "engines": [e.to_dict() for e in engines]}))
        return
    for e in engines:
        what = f"built in {e.seconds:.1f} s" if e.built else "already in the cache"
        click.echo(f"{e.tower} ({e.precision}, profiles {e.key.profiles}): {e.path} ({e.bytes / MiB:.1f} MiB), {what}")
