"""edgeclip.fileio: all-or-nothing writes of files and directories, and hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeclip import fileio


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_sha256_of_one_file_and_of_shards(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one read chunk
    b.write_bytes(b"second")
    assert fileio.sha256_file(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert fileio.sha256_files(a, b) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()


def test_public_import_paths_stay() -> None:
    from edgeclip.bundle import sha256_file
    from edgeclip.outputs import atomic_file

    assert sha256_file is fileio.sha256_file and atomic_file is fileio.atomic_write


@pytest.mark.parametrize("how", ["write", "path"])
def test_a_file_is_replaced_whole_or_not_at_all(tmp_path: Path, how: str) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write(data: bytes, fail: BaseException | None = None) -> None:
        if how == "write":
            with fileio.atomic_write(target) as f:
                f.write(data)
                if fail is not None:
                    raise fail
        else:
            with fileio.atomic_path(target) as tmp:
                assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.suffix == ".bin"
                tmp.write_bytes(data)
                if fail is not None:
                    raise fail

    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            write(b"half", error)
        assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    target.unlink()
    write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_full_disk_at_fsync_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"), fileio.atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "d"
    with fileio.atomic_directory(target) as tmp:
        (tmp / "f").write_text("one")
    assert (target / "f").read_text() == "one" and os.listdir(tmp_path) == ["d"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~_umask()
    with pytest.raises(KeyboardInterrupt), fileio.atomic_directory(target) as tmp:
        (tmp / "f").write_text("two")
        raise KeyboardInterrupt
    assert (target / "f").read_text() == "one" and os.listdir(tmp_path) == ["d"]

    def refuse() -> None:
        raise RuntimeError("something appeared there")

    with pytest.raises(RuntimeError), fileio.atomic_directory(target, before_replace=refuse) as tmp:
        (tmp / "f").write_text("three")
    assert (target / "f").read_text() == "one" and os.listdir(tmp_path) == ["d"]
    with fileio.atomic_directory(target) as tmp:
        (tmp / "g").write_text("four")
    assert os.listdir(target) == ["g"] and os.listdir(tmp_path) == ["d"]


def test_text_name_escapes_bytes_that_are_not_utf8() -> None:
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Latin-1 file name, as Python holds it (a lone surrogate)
    assert fileio.text_name(latin1) == "caf\\xe9.png" and not fileio.is_text_name(latin1)
    assert fileio.text_name("ü 日本.png") == "ü 日本.png" and fileio.is_text_name(Path("ü 日本.png"))


def test_check_writable_file_refuses_before_any_work(tmp_path: Path) -> None:
    from edgeclip.errors import InputError

    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(InputError, match=r"old.txt already exists; pass --force"):
        fileio.check_writable_file(tmp_path / "old.txt")
    assert fileio.check_writable_file(tmp_path / "old.txt", force=True) == tmp_path / "old.txt"
    with pytest.raises(InputError, match="it is a directory"):
        fileio.check_writable_file(tmp_path, force=True)
    with pytest.raises(InputError, match="does not exist; create it first"):
        fileio.check_writable_file(tmp_path / "missing" / "x.txt")
    assert (tmp_path / "old.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_check_writable_file_refuses_a_read_only_folder(tmp_path: Path) -> None:
    from edgeclip.errors import InputError

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match="is not writable"):
            fileio.check_writable_file(folder / "x.npy")
    finally:
        folder.chmod(0o755)


def test_a_failed_atomic_write_names_the_target_not_the_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "out.npy"
    with (
        pytest.raises(OSError, match=r"cannot write .*missing/out.npy: No such file") as caught,
        fileio.atomic_write(target),
    ):
        pass
    assert ".partial" not in str(caught.value)
