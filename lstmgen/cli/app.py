"""The Typer application every command module registers on, and its global options."""

from __future__ import annotations

import typer

from ..version import __version__
from .output import setup_logging, write_stdout

app = typer.Typer(
    name="lstmgen",
    help="Train an LSTM language model on your own text and generate from it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)

#: The -m option of sample, eval, inspect and info.
MODEL_HELP = "Bundle path or model name (default: $LSTMGEN_MODEL, else the built-in shakespeare)."


def _version_callback(value: bool) -> None:
    if value:
        write_stdout(f"lstmgen {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Print only errors on stderr: no progress, notes or warnings."
    ),
) -> None:
    setup_logging(quiet)
