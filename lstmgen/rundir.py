"""The run directory beside a bundle (`X.lstmgen.run/`): its layout and the lock that keeps two runs apart.

tokens/           the tokenized corpus (reused when the corpus and settings are unchanged)
checkpoint.ckpt   everything needed to continue exactly (lstmgen.checkpoint)
metrics.jsonl     one JSON object per logged training step and per validation
lock              held while a run writes here, so two runs cannot clobber each other
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

from .checkpoint import run_directory
from .errors import LstmgenError
from .fsutil import path_error

__all__ = ["RUN_FILES", "RunLock", "run_directory"]

#: The files a run writes in its run directory (the guard checks each before a run starts).
RUN_FILES = (
    "checkpoint.ckpt",
    "metrics.jsonl",
    "lock",
    "tokens/tokens.bin",
    "tokens/tokens.json",
    "tokens/tokenizer.model",
)


class RunLock:
    """An exclusive lock on a run directory, taken before anything in it is touched.

    The OS releases it if the process dies, so a stale lock never blocks a new run. The CLI takes it
    before it tokenizes into the directory and the trainer joins it (`join=True`: the lock this
    process already holds); the last release removes the lock file, and the directory as well when
    the lock created it and nothing else was put there (a refused run leaves no trace).
    """

    #: Locks this process holds: real path of the lock file -> (descriptor, holders, created the directory).
    _held: dict[str, tuple[int, int, bool]] = {}

    def __init__(self, directory: Path, join: bool = False) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "lock"
        self.join = join
        self.key = ""
        self.created = False  # whether this lock made the directory (a failed run may then remove it)

    def __enter__(self) -> RunLock:
        created = self._make_directory()
        self.key = os.path.realpath(self.path)
        held = RunLock._held.get(self.key)
        if held is not None and self.join:
            RunLock._held[self.key] = (held[0], held[1] + 1, held[2])
            self.created = held[2]
            return self
        try:
            fd = self._acquire()
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(self.directory)
            raise
        RunLock._held[self.key] = (fd, 1, created)
        self.created = created
        return self

    def __exit__(self, *exc: object) -> None:
        fd, holders, created = RunLock._held.pop(self.key)
        if holders > 1:
            RunLock._held[self.key] = (fd, holders - 1, created)
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: a run opening it meanwhile sees another file and tries again
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)  # only succeeds when empty

    def _make_directory(self) -> bool:
        try:
            os.mkdir(self.directory)
        except FileExistsError:
            return False
        except OSError as error:
            raise path_error(self.directory, error, "create the run directory") from None
        return True

    def _acquire(self) -> int:
        """Open and lock the lock file; try again when its holder removed it just as it was opened."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        for _ in range(100):
            fd = self._open(flags)
            opened = os.fstat(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise path_error(self.path, error, "lock") from None
                raise LstmgenError(
                    f"another `lstmgen train` is already writing {self.directory} ; wait for it to finish or choose another -o"
                ) from None
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except OSError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
            os.close(fd)
        raise LstmgenError(
            f"cannot lock {self.directory}: its lock file keeps changing; is another program removing it?"
        )

    def _open(self, flags: int) -> int:
        """The lock file, created if need be; a link, directory, FIFO or device in its place is refused, never waited on."""
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise LstmgenError(
                    f"{self.path} is not a regular file; remove it (lstmgen keeps the run's lock there)"
                ) from None
            raise path_error(self.path, error, "lock") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LstmgenError(f"{self.path} is not a regular file; remove it (lstmgen keeps the run's lock there)")
        return fd
