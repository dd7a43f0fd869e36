"""Writing files and directories all or nothing, and hashing them: the one place edgeclip does either.

Every write goes to a temporary name beside its target, is flushed to disk (fsync), and is then renamed over the
target, so a crash, a full disk or Ctrl-C leaves either the old file or directory or the new one, never a half.
New files and directories get the permissions any new one gets (the umask), not the private ones of `mkstemp`.
Torch-free and onnx-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

_CHUNK = 1 << 20  # graphs and checkpoints can be gigabytes: hash them a MiB at a time


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in chunks."""
    return sha256_files(path)


def sha256_files(*paths: str | os.PathLike[str]) -> str:
    """The hex sha256 of the files' bytes one after the other (the shards of one checkpoint)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def silence_closed_pipe(stream: IO[Any]) -> None:
    """Point a closed pipe's file descriptor (`edgeclip ... | head` has gone) at /dev/null, so that flushing the
    stream at exit raises nothing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def text_name(name: str | os.PathLike[str]) -> str:
    """A file name as valid UTF-8 text, for output files and JSON: the bytes of a name that are not UTF-8 (which
    Python keeps as lone surrogates, `os.fsdecode`) become `\\xNN` escapes, so 'caf\\xe9.png' names a Latin-1 file."""
    text = os.fspath(name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


def is_text_name(name: str | os.PathLike[str]) -> bool:
    """Whether a file name is valid UTF-8 (it can be stored as a string column or JSON as it is)."""
    return text_name(name) == os.fspath(name)


def check_writable_file(path: str | os.PathLike[str], *, force: bool = False) -> Path:
    """Refuse, before any work, a file to write that cannot or must not be written: its folder missing or not
    writable, a directory in its place, or a file there already (unless `force`: then it is replaced whole)."""
    from edgeclip.errors import InputError

    out = Path(path)
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {out}: the directory {parent} does not exist; create it first")
    if out.is_dir():
        raise InputError(f"cannot write {out}: it is a directory; give a file name")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {out}: the directory {parent} is not writable")
    if (out.exists() or out.is_symlink()) and not force:
        raise InputError(
            f"{out} already exists; pass --force to replace it (the old file is kept until the new one is complete)"
        )
    return out


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (safetensors, onnx, cv2). When the block
    ends the file written there is fsynced and renamed over `path`; on any exception it is removed."""
    target = Path(path)
    # The target's suffix last: writers that pick the format by the name (cv2.imwrite, PIL) still find it.
    tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{target.suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it the file
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A temporary binary file beside `path`, open for writing; on success it replaces `path`, on any exception it
    is removed."""
    target = Path(path)
    tmp = target.parent / f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.partial"
    # os.open with 0o666 lets the umask decide the permissions, as for any new file (mkstemp would force 0o600).
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:  # the message names the user's file, not the temporary one
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_directory(
    target: str | os.PathLike[str], *, before_replace: Callable[[], None] | None = None
) -> Iterator[Path]:
    """A fresh directory beside `target` to fill; when the block ends every file in it is fsynced, `before_replace`
    runs (a last check of the target), and the directory takes the place of `target`: an empty directory there is
    removed, an existing one renamed aside first, so at every moment the old or the new directory exists whole.
    On any exception (Ctrl-C included) the temporary directory is removed and `target` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    _chmod_as_new_folder(tmp)  # mkdtemp makes it 0o700: what we write is shared data, readable as any new folder
    try:
        yield tmp
        fsync_tree(tmp)
        if before_replace is not None:
            before_replace()
        replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_directory(new: Path, target: Path) -> None:
    """Rename the directory `new` to `target`, which may be absent, an empty directory, or a directory to replace."""
    # After a crash between the two renames of a replacement, both lie beside `target`: nothing is lost.
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(new, target)
        fsync_dir(target.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    old.rmdir()  # only the unique name is wanted: rename needs the destination absent (or an empty dir on POSIX)
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # put the old one back
        raise
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`: without it, a power cut after a rename can leave a renamed
    directory of empty files."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: a rename is durable once its directory is), where the platform can."""
    with contextlib.suppress(OSError):  # not every platform or file system can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def chmod_as_new_file(path: str | os.PathLike[str]) -> None:
    """Give the file at `path` the permissions a new file gets (the umask's), for writers that make private ones."""
    umask = os.umask(0)
    os.umask(umask)
    Path(path).chmod(0o666 & ~umask)


def _chmod_as_new_folder(path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o777 & ~umask)
