"""The exceptions a user sees, and how a message names an option for the reader at hand.

A message names an option through `Option.ref` (lstmgen.options), a marker that reads as the
keyword argument for a Python caller (`temperature must be …`) and as the flag on the command
line (`--temp must be …`): `str(error)` is the Python form, `error.for_command_line()` the other.
"""

from __future__ import annotations

import re

#: An option named in a message: U+E000 KEYWORD U+E001 FLAG U+E000 (private-use characters, written by Option.ref).
_OPTION_MARK = re.compile("\ue000([^\ue000\ue001]*)\ue001([^\ue000\ue001]*)\ue000")


def option_mark(keyword: str, flag: str) -> str:
    """The marker for an option named in a message (see the module docstring)."""
    return f"\ue000{keyword}\ue001{flag}\ue000"


class LstmgenError(Exception):
    """A failure the user caused and can fix: bad input, bad option, wrong file.

    The message is one line that names the problem and says what to do. The CLI prints it
    to stderr and exits with code 2; the Python API lets it propagate.
    """

    #: The CLI's exit code for this error.
    exit_code = 2

    def __init__(self, message: str) -> None:
        self.marked = " ".join(str(message).split())
        super().__init__(_OPTION_MARK.sub(r"\1", self.marked))

    def for_command_line(self) -> str:
        """The message with every option named by its command-line flag."""
        return _OPTION_MARK.sub(r"\2", self.marked)


class MachineError(LstmgenError):
    """A failure of the machine rather than of the input, such as a full disk: one line, exit code 1."""

    exit_code = 1


class TrainingInterrupted(Exception):
    """Raised by the trainer after a graceful stop on SIGINT/SIGTERM (state already saved)."""

    def __init__(self, signal_number: int, message: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number
