"""The one exception type for problems a user can fix."""

from __future__ import annotations


class LstmgenError(Exception):
    """A failure the user caused and can fix: bad input, bad option, wrong file.

    The message is one line that names the problem and says what to do. The CLI prints it
    to stderr and exits with code 2; the Python API lets it propagate.
    """

    #: The CLI's exit code for this error.
    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class MachineError(LstmgenError):
    """A failure of the machine rather than of the input, such as a full disk: one line, exit code 1."""

    exit_code = 1


class TrainingInterrupted(Exception):
    """Raised by the trainer after a graceful stop on SIGINT/SIGTERM (state already saved)."""

    def __init__(self, signal_number: int, message: str) -> None:
        super().__init__(message)
        self.signal_number = signal_number
