"""The entry point: every command registered, and lstmgen's error conventions (one line, exit 2; 1 for a
machine failure; 130 on Ctrl-C, 143 on SIGTERM; a closed pipe ends quietly)."""

from __future__ import annotations

import sys
from typing import Any

import typer

try:  # typer ≥ 0.20 vendors click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the typer release
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from ..errors import LstmgenError
from ..signals import Terminated
from .app import app as commands
from .output import reopen_closed_streams, silence_stdout

# Each command module registers its commands, in the order `lstmgen --help` lists them.
# isort: off
from . import tokenize, train, sample, evaluate, models, inspect, export  # noqa: E402, F401
# isort: on

__all__ = ["app", "main"]


def _readable(group: Any) -> Any:
    """Arguments shown as people read them: `CORPUS...`, without the type (`<list[Path]>`) Typer appends."""
    for command in group.commands.values():
        for param in command.params:
            if param.param_type_name == "argument":
                param.display_type_rich = lambda ctx: None
                param._usage_display_name = lambda param=param: _usage_name(param)
    return group


def _usage_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return name if param.required else f"[{name}]"


#: The command line as a Click group (Typer builds it from the registered commands).
app = _readable(typer.main.get_command(commands))


def _usage_hint(error: Any) -> str:
    """The fix for a likely slip (`lstmgen sample corpus.txt`), else where the usage is explained."""
    if error.ctx is None:
        return ""
    if error.ctx.info_name == "sample" and "unexpected extra argument" in error.format_message():
        return "; sample takes no file: choose the model with `lstmgen sample -m MODEL` and the text to continue with --prompt or --prompt-file"
    return f" (see `{error.ctx.command_path} --help`)"


def _error(message: str, code: int) -> None:
    try:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    _exit_quietly(code)


def _exit_quietly(code: int) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        silence_stdout()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with lstmgen's error conventions (one line, exit 2; 1 for a machine failure; 130 on Ctrl-C)."""
    from ..fsutil import MACHINE_ERRNOS, reset_inputs

    reopen_closed_streams()
    reset_inputs()
    try:
        code = app(args=argv, standalone_mode=False, prog_name="lstmgen")
        if isinstance(code, int) and code:
            _exit_quietly(code)
    except typer.Exit as done:
        _exit_quietly(done.exit_code)
    except typer.Abort:
        _error("interrupted", 130)
    except click_exceptions.UsageError as error:
        _error(" ".join(error.format_message().split()) + _usage_hint(error), 2)
    except click_exceptions.ClickException as error:
        _error(" ".join(error.format_message().split()), 2)
    except LstmgenError as error:
        _error(error.for_command_line(), error.exit_code)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except Terminated:
        _error("terminated", 143)
    except BrokenPipeError:
        _exit_quietly(0)
    except SystemExit:
        # Click turns a broken pipe anywhere inside a command (`lstmgen --help | head -1`) into sys.exit(1)
        # after wrapping the streams in PacifyFlushWrapper: end quietly with 0, as _write_stdout does.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            silence_stdout()
            _exit_quietly(0)
        raise
    except MemoryError:
        _error("out of memory; use a smaller model, --batch-size or input", 1)
    except OSError as error:
        # An OS error no check turned into a message: one line all the same. A full disk (or a file-size
        # limit) hit by a write that is not one of the atomic writes (stdout to a file) fails the machine: exit 1.
        where = error.filename or "the output"
        if error.errno in MACHINE_ERRNOS:
            _error(f"could not write {where}: {error.strerror}; free disk space or choose another location", 1)
        _error(f"{where}: {error.strerror or error}", 2)
    except RuntimeError as error:
        # PyTorch reports a failed allocation as a RuntimeError (torch.cuda.OutOfMemoryError is one too).
        text = str(error)
        if "out of memory" not in text.lower() and "can't allocate memory" not in text:
            raise
        _error("out of memory; use a smaller model, --batch-size, --num-samples or input", 1)
    _exit_quietly(0)
