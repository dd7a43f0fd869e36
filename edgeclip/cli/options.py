"""Options shared by the runtime commands, as reusable click decorators, and the one place errors become exit 1."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from edgeclip.bundle import PRECISIONS
from edgeclip.errors import EdgeClipError
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
    type=click.Choice(PRECISIONS),
    default=None,
    help="Graph precision to run (default: the best the bundle has for the backend).",
)
batch_option = click.option(
    "--batch", type=click.IntRange(min=1), default=None, metavar="N", help="Images or texts per backend call."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output file.")


def model_options(f: F) -> F:
    """--bundle, --backend, --precision."""
    return bundle_option(backend_option(precision_option(f)))


def load_model(bundle: Path | None, backend: str, precision: str | None) -> Model:
    from edgeclip.runtime import load

    return load(bundle, backend=backend, precision=precision)


def handle_errors(f: F) -> F:
    """Turn an EdgeClipError (or an OSError: disk full, permission denied) into its message on stderr and exit
    status 1, without a traceback; warnings become one line."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return f(*args, **kwargs)
            except (EdgeClipError, OSError) as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)

    return wrapper  # type: ignore[return-value]


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
        click.echo(f"error: skipped image {index + 1} ({images[index]}): {why}", err=True)
