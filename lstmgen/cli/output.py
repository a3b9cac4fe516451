"""What the command line shows: data on stdout, everything else (logs, progress, tables for people) on stderr."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import typer

from ..errors import LstmgenError

#: Standard streams that were closed when lstmgen started (`<&-`, `>&-`, `2>&-`); they now lead to /dev/null.
CLOSED_STREAMS: set[str] = set()


def write_stdout(text: str) -> None:
    """Write data to stdout; when the reader has gone (`| head`), stop quietly."""
    if "stdout" in CLOSED_STREAMS:
        raise LstmgenError(
            "standard output is closed, so there is nowhere to write the results; redirect it to a file or a pipe"
        )
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        silence_stdout()
        raise typer.Exit(0) from None


def silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def reopen_closed_streams() -> None:
    """Give a closed standard stream /dev/null, so that no file lstmgen opens can take its descriptor
    (a bundle opened as descriptor 1 would receive what `print` writes)."""
    CLOSED_STREAMS.clear()
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        except OSError:
            continue
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        CLOSED_STREAMS.add(name)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False, encoding="utf-8", errors="replace"))


class _LogFormatter(logging.Formatter):
    """Plain messages for progress; a `warning:` prefix where the user should look."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def setup_logging(quiet: bool = False) -> None:
    """The core's `lstmgen` logger goes to stderr: progress and notes, or only errors with -q."""
    logger = logging.getLogger("lstmgen")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.INFO)


def info(message: str) -> None:
    logging.getLogger("lstmgen").info(message)


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def stdout_color_console() -> Any:
    """A rich console for coloured output on stdout, or None where colour is off (NO_COLOR, not a terminal)."""
    if os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal and console.color_system is not None else None


def table_console(data_on_stdout: bool) -> Any:
    """Where a table for people goes: the terminal's stdout, else stderr (stdout then carries data or nothing)."""
    from rich.console import Console

    if sys.stdout.isatty() and not data_on_stdout:
        return Console(no_color=bool(os.environ.get("NO_COLOR")))
    return stderr_console()


class ByteProgress:
    """A byte-progress bar on a terminal (nothing in logs): `update(done, total)`, then `close()`."""

    def __init__(self, description: str) -> None:
        self.progress: Any = None
        if not sys.stderr.isatty():
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self.progress = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=stderr_console(),
            transient=True,
        )
        self.task = self.progress.add_task(description, total=None)
        self.progress.start()

    def update(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def human_count(value: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def human_bytes(size: int) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
