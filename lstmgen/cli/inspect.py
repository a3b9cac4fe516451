"""`lstmgen inspect`: colour a text by one cell's activation, or find the cells that track features of it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

from ..config import InferenceOptions, RunOptions
from ..errors import LstmgenError
from .app import MODEL_HELP, app
from .output import info, stdout_color_console, write_stdout
from .params import Flag, examples, given, options_of, signature

OPTIONS = [*options_of(RunOptions, only=["errors"]), *options_of(InferenceOptions, only=["threads"])]
FLAGS = [
    Flag("file", "Text file to run the model over (UTF-8).", type=Path, metavar="FILE", argument=True, required=True),
    Flag("model", MODEL_HELP, ("-m", "--model"), metavar="MODEL"),
    Flag(
        "neuron",
        "Colour the text by this cell's activation; both numbers count from 0, as --find prints them.",
        ("--neuron",),
        metavar="LAYER:CELL",
    ),
    Flag(
        "find",
        "Rank cells by how strongly they track simple features of the text: quotes, brackets, position in the line and more.",
        ("--find",),
        type=bool,
        default=False,
    ),
    Flag(
        "state",
        "c (the cell state; the default for --neuron) or h (the output); --find scans both unless one is given.",
        ("--state",),
        metavar="c|h",
    ),
    Flag(
        "html_path",
        "With --neuron: also write the coloured text as a self-contained HTML page.",
        ("--html",),
        type=Optional[Path],
        metavar="PAGE.html",
    ),
    Flag("as_json", "Print the results as JSON on stdout.", ("--json",), type=bool, default=False),
    Flag("top", "Cells listed per feature by --find. (default: 3)", ("--top",), type=Optional[int], metavar="N"),
    Flag(
        "max_tokens",
        "Read at most this many tokens from the start of the file. (default: 20000)",
        ("--max-tokens",),
        type=Optional[int],
        metavar="N",
    ),
]


def inspect_command(**values: Any) -> None:
    """Look inside a model: colour a text by one cell's activation, or find the cells that track features of it."""
    import lstmgen

    from ..device import check_inference
    from ..evaluation import check_text_file
    from ..inspection import check_inspect_options, inspect_file

    neuron, html_path, path = values["neuron"], values["html_path"], values["file"]
    top = values["top"] if values["top"] is not None else 3
    max_tokens = values["max_tokens"] if values["max_tokens"] is not None else 20_000
    check_inspect_options(neuron, values["find"], values["state"], top, max_tokens)
    if html_path is not None and neuron is None:
        raise LstmgenError("--html draws one cell: use it with --neuron (run --find first to pick one)")
    check_inference(InferenceOptions(**given(values, OPTIONS[1:])))
    check_text_file(path, "inspect")
    model_path = _model_and_page(values["model"], path, html_path)
    lm = lstmgen.load(model_path, threads=values["threads"])
    text, position = inspect_file(lm, path, neuron, values["state"], max_tokens, values["errors"] or "strict")
    if text.total_tokens > max_tokens:
        info(f"inspecting the first {max_tokens:,} of {text.total_tokens:,} tokens; raise --max-tokens for more")
    if position is not None:
        _show_neuron(text, *position, html_path, values["as_json"])
    else:
        _show_find(text, top, values["model"], values["as_json"])


def _model_and_page(model: str | None, text: Path, html_path: Path | None) -> Path:
    from .evaluate import _model_and_page as checked

    return checked(model, [text], html_path)


def _show_neuron(text: Any, layer: int, index: int, html_path: Path | None, as_json: bool) -> None:
    from ..inspection import STATE_LABELS, neuron_view
    from ..visualize import Span, activation_scale, html_page, print_spans, write_html

    kind, cell, path, pieces = text.kinds[0], text.config.cell, Path(text.path), text.pieces
    view = neuron_view(text, layer, index)
    shown = view.values
    label = f"cell {layer}:{index} {STATE_LABELS[kind]} ({kind})"
    if as_json:
        payload = {
            "neuron": f"{layer}:{index}",
            "layer": layer,
            "cell": index,
            "state": kind,
            "file": str(path),
            "min": float(shown.min()),
            "max": float(shown.max()),
            "mean": float(shown.mean()),
            "pieces": [{"text": p.text, "value": round(float(v), 5)} for p, v in zip(pieces, shown)],
        }
        write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
    scale = activation_scale(view.limit, label, view.low, view.high)
    spans = [
        Span(p.text, float(v), {"value": round(float(v), 4)} | ({"tokens": p.token_count} if p.token_count > 1 else {}))
        for p, v in zip(pieces, shown)
    ]
    if not as_json:
        print_spans(spans, scale, write_stdout, stdout_color_console())
    if html_path is not None:
        summary = (
            f"{cell.upper()} layer {layer}, cell {index}, {STATE_LABELS[kind]} {kind}, after reading each piece of {path.name}: "
            f"red positive, blue negative, full colour at ±{scale.high:.3g} (range {shown.min():.3g} … {shown.max():.3g})."
        )
        fields = [
            {"key": "value", "label": f"{kind}[{layer}:{index}]", "digits": 4},
            {"key": "tokens", "label": "tokens in this piece", "digits": 0},
        ]
        write_html(html_path, html_page(f"{label}: {path.name}", spans, scale, summary, fields))
        info(f"wrote {html_path}")


def _show_find(text: Any, top: int, model: str | None, as_json: bool) -> None:
    from ..inspection import STATE_LABELS, find_in_text

    matches, constant, chance = find_in_text(text, top)
    config, pieces, kinds, path = text.config, text.pieces, text.kinds, Path(text.path)
    if as_json:
        payload = {
            "file": str(path),
            "pieces": len(pieces),
            "tokens": len(text.ids) - 1,
            "cell": config.cell,
            "layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "states": list(kinds),
            "chance_r": round(chance, 4),
            "features": [
                {
                    "name": m.name,
                    "description": m.description,
                    "context": m.context,
                    "mean": round(m.mean, 4),
                    "top": [c.as_dict() for c in m.top],
                }
                for m in matches
            ],
            "constant_features": constant,
        }
        write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(
        no_color=bool(os.environ.get("NO_COLOR")), highlight=False, width=None if sys.stdout.isatty() else 140
    )
    states = " and ".join(f"{STATE_LABELS[k]} ({k})" for k in kinds)
    table = Table(
        title=f"cells that track features of {path.name}: {len(pieces):,} pieces, {states} of {config.num_layers}×{config.hidden_size} cells",
        title_justify="left",
        caption=f"Above the line: features of the context (a cell needs memory to track them); below: of the piece just read. "
        f"r: correlation over the pieces; |r| above {chance:.3f} is unlikely by chance. "
        "LAYER:CELL counts from 0, as --neuron takes it.",
        caption_justify="left",
    )
    table.add_column("feature")
    table.add_column("what it measures")
    for rank in range(top):
        table.add_column("best cell" if rank == 0 else f"#{rank + 1}", justify="right")
    for position, m in enumerate(matches):
        if position and m.context != matches[position - 1].context:
            table.add_section()
        cells = [f"{c.layer}:{c.index} {c.kind} {c.r:+.2f}" for c in m.top] + [""] * (top - len(m.top))
        table.add_row(m.name, m.description, *cells)
    console.print(table)
    if constant:
        info(f"features constant over this text (nothing to correlate): {', '.join(constant)}")
    if matches and matches[0].top:
        best = matches[0].top[0]  # the strongest context feature's cell when there is one
        hint_model = f" -m {model}" if model else ""
        info(f"see one: lstmgen inspect{hint_model} {path} --neuron {best.layer}:{best.index} --state {best.kind}")


app.command(
    name="inspect",
    short_help="Look inside a model: which cells track what in a text.",
    epilog=examples(
        "lstmgen inspect held-out.txt --find",
        "lstmgen inspect -m shakespeare.lstmgen held-out.txt --find",
        "lstmgen inspect -m shakespeare.lstmgen held-out.txt --neuron 1:137",
        "lstmgen inspect -m shakespeare.lstmgen held-out.txt --neuron 1:137 --html cell.html",
    ),
)(signature(inspect_command, FLAGS, OPTIONS))
