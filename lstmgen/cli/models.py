"""`lstmgen models`, `info` and `convert`: the models -m can name, what a bundle holds, and a bundle in another dtype."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from ..errors import LstmgenError
from .app import MODEL_HELP, app
from .output import human_bytes, info, write_stdout
from .params import Flag, examples, signature

INFO_FLAGS = [
    Flag("model", MODEL_HELP, metavar="MODEL", argument=True),
    Flag(
        "model_option",
        "The model, given as the other commands take it (instead of the argument).",
        ("-m", "--model"),
        metavar="MODEL",
    ),
    Flag("as_json", "Print the metadata as JSON on stdout.", ("--json",), type=bool, default=False),
    Flag(
        "plot",
        "Write the training and validation loss curves as a PNG (needs matplotlib: pip install 'lstmgen[plot]').",
        ("--plot",),
        type=Optional[Path],
        metavar="CURVES.png",
    ),
]


def show_info(**values: Any) -> None:
    """Show a bundle's configuration, training summary, versions and loss curves."""
    from ..bundle import bundle_summary
    from ..registry import resolve_model

    model, model_option, plot, as_json = values["model"], values["model_option"], values["plot"], values["as_json"]
    if model is not None and model_option is not None:
        raise LstmgenError("give the model once: `lstmgen info MODEL` or `lstmgen info -m MODEL`")
    path = resolve_model(model if model is not None else model_option, os.environ)
    if plot is not None:
        from ..fsutil import PNG, check_output, declare_input

        _require_matplotlib()
        declare_input(path, "the model")
        check_output(plot, PNG, "plot", "--plot")
    meta = bundle_summary(path)
    parameters = meta["parameters"]
    training = meta.get("training", {})
    from ..visualize import read_curve

    curve = read_curve(training)
    if plot is not None:
        if curve is None:
            raise LstmgenError(
                f"{path} has no training curve to plot (it is written by `lstmgen train` at each validation)"
            )
        from ..visualize import plot_curves_png

        plot_curves_png(curve, plot, f"{path.name}: training curves")
        info(f"wrote {plot}")
    if as_json:
        write_stdout(json.dumps(meta, indent=2) + "\n")
        return
    cfg = meta["model"]
    lines = [
        f"model       {cfg['num_layers']}×{cfg['hidden_size']} {cfg['cell'].upper()}, embedding {cfg['embedding_size']}, vocabulary {cfg['vocab_size']}, {parameters:,} parameters",
        f"training    {training.get('steps', '?')} steps, {training.get('tokens_seen', 0):,} tokens, {training.get('elapsed_seconds', 0):.0f} s on {training.get('device', '?')}",
    ]
    if training.get("best_val_loss") is not None:
        lines.append(
            f"validation  {training['best_val_loss']:.4f} nats/token, {training.get('best_val_bits_per_char') or float('nan'):.4f} bits/char (step {training.get('best_val_step')})"
        )
    lines.extend(_info_config_lines(meta))
    lines.append(
        f"corpus      {_corpus_files_text(training.get('corpus_files'))}sha256 {training.get('corpus_sha256', '?')}"
    )
    versions = meta.get("versions", {})
    lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    # The summary is data (`lstmgen info MODEL > f` keeps it): stdout, like --json.
    write_stdout("\n".join(lines) + "\n")
    if curve is not None:
        import io

        from rich.console import Console

        from ..visualize import print_curve

        width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
        buffer = io.StringIO()
        console = Console(
            file=buffer,
            width=width,
            force_terminal=sys.stdout.isatty() and not os.environ.get("NO_COLOR"),
            no_color=bool(os.environ.get("NO_COLOR")),
            highlight=False,
        )
        print_curve(curve, console, width=max(20, min(72, width - 12)))
        write_stdout("\n" + buffer.getvalue())
    else:
        write_stdout("curves      none (the bundle has no training.curve)\n")


def _corpus_files_text(files: Any) -> str:
    if not isinstance(files, list) or not files:
        return ""
    shown = [
        f"{f.get('name', '?')} ({f['bytes']:,} bytes)" if isinstance(f.get("bytes"), int) else str(f.get("name", "?"))
        for f in files[:3]
        if isinstance(f, dict)
    ]
    return ", ".join(shown) + (f" and {len(files) - 3} more" if len(files) > 3 else "") + ", " if shown else ""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LstmgenError(
            "--plot needs matplotlib, which is not installed; install it with: pip install 'lstmgen[plot]'"
        ) from None


def _info_config_lines(meta: dict[str, Any]) -> list[str]:
    """Tokenizer, training options and corpus files of `lstmgen info` (what is there, tolerantly)."""
    lines = []
    tokenizer = meta.get("tokenizer") or {}
    settings = tokenizer.get("settings") or {}
    described = ", ".join(
        f"{key} {settings[key]}"
        for key in ("model_type", "documents", "character_coverage")
        if settings.get(key) is not None
    )
    lines.append(
        f"tokenizer   {tokenizer.get('type', '?')}, {tokenizer.get('vocab_size', '?')} pieces"
        + (f", {described}" if described else "")
    )
    train_config = (meta.get("training") or {}).get("train_config")
    if isinstance(train_config, dict) and train_config:
        keys = ("batch_size", "seq_len", "learning_rate", "weight_decay", "warmup_steps", "grad_clip", "seed")
        lines.append("train with  " + ", ".join(f"{key} {train_config[key]}" for key in keys if key in train_config))
    if meta.get("created"):
        lines.append(f"created     {meta['created']} (weights {(meta.get('weights') or {}).get('dtype', 'float32')})")
    return lines


app.command(
    name="info",
    short_help="Show what a bundle holds and how it was trained.",
    epilog=examples(
        "lstmgen info tang",
        "lstmgen info shakespeare.lstmgen",
        "lstmgen info shakespeare.lstmgen --plot curves.png",
        "lstmgen info shakespeare.lstmgen --json",
    ),
)(signature(show_info, INFO_FLAGS))


MODELS_FLAGS = [
    Flag(
        "as_json",
        "Print the list as JSON on stdout: name, path, source, size and description.",
        ("--json",),
        type=bool,
        default=False,
    )
]


def models_command(**values: Any) -> None:
    """List the models -m NAME can name: the built-ins and the bundles in your model directory."""
    from ..registry import list_models

    entries = list_models(os.environ)
    if values["as_json"]:
        write_stdout(json.dumps([entry.as_dict() for entry in entries], ensure_ascii=False) + "\n")
    elif entries:
        write_stdout(_models_table(entries))
    for line in _models_notes(entries):
        info(line)


def _models_table(entries: list[Any]) -> str:
    """Plain aligned columns: greppable and never wrapped, unlike a rich table in a pipe."""
    rows = [("NAME", "SOURCE", "SIZE", "DESCRIPTION")] + [
        (e.name, e.source, human_bytes(e.size), e.description) for e in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}\n" for row in rows)


def _models_notes(entries: list[Any]) -> list[str]:
    """The lines on stderr under the list: where user models go, which model runs without -m, name clashes."""
    from ..registry import resolve_model, user_model_dir

    directory = user_model_dir(os.environ)
    state = "" if directory.is_dir() else ", which does not exist yet"
    notes = [
        f"your models: {directory}{state}; put NAME.lstmgen there to use -m NAME (LSTMGEN_HOME or XDG_DATA_HOME move it)"
    ]
    if not entries:
        return [
            "no models found: the built-in models are not installed and you have none; train one with `lstmgen train corpus.txt`",
            *notes,
        ]
    try:
        notes.append(f"without -m: {resolve_model(None, os.environ)}")
    except LstmgenError as error:
        notes.append(f"without -m: {error}")
    user_names = {e.name for e in entries if e.source == "user"}
    notes += [
        f"-m {e.name} uses your model, not the built-in one"
        for e in entries
        if e.source == "builtin" and e.name in user_names
    ]
    return notes


app.command(
    name="models",
    short_help="List the models that -m NAME can name.",
    epilog=examples(
        "lstmgen models",
        "lstmgen models --json | jq -r '.[].name'",
        "cp poems.lstmgen ~/.local/share/lstmgen/models/ && lstmgen sample -m poems",
    ),
)(signature(models_command, MODELS_FLAGS))


CONVERT_FLAGS = [
    Flag("model", "Bundle path or model name.", metavar="MODEL", argument=True, required=True),
    Flag("output", "Bundle to write.", ("-o", "--output"), type=Path, metavar="PATH", required=True),
    Flag(
        "dtype",
        "Weights dtype: float16 (half the size), bfloat16 or float32. (default: float16)",
        ("--dtype",),
        metavar="float16|bfloat16|float32",
    ),
]


def convert(**values: Any) -> None:
    """Rewrite a bundle with its weights in another dtype: float16 halves the file, to ship or share it."""
    from ..bundle import convert_bundle
    from ..fsutil import BUNDLE, check_output, declare_input
    from ..registry import resolve_model

    model, output, dtype = values["model"], values["output"], values["dtype"] or "float16"
    source = resolve_model(model, os.environ)
    declare_input(source, "the bundle being converted")
    check_output(output, BUNDLE, "bundle")
    converted = convert_bundle(source, output, dtype)
    info(
        f"wrote {output}: {output.stat().st_size / 1e6:.1f} MB ({converted.meta['weights']['dtype']} weights; was {source.stat().st_size / 1e6:.1f} MB)"
    )


app.command(
    short_help="Rewrite a bundle with its weights in another dtype.",
    epilog=examples(
        "lstmgen convert shakespeare.lstmgen -o shakespeare-half.lstmgen --dtype float16",
        "lstmgen eval -m shakespeare-half.lstmgen held-out.txt   # check what the smaller file costs",
    ),
)(signature(convert, CONVERT_FLAGS))
