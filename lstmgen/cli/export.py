"""`lstmgen export`: a model as an ONNX graph of one generation step, or as one web page that writes in the browser."""

from __future__ import annotations

from typing import Any

from ..export import ExportOptions
from .app import MODEL_HELP, app
from .output import human_bytes, info
from .params import Flag, examples, given, options_of, signature

OPTIONS = options_of(ExportOptions)
FLAGS = [
    Flag("model", MODEL_HELP, metavar="MODEL", argument=True),
    Flag(
        "model_option",
        "The model, given as the other commands take it (instead of the argument).",
        ("-m", "--model"),
        metavar="MODEL",
    ),
]


def export(**values: Any) -> None:
    """Export a model to run without lstmgen: ONNX (one generation step) or a self-contained web page."""
    from ..errors import LstmgenError
    from ..export import export_model

    model, model_option = values["model"], values["model_option"]
    if model is not None and model_option is not None:
        raise LstmgenError("give the model once: `lstmgen export MODEL -o FILE` or `lstmgen export -m MODEL -o FILE`")
    options = given(values, OPTIONS)
    summary = export_model(model if model is not None else model_option, options.pop("output", None), **options)
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
