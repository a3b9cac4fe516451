"""`lstmgen tokenize`: train a tokenizer and encode a corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..config import RunOptions, TokenizerConfig, TrainConfig
from .app import app
from .output import ByteProgress, info, write_stdout
from .params import Flag, examples, given, options_of, signature

OPTIONS = [
    *options_of(TokenizerConfig),
    *options_of(TrainConfig, only=["val_fraction"]),
    *options_of(RunOptions, only=["errors"]),
]
FLAGS = [
    Flag("corpus", "Corpus text files (UTF-8).", type=list[Path], metavar="CORPUS...", argument=True, required=True),
    Flag(
        "output",
        "Directory to write (default: FIRST-CORPUS-NAME.tok).",
        ("-o", "--output"),
        type=Optional[Path],
        metavar="DIR",
    ),
    Flag("as_json", "Print the summary as JSON on stdout.", ("--json",), type=bool, default=False),
]


def tokenize(**values: Any) -> None:
    """Train a lossless SentencePiece tokenizer and encode the corpus to token ids."""
    from ..data import tokenize_files

    progress = ByteProgress("encoding")
    try:
        summary = tokenize_files(
            values["corpus"], values["output"], on_progress=progress.update, **given(values, OPTIONS)
        )
    finally:
        progress.close()
    if values["as_json"]:
        write_stdout(json.dumps(summary) + "\n")
    else:
        info(
            f"wrote {summary['directory']}: vocabulary {summary['vocab_size']}, {summary['tokens']:,} tokens "
            f"({summary['chars_per_token']:.2f} chars/token), {summary['val_tokens']:,} held out for validation"
        )


app.command(
    short_help="Train a tokenizer and encode a corpus with it.",
    epilog=examples(
        "lstmgen tokenize corpora/tinyshakespeare.txt -o shakespeare.tok",
        "lstmgen tokenize poems.txt --model-type char -o poems.tok",
        "lstmgen tokenize corpora/tang-poems.simplified.txt --documents blank-line -o tang.tok",
    ),
)(signature(tokenize, FLAGS, OPTIONS))
