"""Crash-safe file writing: every file lstmgen writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import LstmgenError


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable_directory(path: Path, what: str = "output") -> None:
    """Fail early, before hours of work, when `path`'s directory cannot take a new file."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.exists():
        raise LstmgenError(f"cannot write {what} {path}: directory {directory} does not exist; create it first")
    if not directory.is_dir():
        raise LstmgenError(f"cannot write {what} {path}: {directory} is not a directory")
    if path.is_dir():
        raise LstmgenError(f"cannot write {what} {path}: it is a directory; give a file name")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".lstmgen-probe-"):
            pass
    except OSError as error:
        raise LstmgenError(
            f"cannot write {what} in {directory}: {error.strerror or error}; choose a writable directory"
        ) from None


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash, a full disk or Ctrl-C at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise LstmgenError(f"cannot write {path}: {error.strerror or error}; choose a writable location") from None
    tmp_path = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(error, OSError):
            raise LstmgenError(
                f"could not write {path}: {error.strerror or error}; free disk space or choose another location "
                "(any previous version of the file is unchanged)"
            ) from None
        raise
    _fsync_directory(directory)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
