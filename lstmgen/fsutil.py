"""Every file lstmgen writes goes through here: one guard decides what an output may replace, and
atomic writes make each file appear whole or not at all.

The guard's promise (docs/security.md): an output never replaces an input of the same command, a
file that is not a regular file (a FIFO, a device, a directory, a socket), a read-only file or one
the user cannot write, or a file of another kind than the one written (a bundle over a text file,
a page over a bundle). Commands call `check_output` (or `check_output_directory`) for every output
before any work, so that a refusal costs nothing; `atomic_writer` applies the same checks again at
the moment of writing, so that no path around them exists. Reads of user-named files that have no
business being large (`read_regular_file`) are bounded the same way: regular files only, a size
limit, never a wait on a FIFO.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import LstmgenError, MachineError

#: Failures of the machine rather than of the path the user gave: exit code 1, not 2.
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.ENOMEM})
#: Bytes a temporary name adds to the destination's name: "." + name + "." + 8 random + ".tmp".
TEMPORARY_NAME_EXTRA = 14


# -- what an output is --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A kind of file lstmgen writes, recognised by how an existing file begins."""

    label: str
    prefixes: tuple[bytes, ...]

    def matches(self, head: bytes) -> bool:
        return describe_content(head) == self.label


BUNDLE = Kind("model bundle", (b"PK\x03\x04", b"PK\x05\x06"))
HTML = Kind("HTML page", (b"<!doctype html", b"<html"))  # compared lower-cased, after a BOM and white space
PNG = Kind("PNG image", (b"\x89PNG\r\n\x1a\n",))
#: Protobuf files have no magic number: ONNX and SentencePiece models are recognised by their first fields (below).
ONNX = Kind("ONNX model", ())
SENTENCEPIECE = Kind("SentencePiece model", ())
#: ModelProto field keys that may follow an ONNX file's ir_version (field 1): fields 2 to 8, 14 and 20, length-delimited or varint.
_ONNX_SECOND_KEYS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2})


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with ir_version (field 1, a small varint) and then another of its fields."""
    return len(head) >= 3 and head[0] == 0x08 and 0 < head[1] < 0x80 and head[2] in _ONNX_SECOND_KEYS


def _looks_like_sentencepiece(head: bytes) -> bool:
    """A SentencePiece ModelProto starts with its first piece (field 1): a message of length L whose first field is
    the piece text (length n < L), followed by the piece's score or type, or by the next top-level field."""

    def varint(position: int) -> tuple[int, int]:
        value, shift = 0, 0
        while position < len(head) and shift < 35:
            byte = head[position]
            value |= (byte & 0x7F) << shift
            position += 1
            if not byte & 0x80:
                return value, position
            shift += 7
        return -1, position

    if len(head) < 4 or head[0] != 0x0A:
        return False
    length, position = varint(1)
    if length < 2 or position >= len(head) or head[position] != 0x0A:
        return False
    text_length, position = varint(position + 1)
    if not 0 <= text_length <= length - 2:
        return False
    after = position + text_length
    return after >= len(head) or head[after] in (0x15, 0x18, 0x0A, 0x12)


def describe_content(head: bytes) -> str:
    """What the first bytes of a file say it is: one of the kinds above, a text file or a binary file."""
    if head.startswith(BUNDLE.prefixes):
        return BUNDLE.label
    if head.startswith(PNG.prefixes):
        return PNG.label
    if _looks_like_onnx(head):
        return ONNX.label
    if _looks_like_sentencepiece(head):
        return SENTENCEPIECE.label
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(HTML.prefixes):
        return HTML.label
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start <= len(head) - 4:
            return "binary file"
    return "binary file" if b"\x00" in head else "text file"


def _a(noun: str) -> str:
    """The noun with its indefinite article ("an HTML page", "a FIFO")."""
    return f"an {noun}" if noun.startswith(("HTML", "ONNX", "a", "e", "i", "o", "u")) else f"a {noun}"


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


# -- the inputs of the running command ----------------------------------------------------------------

#: (device, inode) of every file the running command reads, with what it is to the command.
_INPUTS: dict[tuple[int, int], str] = {}


def reset_inputs() -> None:
    """Forget the inputs of an earlier command (the CLI calls this as each command starts)."""
    _INPUTS.clear()


def declare_input(path: Path | str | None, role: str) -> None:
    """Remember a file (or a directory and the files in it) the command reads: no output may replace it."""
    if path is None:
        return
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return  # it does not exist (yet): the command's own check of the input says so
    _INPUTS[(info.st_dev, info.st_ino)] = role
    if stat.S_ISDIR(info.st_mode):
        with contextlib.suppress(OSError):
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    member = entry.stat()
                    _INPUTS[(member.st_dev, member.st_ino)] = f"{role} (its {entry.name})"


@contextlib.contextmanager
def inputs_of_this_call() -> Iterator[None]:
    """Inputs declared inside the block are forgotten after it: a Python program runs many calls in one process."""
    saved = dict(_INPUTS)
    try:
        yield
    finally:
        _INPUTS.clear()
        _INPUTS.update(saved)


def _input_role(info: os.stat_result) -> str | None:
    return _INPUTS.get((info.st_dev, info.st_ino))


# -- errors on paths ----------------------------------------------------------------------------------


def path_error(path: Path | str, error: OSError, doing: str) -> LstmgenError:
    """One line for an OS error on a user's path: exit 2, or exit 1 when the machine failed (full disk)."""
    reason = error.strerror or str(error)
    if error.errno in MACHINE_ERRNOS:
        return MachineError(f"could not {doing} {path}: {reason}; free disk space or choose another location")
    hints = {
        errno.ENAMETOOLONG: "choose a shorter name",
        errno.EACCES: "check the permissions of the file and the directories on its path",
        errno.EPERM: "check the permissions of the file and the directories on its path",
        errno.ENOTDIR: "a part of the path is a file, not a directory",
        errno.ELOOP: "the path has a loop of symbolic links",
        errno.EROFS: "the file system is read-only; choose another location",
    }
    hint = hints.get(error.errno or 0, "check the path")
    return LstmgenError(f"cannot {doing} {path}: {reason}; {hint}")


def stat_or_none(path: Path | str, doing: str = "read") -> os.stat_result | None:
    """os.stat, with None for a path that does not exist and one line for any other OS error."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError):  # an embedded NUL byte
            raise LstmgenError(f"cannot {doing} {path!r}: the path holds a NUL byte") from None
        if error.errno == errno.ENOTDIR:
            return None
        raise path_error(path, error, doing) from None


# -- checking outputs before any work -----------------------------------------------------------------


def _target(path: Path, what: str) -> Path:
    """The file a write to `path` lands in: `path`, or the file its symbolic link points to."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return path
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError):
            raise LstmgenError(f"cannot write {what} {path!r}: the path holds a NUL byte") from None
        if error.errno == errno.ENOTDIR:
            raise LstmgenError(
                f"cannot write {what} {path}: a part of its path is not a directory; choose another location"
            ) from None
        raise path_error(path, error, f"write {what}") from None
    if not stat.S_ISLNK(info.st_mode):
        return path
    target = Path(os.path.realpath(path))
    try:
        os.stat(path)
    except FileNotFoundError:
        raise LstmgenError(
            f"cannot write {what} {path}: it is a symbolic link to {target}, which does not exist; "
            "remove the link or choose another path"
        ) from None
    except OSError as error:
        raise path_error(path, error, f"write {what}") from None
    return target


def _check_existing(path: Path, info: os.stat_result, kind: Kind | None, what: str, option: str) -> None:
    """Refuse to replace `path` (which exists) unless it is a writable regular file of `kind` that the command does not read."""
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        raise LstmgenError(f"cannot write {what} {path}: it is a directory; give a file name with {option}")
    if not stat.S_ISREG(mode):
        raise LstmgenError(
            f"cannot write {what} {path}: it is {_a(_file_type(mode))}, not a regular file, and lstmgen replaces only "
            f"regular files; choose another {option}"
        )
    role = _input_role(info)
    if role is not None:
        raise LstmgenError(f"{option} {path} is {role}, an input of this command; write the {what} to another path")
    if not mode & 0o222:
        raise LstmgenError(
            f"cannot write {what} {path}: it is read-only and lstmgen does not replace read-only files; "
            f"make it writable (chmod u+w {path}) or choose another {option}"
        )
    if not os.access(path, os.W_OK):
        raise LstmgenError(f"cannot write {what} {path}: you may not write to it; choose another {option}")
    if kind is None or info.st_size == 0:
        return
    try:
        head = read_head(path, 64)
    except OSError as error:
        raise LstmgenError(
            f"cannot write {what} {path}: cannot read it to see what it is ({error.strerror or error}); "
            f"choose another {option}"
        ) from None
    found = describe_content(head)
    if found != kind.label:
        raise LstmgenError(
            f"{path} is {_a(found)}, not {_a(kind.label)}; lstmgen will not replace it with one: choose another {option}"
        )


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a file, never waiting on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        return os.read(fd, size)
    finally:
        os.close(fd)


def _check_directory(path: Path, what: str, option: str) -> None:
    """The directory that will hold `path` exists, is writable, and takes a name as long as `path`'s (with its temporary)."""
    directory = path.parent if str(path.parent) else Path(".")
    info = stat_or_none(directory, f"write {what} in")
    if info is None:
        raise LstmgenError(f"cannot write {what} {path}: directory {directory} does not exist; create it first")
    if not stat.S_ISDIR(info.st_mode):
        raise LstmgenError(f"cannot write {what} {path}: {directory} is not a directory")
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    length = len(os.fsencode(path.name))
    if length + TEMPORARY_NAME_EXTRA > limit:
        raise LstmgenError(
            f"cannot write {what}: its file name is too long ({length} bytes; at most {limit - TEMPORARY_NAME_EXTRA} "
            f"here, so that a temporary file can sit beside it); choose a shorter {option}"
        )
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".lstmgen-probe-"):
            pass
    except OSError as error:
        if error.errno in MACHINE_ERRNOS:
            raise path_error(directory, error, f"write {what} in") from None
        raise LstmgenError(
            f"cannot write {what} in {directory}: {error.strerror or error}; choose a writable directory"
        ) from None


def check_output(path: Path | str, kind: Kind | None, what: str = "output", option: str = "-o") -> None:
    """Fail before any work when writing `path` would harm a file or cannot succeed (see the module docstring)."""
    target = _target(Path(path), what)
    info = stat_or_none(target, f"write {what}")
    if info is not None:
        _check_existing(target, info, kind, what, option)
    _check_directory(target, what, option)


def check_output_directory(
    path: Path | str, what: str, option: str = "-o", members: tuple[str, ...] = (), marker: str | None = None
) -> None:
    """The same for a directory lstmgen fills with `members`: absent, or a writable directory whose members may be replaced.

    With a `marker`, an existing directory must be empty or hold the marker (so that it is one lstmgen made).
    """
    path = _target(Path(path), what)
    info = stat_or_none(path, f"write {what}")
    if info is None:
        _check_directory(path, what, option)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise LstmgenError(
            f"cannot write {what} {path}: it exists and is not a directory; move it or choose another {option}"
        )
    if _input_role(info) is not None:
        raise LstmgenError(
            f"{option} {path} is {_input_role(info)}, an input of this command; write the {what} to another path"
        )
    if not info.st_mode & 0o222 or not os.access(path, os.W_OK | os.X_OK):
        raise LstmgenError(
            f"cannot write {what} in {path}: the directory is read-only for you; choose another {option}"
        )
    if marker is not None:
        try:
            names = os.listdir(path)
        except OSError as error:
            raise path_error(path, error, f"write {what} in") from None
        if names and marker not in names:
            raise LstmgenError(
                f"{path} is a directory that holds other files (no {marker}); lstmgen writes {_a(what)} only into a new "
                f"or empty directory or one it made: choose another {option}"
            )
    for name in members:
        member = Path(path, name)
        member_info = stat_or_none(member, f"write {what}")
        if member_info is not None:
            _check_existing(member, member_info, None, f"{what} file", option)


# -- reading user-named files within bounds -------------------------------------------------------------


def read_regular_file(path: Path | str, limit: int, what: str, hint: str = "pass a regular file") -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a FIFO or device is refused, never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LstmgenError(f"{what} {path} does not exist; check the path") from None
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError):
            raise LstmgenError(f"cannot read {what} {path!r}: the path holds a NUL byte") from None
        raise path_error(path, error, f"read {what}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise LstmgenError(f"{what} {path} is a directory; {hint}")
        if not stat.S_ISREG(info.st_mode):
            raise LstmgenError(f"{what} {path} is {_a(_file_type(info.st_mode))}, not a regular file; {hint}")
        if info.st_size > limit:
            raise LstmgenError(f"{what} {path} is too large ({info.st_size:,} bytes; at most {limit:,}); {hint}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(info.st_size + 1)
    except OSError as error:
        raise path_error(path, error, f"read {what}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise LstmgenError(f"{what} {path} grew past {limit:,} bytes while it was read; {hint}")
    return data


# -- writing -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_writer(path: Path, kind: Kind | None = None, what: str = "file") -> Iterator[BinaryIO]:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`.

    The guard's checks run first (a symbolic link is written through to its file). A crash, a full
    disk or Ctrl-C at any moment leaves either the old file or the new one; a replaced file keeps its
    permissions (and, when root writes it, its owner).
    """
    path = _target(Path(path), what)
    previous = stat_or_none(path, f"write {what}")
    if previous is not None:
        _check_existing(path, previous, kind, what, "path")
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        if error.errno in MACHINE_ERRNOS:
            raise path_error(path, error, "write") from None
        raise LstmgenError(f"cannot write {path}: {error.strerror or error}; choose a writable location") from None
    tmp_path = Path(tmp_name)
    try:
        _copy_permissions(fd, previous)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(error, OSError):
            detail = f"{error.strerror or error}; free disk space or choose another location (any previous version of the file is unchanged)"
            cls = MachineError if error.errno in MACHINE_ERRNOS else LstmgenError
            raise cls(f"could not write {path}: {detail}") from None
        raise
    _fsync_directory(directory)


def _copy_permissions(fd: int, previous: os.stat_result | None) -> None:
    if previous is None:
        os.fchmod(fd, 0o666 & ~_umask())
        return
    if os.geteuid() == 0:  # before fchmod: changing the owner clears set-id bits
        with contextlib.suppress(OSError):
            os.fchown(fd, previous.st_uid, previous.st_gid)
    os.fchmod(fd, stat.S_IMODE(previous.st_mode))


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes, kind: Kind | None = None, what: str = "file") -> None:
    with atomic_writer(path, kind, what) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, kind: Kind | None = None, what: str = "file") -> None:
    atomic_write_bytes(path, text.encode("utf-8"), kind, what)
