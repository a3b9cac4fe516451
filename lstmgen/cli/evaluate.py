"""`lstmgen eval`: bits per byte and character next to compressors and a unigram model; per-token surprisal and heatmaps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..config import InferenceOptions, RunOptions
from ..errors import LstmgenError
from .app import MODEL_HELP, app
from .output import info, stdout_color_console, table_console, write_stdout
from .params import Flag, examples, given, options_of, signature

INFERENCE = options_of(InferenceOptions)
OPTIONS = [*options_of(RunOptions, only=["errors"]), *INFERENCE]
FLAGS = [
    Flag("files", "Text files to evaluate (UTF-8).", type=list[Path], metavar="FILE...", argument=True, required=True),
    Flag("model", MODEL_HELP, ("-m", "--model"), metavar="MODEL"),
    Flag("as_json", "Print the results as JSON on stdout.", ("--json",), type=bool, default=False),
    Flag(
        "streams",
        "Evaluate each file as N parallel streams, each starting fresh at a paragraph. (default: 1 per 200k tokens, "
        "so small files are read exactly as one stream)",
        ("--streams",),
        type=Optional[int],
        metavar="N",
    ),
    Flag(
        "baselines",
        "Also report gzip -9, bz2 -9, xz -9e and a unigram model of the training tokens on the same text.",
        ("--baselines/--no-baselines",),
        type=bool,
        default=True,
    ),
    Flag(
        "per_token",
        "Write one JSON line per token on stdout: its id, text, surprisal in bits and the likeliest alternatives "
        "(the table goes to stderr).",
        ("--per-token",),
        type=bool,
        default=False,
    ),
    Flag(
        "top_k_alternatives",
        "Alternatives listed per token by --per-token, --heatmap and --html. (default: 5)",
        ("--top-k-alternatives",),
        type=Optional[int],
        metavar="K",
    ),
    Flag(
        "heatmap",
        "Print the text with each piece coloured by its surprisal (marked with ‹ › « » without colour).",
        ("--heatmap",),
        type=bool,
        default=False,
    ),
    Flag(
        "html_path",
        "Write the surprisal heatmap as a self-contained HTML page (hover over a piece for details).",
        ("--html",),
        type=Optional[Path],
        metavar="PAGE.html",
    ),
]


def evaluate(**values: Any) -> None:
    """Report perplexity, bits per byte and bits per character of a model on text files, next to compressors and a unigram model."""
    import lstmgen

    from ..device import check_inference
    from ..evaluation import check_evaluation_options, evaluate_files

    files, html_path, per_token, heatmap = values["files"], values["html_path"], values["per_token"], values["heatmap"]
    top_k = values["top_k_alternatives"] if values["top_k_alternatives"] is not None else 5
    inference = InferenceOptions(**given(values, INFERENCE))
    check_inference(inference)
    check_evaluation_options(values["streams"], top_k)
    detail = _check_detail(files, values["as_json"], values["streams"], per_token, heatmap, html_path)
    model_path = _model_and_page(values["model"], files, html_path)
    lm = lstmgen.load(model_path, **given(values, INFERENCE))
    found = evaluate_files(
        lm, files, values["streams"], values["errors"] or "strict", values["baselines"], top_k if detail else None
    )
    for item in found if detail else ():
        if per_token:
            _write_per_token(lm.tokenizer, item.surprisal, str(item.path) if len(files) > 1 else None)
        if heatmap or html_path is not None:
            _show_heatmap(lm.tokenizer, item, heatmap, html_path)
    results = [item.result for item in found]
    _report(results, values["as_json"], values["baselines"], per_token)


def _check_detail(
    files: list[Path], as_json: bool, streams: int | None, per_token: bool, heatmap: bool, html_path: Path | None
) -> bool:
    """Refuse output options that cannot go together, before any work; True when per-token output is wanted."""
    if not (per_token or heatmap or html_path is not None):
        return False
    if per_token and as_json:
        raise LstmgenError("--per-token writes JSON lines on stdout; drop --json (the summary table goes to stderr)")
    if per_token and heatmap:
        raise LstmgenError(
            "--per-token and --heatmap both write to stdout; use --per-token with --html instead of --heatmap"
        )
    if heatmap and as_json:
        raise LstmgenError("--heatmap prints text on stdout; drop --json or write the heatmap with --html")
    if (heatmap or html_path is not None) and len(files) > 1:
        raise LstmgenError("--heatmap and --html show one file; evaluate the files one at a time")
    if streams is not None and streams != 1:
        raise LstmgenError("--per-token, --heatmap and --html read the text as one stream; drop --streams")
    return True


def _model_and_page(model: str | None, texts: list[Path], html_path: Path | None) -> Path:
    """Resolve -m, tell the guard (fsutil) what the command reads, and check --html against it, before any work."""
    import os

    from ..fsutil import HTML, check_output, declare_input
    from ..registry import resolve_model

    model_path = resolve_model(model, os.environ)
    declare_input(model_path, "the model")
    for path in texts:
        declare_input(path, "a text file")
    if html_path is not None:
        check_output(html_path, HTML, "HTML page", "--html")
    return model_path


def _report(results: list[dict[str, Any]], as_json: bool, with_baselines: bool, per_token: bool) -> None:
    from ..evaluation import combine

    if as_json:
        payload: Any = (
            results[0] if len(results) == 1 else {"files": results, "total": combine(results, with_baselines)}
        )
        write_stdout(json.dumps(payload) + "\n")
        return
    from rich.table import Table

    table = Table(title=None)
    for column in ("file", "tokens", "nats/token", "perplexity", "bits/byte", "bits/char"):
        table.add_column(column, justify="left" if column == "file" else "right")
    rows = results + ([{**combine(results, with_baselines), "file": "all"}] if len(results) > 1 else [])
    for r in rows:
        table.add_row(
            str(r["file"]),
            f"{r['tokens']:,}",
            f"{r['nll']:.4f}",
            f"{r['perplexity']:.2f}",
            f"{r['bits_per_byte']:.4f}",
            f"{r['bits_per_char']:.4f}",
        )
    console = table_console(data_on_stdout=per_token)
    console.print(table)
    _print_baselines(rows, console)


def _write_per_token(tokenizer: Any, surprisal: Any, file: str | None) -> None:
    from ..evaluation import per_token_records

    lines: list[str] = []
    for record in per_token_records(tokenizer, surprisal, file):
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) >= 2000:
            write_stdout("\n".join(lines) + "\n")
            lines = []
    if lines:
        write_stdout("\n".join(lines) + "\n")


def _show_heatmap(tokenizer: Any, item: Any, heatmap: bool, html_path: Path | None) -> None:
    from ..evaluation import heatmap_spans
    from ..visualize import html_page, print_spans, surprisal_scale, write_html

    spans = heatmap_spans(tokenizer, item.surprisal)
    scale = surprisal_scale()
    if heatmap:
        print_spans(spans, scale, write_stdout, stdout_color_console())
    if html_path is not None:
        result = item.result
        summary = (
            f"{result['tokens']:,} tokens, {result['bits_per_byte']:.4f} bits/byte, {result['bits_per_char']:.4f} bits/char, "
            f"perplexity {result['perplexity']:.2f}. Each piece of text is coloured by its surprisal, −log₂ p, under the model."
        )
        fields: list[dict[str, Any]] = [
            {"key": "bits", "label": "surprisal", "unit": "bits", "digits": 2},
            {"key": "p", "label": "probability", "digits": "pct"},
            {"key": "tokens", "label": "tokens in this piece", "digits": 0},
        ]
        write_html(html_path, html_page(f"Surprisal: {item.path.name}", spans, scale, summary, fields))
        info(f"wrote {html_path}")


def _print_baselines(rows: list[dict[str, Any]], console: Any) -> None:
    """Bits per byte of the model next to the unigram model and the compressors (lower is better)."""
    from rich.table import Table

    from ..evaluation import COMPRESSORS

    if not any(r.get("baselines") for r in rows):
        return
    has_unigram = any((r.get("baselines") or {}).get("unigram") for r in rows)
    table = Table(title="bits per byte, lower is better", title_justify="left")
    columns = (
        ["file", "this model"] + (["unigram"] if has_unigram else []) + [label for label, _ in COMPRESSORS.values()]
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "file" else "right")
    for r in rows:
        found = r.get("baselines") or {}
        cells = [str(r["file"]), f"{r['bits_per_byte']:.4f}"]
        if has_unigram:
            cells.append(f"{found['unigram']['bits_per_byte']:.4f}" if found.get("unigram") else "–")
        cells += [f"{found[name]['bits_per_byte']:.4f}" if found.get(name) else "–" for name in COMPRESSORS]
        table.add_row(*cells)
    console.print(table)


app.command(
    name="eval",
    short_help="Measure a model on text: bits per byte and per character.",
    epilog=examples(
        "lstmgen eval held-out.txt",
        "lstmgen eval -m shakespeare.lstmgen held-out.txt",
        "lstmgen eval -m shakespeare.lstmgen held-out.txt --json | jq .bits_per_char",
        "lstmgen eval -m shakespeare.lstmgen held-out.txt --heatmap --html heatmap.html",
        "lstmgen eval -m shakespeare.lstmgen held-out.txt --per-token | jq -c 'select(.surprisal_bits > 10)'",
    ),
)(signature(evaluate, FLAGS, OPTIONS))
