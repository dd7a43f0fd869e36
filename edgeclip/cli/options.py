"""Options shared by the runtime commands, as reusable click decorators, and the one place errors become exit 1."""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgeclip.bundle import PRECISIONS
from edgeclip.errors import EdgeClipError, InputError, MissingExtraError
from edgeclip.fileio import silence_closed_pipe, text_name
from edgeclip.runtime.backends import BACKEND_CHOICES

if TYPE_CHECKING:
    from tqdm import tqdm

    from edgeclip.runtime import Model

F = TypeVar("F", bound=Callable[..., Any])

PROGRESS_MIN_ITEMS = 64  # below this a run takes seconds: a bar would only flicker

bundle_option = click.option(
    "--bundle",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Bundle directory made by 'edgeclip export' (default: the built-in model).",
)
backend_option = click.option(
    "--backend",
    type=click.Choice(BACKEND_CHOICES),
    default="auto",
    show_default=True,
    help="Runtime backend; 'auto' picks the fastest available ('edgeclip info' lists them).",
)
precision_option = click.option(
    "--precision",
    default=None,
    metavar="|".join(PRECISIONS),
    help="Graph precision to run, for both towers or per tower ('image=int8,text=fp16'); default: the fastest the "
    "bundle has for the backend that passed its accuracy gate ('edgeclip info' shows which).",
)
PREPROCESS_MODES = ("exact", "fast")  # edgeclip.preprocess.MODES, named here so that --help imports no PIL
preprocess_option = click.option(
    "--preprocess",
    type=click.Choice(PREPROCESS_MODES),
    default="exact",
    show_default=True,
    help="Image preprocessing: 'exact' is the reference pipeline; 'fast' decodes large JPEGs at reduced scale and "
    "box-reduces large frames before the bicubic resize (several times cheaper on camera frames, close to exact "
    "but not equal).",
)
batch_option = click.option(
    "--batch", type=click.IntRange(min=1), default=None, metavar="N", help="Images or texts per backend call."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output file.")


def model_options(f: F) -> F:
    """--bundle, --backend, --precision, --preprocess."""
    return bundle_option(backend_option(precision_option(preprocess_option(f))))


def load_model(bundle: Path | None, backend: str, precision: str | None, *, preprocess: str = "exact") -> Model:
    from edgeclip.runtime import load

    return load(bundle, backend=backend, precision=precision, preprocess=preprocess)


# What each optional module is called in messages, and the extra of pyproject.toml that installs it.
_MODULE_NAMES = {"torch": "PyTorch", "onnx": "onnx", "onnxscript": "onnxscript", "safetensors": "safetensors"}
EXPORT_MODULES = ("torch", "onnx", "onnxscript", "safetensors")  # export: load a checkpoint, write and check ONNX
TRAIN_MODULES = ("torch", "safetensors")
# pyproject.toml pins torch in [export]; naming the pin in the command keeps pip from picking another build.
TORCH_REQUIREMENT = "torch==2.13.0"


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The top-level modules of `modules` that this installation cannot import (looked up, not imported)."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a parent that is not a package; a module left half-imported
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(command: str, *, modules: Sequence[str] = EXPORT_MODULES, extra: str = "export") -> None:
    """Refuse to run `edgeclip <command>` where `modules` (installed by the extra `extra`) are missing, with the one
    pip command that installs them. Call it first in a command, before any import of those modules."""
    missing = missing_modules(modules)
    if not missing:
        return
    raise MissingExtraError(
        f"'edgeclip {command}' needs {_names(modules)} (the [{extra}] extra), and this installation lacks "
        f"{_names(missing)}: {install_command(extra)}"
    )


def export_wanted(export: bool | None, command: str) -> bool:
    """An --export/--no-export flag: None exports where the [export] extra is installed (else uses what is shipped);
    True without the extra is refused by `require_extra`."""
    if export is None:
        return not missing_modules(EXPORT_MODULES)
    if export:
        require_extra(f"{command} --export")
    return export


def install_command(extra: str) -> str:
    """The pip command that adds `extra` to this installation, keeping the ONNX Runtime build it has."""
    runtime = "gpu" if _installed("onnxruntime-gpu") else "cpu"  # [cpu] beside onnxruntime-gpu would break CUDA
    torch = f"{TORCH_REQUIREMENT} " if extra == "export" else ""
    return f"pip install {torch}'edgeclip[{runtime},{extra}]'"


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _names(modules: Sequence[str]) -> str:
    names = [_MODULE_NAMES.get(m, m) for m in modules]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def handle_errors(f: F) -> F:
    """Turn an EdgeClipError (or an OSError: disk full, permission denied) into its message on stderr and exit
    status 1, without a traceback; warnings become one line. Output piped into a reader that stops early
    (`edgeclip classify ... | head`) ends quietly, as `edgeclip stream` does."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return f(*args, **kwargs)
            except BrokenPipeError:
                silence_closed_pipe(sys.stdout)
                sys.exit(0)
            except (EdgeClipError, OSError) as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)

    return wrapper  # type: ignore[return-value]


def images_from_option(f: F) -> F:
    """`--images-from FILE|-`: image paths, one per line (from standard input with '-'), after the IMAGE
    arguments; for lists longer than a command line (`find ... | edgeclip embed --images-from - --out v.npy`)."""

    @functools.wraps(f)
    def wrapper(*args: Any, images_from: str | None = None, **kwargs: Any) -> Any:
        if images_from is not None:
            kwargs["images"] = (*kwargs.get("images", ()), *read_image_list(images_from))
        return f(*args, **kwargs)

    option = click.option(
        "--images-from",
        "images_from",
        type=click.Path(allow_dash=True, dir_okay=False),
        default=None,
        metavar="FILE|-",
        help="Also read image paths from FILE, one per line ('-': standard input).",
    )
    return option(wrapper)  # type: ignore[return-value]


def read_image_list(source: str) -> list[str]:
    """The paths listed in `source` ('-': standard input), one per line; names are bytes, kept as the OS gives
    them (a name that is not UTF-8 still opens). Blank lines at the end are ignored, blank lines inside refused."""
    import os

    from edgeclip.zeroshot import one_per_line

    what = "standard input" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError(f"--images-from {what} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read --images-from {what}: {exc.strerror or exc}") from None
    # split on newlines only: a file name may hold any other byte
    names = [os.fsdecode(line.removesuffix(b"\r")) for line in data.split(b"\n")]
    lines = one_per_line(names, f"--images-from {what}", "image path")
    if not lines:
        raise InputError(f"--images-from {what} lists no images; write one path per line")
    return lines


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    click.echo(f"warning: {message}", err=True)


@contextmanager
def progress(total: int, unit: str) -> Iterator[tqdm]:
    """A progress bar on stderr, shown only on a terminal and for inputs long enough to need one."""
    from tqdm import tqdm

    disable = total < PROGRESS_MIN_ITEMS or not sys.stderr.isatty()
    with tqdm(total=total, unit=unit, file=sys.stderr, disable=disable, leave=False) as bar:
        yield bar


def report_unreadable(images: tuple[str, ...] | list[str], failed: tuple[tuple[int, str], ...]) -> None:
    """Name each image that could not be read, on stderr."""
    for index, why in failed:
        click.echo(f"error: skipped image {index + 1} ({text_name(images[index])}): {why}", err=True)
