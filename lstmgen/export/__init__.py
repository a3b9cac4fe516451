"""Take a model anywhere: an ONNX graph of one generation step, or one self-contained web page.

`export_model(model, output, format=..., weights=...)` is what `lstmgen export` runs. Both formats
follow docs/bundle-format.md exactly (the equations of §4, the start ids, the decoding rule of §5);
docs/export.md documents what they hold and how to run them.

- `onnx` (lstmgen.export.onnx_graph): the graph is built node by node with `onnx.helper` from the
  bundle's tensors, not traced through torch's exporter, so it holds the specification's equations
  and nothing else, and needs only the `onnx` package (`pip install 'lstmgen[export]'`). The
  tokenizer is written beside it (`NAME.tokenizer.model`).
- `web` (lstmgen.export.web): one HTML file with the weights, the tokenizer's pieces and a small
  JavaScript runtime embedded; it generates in the browser from `file://`, with no network access.

This module imports nothing heavy: `lstmgen --help` reads the declarations below.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LstmgenError
from ..options import option, ref, validate

FORMATS = ("onnx", "web")
WEB_WEIGHTS = ("float16", "float32", "int8")
#: What each format's output is called when --format is not given.
SUFFIXES = {".onnx": "onnx", ".html": "web", ".htm": "web"}

__all__ = ["ExportOptions", "FORMATS", "export_model", "tokenizer_path"]


@dataclass
class ExportOptions:
    """What `lstmgen export` writes: the flags of the command and the keywords of `export_model`."""

    output: Path | None = option(
        None,
        short="-o",
        flag="--output",
        metavar="PATH",
        help="The file to write: MODEL.onnx or PAGE.html.",
    )
    format: str | None = option(
        None,
        choices=FORMATS,
        help="onnx (one generation step as an ONNX graph, the tokenizer beside it) or web (one HTML page that "
        "generates in the browser).",
        default_text="from the output's suffix: .onnx or .html",
    )
    weights: str | None = option(
        None,
        choices=WEB_WEIGHTS,
        help="How the page stores the weights: float16 (the built-in models' own weights, so the page's greedy text "
        "equals lstmgen's), float32, or int8 (half the size, a little less exact). ONNX graphs are always float32.",
        default_text="float16",
    )

    def validate(self) -> None:
        validate(self)

    def resolved_format(self) -> str:
        """The format given, else the one the output's suffix names (a one-line error when neither says)."""
        if self.format is not None:
            return self.format
        suffix = Path(self.output).suffix.lower() if self.output is not None else ""
        if suffix in SUFFIXES:
            return SUFFIXES[suffix]
        raise LstmgenError(
            f"cannot tell the format from {ref(ExportOptions, 'output')} {self.output}: "
            f"give {ref(ExportOptions, 'format')} onnx or web, or name the output .onnx or .html"
        )

    def check(self) -> str:
        """Validate everything before any work; returns the format."""
        if self.output is None:
            raise LstmgenError(
                f"give the file to write with {ref(ExportOptions, 'output')} (e.g. model.onnx or poet.html)"
            )
        self.validate()
        chosen = self.resolved_format()
        if chosen == "onnx" and self.weights not in (None, "float32"):
            raise LstmgenError(
                f"{ref(ExportOptions, 'weights')} {self.weights} applies to web pages; ONNX graphs are float32 "
                f"(drop {ref(ExportOptions, 'weights')})"
            )
        return chosen


def tokenizer_path(output: Path) -> Path:
    """Where the ONNX export writes the tokenizer: beside the graph, `model.onnx` → `model.tokenizer.model`."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.tokenizer.model")


def require_onnx() -> None:
    """One line, before any work, when the optional `onnx` package is missing."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise LstmgenError(
            "--format onnx needs the onnx package, which is not installed; install it with: pip install 'lstmgen[export]'"
        ) from None


def export_model(model: Any, output: Any = None, **options: Any) -> dict[str, Any]:
    """Export a model (a bundle path or a model name, as `-m` takes it) as ONNX or a web page.

    Keywords: `format` ("onnx" or "web"; default from the output's suffix), `weights` (web:
    "float16", "float32" or "int8"). Every check runs before any work; outputs go through lstmgen's
    output guard and are written atomically. Returns a summary: the files written and their sizes.
    """
    from ..fsutil import inputs_of_this_call

    unknown = sorted(set(options) - {"format", "weights"})
    if unknown:
        raise LstmgenError(f"unknown export option {', '.join(unknown)}; the options are format and weights")
    settings = ExportOptions(output=Path(output) if output is not None else None, **options)
    chosen = settings.check()
    if chosen == "onnx":
        require_onnx()
    with inputs_of_this_call():
        return _export(model, settings, chosen)


def _export(model: Any, settings: ExportOptions, chosen: str) -> dict[str, Any]:
    import os

    from ..fsutil import HTML, ONNX, SENTENCEPIECE, check_output, declare_input
    from ..registry import resolve_model

    assert settings.output is not None
    source = resolve_model(str(model) if model is not None else None, os.environ)
    declare_input(source, "the model being exported")
    if chosen == "onnx":
        check_output(settings.output, ONNX, "ONNX graph")
        check_output(tokenizer_path(settings.output), SENTENCEPIECE, "tokenizer")
        from .onnx_graph import write_onnx

        return write_onnx(source, settings.output, tokenizer_path(settings.output))
    check_output(settings.output, HTML, "page")
    from .web import write_page

    return write_page(source, settings.output, settings.weights or "float16")
