"""`lstmgen export`: a model as an ONNX graph of one generation step, or as one web page that writes in the browser."""

from __future__ import annotations

from typing import Any

from ..export import ExportOptions
from .app import app
from .output import human_bytes, info
from .params import Flag, examples, given, options_of, signature

OPTIONS = options_of(ExportOptions)
FLAGS = [Flag("model", "Bundle path or model name.", metavar="MODEL", argument=True, required=True)]


def export(**values: Any) -> None:
    """Export a model to run without lstmgen: ONNX (one generation step) or a self-contained web page."""
    from ..export import export_model

    options = given(values, OPTIONS)
    summary = export_model(values["model"], options.pop("output", None), **options)
    files = ", ".join(f"{path} ({human_bytes(size)})" for path, size in summary["files"].items())
    info(f"wrote {files}")


app.command(
    short_help="Export a model as ONNX or as a web page that generates in the browser.",
    epilog=examples(
        "lstmgen export shakespeare --format onnx -o shakespeare.onnx",
        "lstmgen export tang -o tang.html   # the format from the suffix",
        "lstmgen export my.lstmgen --format web --weights int8 -o my.html",
    ),
)(signature(export, FLAGS, OPTIONS))
