"""The command line: parse options, call the core, print. Data goes to stdout, the rest to stderr."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer

try:  # typer ≥ 0.20 vendors click; older releases use click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the typer release
    from click import exceptions as click_exceptions

from . import __version__
from .errors import LstmgenError, TrainingInterrupted

app = typer.Typer(
    name="lstmgen",
    help="Train an LSTM language model on your own text and generate from it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXAMPLES_TOKENIZE = """
Examples:\n
  lstmgen tokenize corpora/tinyshakespeare.txt -o shakespeare.tok\n
  lstmgen tokenize poems.txt --model-type char -o poems.tok\n
  lstmgen tokenize corpora/tang-poems.simplified.txt --documents blank-line -o tang.tok
"""
EXAMPLES_TRAIN = """
Examples:\n
  lstmgen train corpora/tinyshakespeare.txt -o shakespeare.lstmgen --max-time 5m\n
  lstmgen train corpus.txt --tokenizer corpus.tok --hidden-size 256 --max-steps 2000\n
  lstmgen train corpus.txt -o corpus.lstmgen --resume
"""
EXAMPLES_SAMPLE = """
Examples:\n
  lstmgen sample --prompt "ROMEO:" --temp 0.8 --max-tokens 300 | head -20\n
  lstmgen sample -m tang -n 5 --format jsonl --quantize int8\n
  echo "JULIET:" | lstmgen sample -m my-model.lstmgen --prompt - -n 3 --seed 7\n
  lstmgen sample --interactive --temp 0.8 --stop $'\\n\\n'
"""
EXAMPLES_EVAL = """
Examples:\n
  lstmgen eval held-out.txt\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt --json | jq .bits_per_char\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt --heatmap --html heatmap.html\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt --per-token | jq -c 'select(.surprisal_bits > 10)'
"""
EXAMPLES_MODELS = """
Examples:\n
  lstmgen models\n
  lstmgen models --json | jq -r '.[].name'\n
  cp poems.lstmgen ~/.local/share/lstmgen/models/ && lstmgen sample -m poems
"""
MODEL_HELP = "Bundle path or model name (default: $LSTMGEN_MODEL, else the built-in shakespeare)."
DOCUMENTS_HELP = "Where documents end (an end-of-text token follows each): file (each corpus file is one document) or blank-line (a run of blank lines also ends one, e.g. one poem per paragraph)."
EXAMPLES_INFO = """
Examples:\n
  lstmgen info tang\n
  lstmgen info shakespeare.lstmgen\n
  lstmgen info shakespeare.lstmgen --plot curves.png\n
  lstmgen info shakespeare.lstmgen --json
"""


# -- output helpers ---------------------------------------------------------------------------------


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def _write_stdout(text: str) -> None:
    """Write data to stdout; when the reader has gone (`| head`), stop quietly."""
    if "stdout" in _CLOSED_STREAMS:
        raise LstmgenError("standard output is closed, so there is nowhere to write the results; redirect it to a file or a pipe")
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(0) from None


class _LogFormatter(logging.Formatter):
    """Plain messages for progress; a `warning:` prefix where the user should look."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"


def _setup_logging(quiet: bool = False) -> None:
    logger = logging.getLogger("lstmgen")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LogFormatter())
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.ERROR if quiet else logging.INFO)


def _info(message: str) -> None:
    logging.getLogger("lstmgen").info(message)


def _human_count(value: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def _budget_text(elapsed: float, progress: float) -> str:
    """Elapsed time, the share of the budget done and the time left, for progress lines in logs."""
    text = f"{_format_seconds(elapsed)} elapsed"
    if progress <= 0:
        return text
    done = min(progress, 1.0)
    left = elapsed * (1.0 - done) / done
    return f"{text}, {done:.0%} of the budget, ~{_format_seconds(left)} left"


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# -- tokenize ---------------------------------------------------------------------------------------


def _progress_bar(description: str) -> Any:
    """A byte-progress callback: a rich bar on a terminal, nothing in logs."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=_stderr_console(), transient=True)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


@app.command(epilog=EXAMPLES_TOKENIZE)
def tokenize(
    corpus: list[Path] = typer.Argument(..., help="Corpus text files (UTF-8).", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Directory to write (default: FIRST-CORPUS-NAME.tok)."),
    vocab_size: Optional[int] = typer.Option(None, help="Vocabulary size (default: chosen from the corpus)."),
    model_type: str = typer.Option("unigram", help="unigram, bpe or char."),
    character_coverage: Optional[float] = typer.Option(None, help="Share of characters kept as pieces (default: 1.0, or 0.9995 for scripts with >1000 characters)."),
    val_fraction: float = typer.Option(0.1, help="Share of the corpus tail held out for validation."),
    documents: str = typer.Option("file", help=DOCUMENTS_HELP),
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict (refuse) or replace (with U+FFFD)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Train a lossless SentencePiece tokenizer and encode the corpus to token ids."""
    from .config import TokenizerConfig, _check_float
    from .data import tokenize_corpus

    _check_float("--val-fraction", val_fraction, low=0.0, high=0.5, low_open=True)
    config = TokenizerConfig(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage, documents=documents)
    config.validate()
    directory = output or Path(corpus[0].stem + ".tok")
    import time

    from .data import check_corpus_file, sample_lines
    from .fsutil import check_output_directory, declare_input
    from .tokenizer import train_tokenizer

    for path in corpus:
        check_corpus_file(path)
        declare_input(path, "a corpus file")
    check_output_directory(directory, "tokenized corpus", members=("tokens.bin", "tokens.json", "tokenizer.model"), marker="tokens.json")
    started = time.perf_counter()
    tokenizer = train_tokenizer(sample_lines(corpus, config.max_training_bytes, errors), config)
    trained = time.perf_counter()
    progress, update = _progress_bar("encoding")
    if progress:
        progress.start()
    try:
        result = tokenize_corpus(corpus, config, directory, val_fraction, errors=errors, on_progress=update, tokenizer=tokenizer)
    finally:
        if progress:
            progress.stop()
    encoded = time.perf_counter()
    meta = result.meta
    summary = {
        "directory": str(directory),
        "vocab_size": meta["vocab_size"],
        "tokens": meta["num_tokens"],
        "chars": meta["total_chars"],
        "bytes": meta["total_bytes"],
        "chars_per_token": meta["total_chars"] / max(1, meta["num_tokens"]),
        "train_tokens": meta["split"]["index"],
        "val_tokens": meta["num_tokens"] - meta["split"]["index"],
        "corpus_sha256": meta["corpus_sha256"],
        "seconds": {"tokenizer_training": round(trained - started, 3), "encoding": round(encoded - trained, 3)},
        "encode_mb_per_second": round(meta["total_bytes"] / 1e6 / max(encoded - trained, 1e-9), 2),
    }
    if as_json:
        _write_stdout(json.dumps(summary) + "\n")
    else:
        _info(
            f"wrote {directory}: vocabulary {summary['vocab_size']}, {summary['tokens']:,} tokens "
            f"({summary['chars_per_token']:.2f} chars/token), {summary['val_tokens']:,} held out for validation"
        )


# -- train ------------------------------------------------------------------------------------------


class _TrainDisplay:
    """Shows training progress: a rich bar on a terminal, plain log lines otherwise."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.progress: Any = None
        self.task: Any = None
        self.val_loss: float | None = None
        self.val_bpc: float | None = None
        self.end_event: dict[str, Any] | None = None  # the run's end, kept for the line an interrupted run prints

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            action = "resuming" if event["resumed"] else "training"
            model = event["model"]
            _info(
                f"{action} a {model['num_layers']}×{model['hidden_size']} {str(model.get('cell', 'lstm')).upper()} ({event['parameters']:,} parameters, "
                f"vocabulary {model['vocab_size']}) on {event['device']}"
            )
            if self.interactive:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                         TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=_stderr_console())
                self.task = self.progress.add_task("train", total=1.0, status="")
                self.progress.start()
        elif kind == "step":
            status = f"step {event['step']} loss {event['loss']:.3f}"
            if self.val_loss is not None:
                status += f" val {self.val_loss:.3f} ({self.val_bpc:.3f} bpc)"
            status += f" {_human_count(event['tokens_per_second'])} tok/s"
            if self.progress:
                self.progress.update(self.task, completed=min(1.0, event["progress"]), status=status)
            else:
                _info(f"{status} {_budget_text(event['elapsed'], event['progress'])}")
        elif kind == "val":
            self.val_loss, self.val_bpc = event["val_loss"], event["val_bits_per_char"]
            if not self.progress:
                mark = " (best)" if event["best"] else ""
                _info(f"validation at step {event['step']}: loss {event['val_loss']:.4f} nats/token, {event['val_bits_per_char']:.4f} bits/char{mark}")
        elif kind == "end":
            self.close()
            self.end_event = event
            if event.get("stopped_by") == "signal":
                return  # the CLI prints one line for an interrupted run
            best = event["best_val_loss"]
            best_text = f"best validation loss {best:.4f} nats/token ({event['best_val_bits_per_char']:.4f} bits/char)" if best is not None else "no validation yet"
            _info(
                f"done after {_plural(event['steps'], 'step')}, {_format_seconds(event['elapsed'])}, "
                f"{_human_count(event['tokens_per_second'])} tok/s; {best_text}; model in {event['output']}"
            )

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


@app.command(epilog=EXAMPLES_TRAIN)
def train(
    corpus: list[Path] = typer.Argument(..., help="Corpus text files (UTF-8).", show_default=False),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Bundle to write (default: FIRST-CORPUS-NAME.lstmgen)."),
    tokenizer_dir: Optional[Path] = typer.Option(None, "--tokenizer", help="A directory made by `lstmgen tokenize` (default: train one)."),
    vocab_size: Optional[int] = typer.Option(None, help="Tokenizer vocabulary size (default: chosen from the corpus)."),
    model_type: Optional[str] = typer.Option(None, help="Tokenizer type: unigram (default), bpe or char."),
    documents: Optional[str] = typer.Option(None, help=DOCUMENTS_HELP + " With --tokenizer or --init-from: theirs unless given."),
    hidden_size: Optional[int] = typer.Option(None, help="LSTM units per layer (default: from corpus size and device)."),
    embedding_size: Optional[int] = typer.Option(None, help="Embedding size (default: the hidden size)."),
    layers: Optional[int] = typer.Option(None, help="Number of LSTM layers."),
    dropout: Optional[float] = typer.Option(None, help="Dropout rate."),
    tie_weights: bool = typer.Option(True, "--tie-weights/--no-tie-weights", help="Share the embedding and output weights."),
    cell: Optional[str] = typer.Option(None, "--cell", help="Recurrent cell: lstm (default, torch.nn.LSTM), gru, or paper (the design document's LSTM; see docs/cells.md)."),
    batch_size: Optional[int] = typer.Option(None, help="Parallel streams per step."),
    seq_len: Optional[int] = typer.Option(None, help="Tokens per window of truncated backprop."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warm-up steps."),
    grad_clip: Optional[float] = typer.Option(None, help="Gradient-norm clipping threshold."),
    max_time: Optional[str] = typer.Option(None, help="Stop after this long, e.g. 90s, 5m, 2h (default 15m when no limit is given)."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    epochs: Optional[float] = typer.Option(None, help="Stop after this many passes over the corpus."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of the corpus tail held out for validation (default 0.1)."),
    val_every: Optional[int] = typer.Option(None, help="Validate every N steps (default: first at step 100, then as often as keeps validation near 3 % of the time)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (a fixed seed makes a CPU run reproducible)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 autocast on GPUs that support it, else fp32), fp32, bf16 or fp16."),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Compile the model with torch.compile (GPU runs)."),
    checkpoint_every: Optional[str] = typer.Option(None, help="Checkpoint interval, e.g. 10m."),
    log_every: Optional[int] = typer.Option(None, help="Log every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run that wrote -o exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over when -o already holds a model or its run a checkpoint (both are replaced)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this model's weights and tokenizer (fine-tuning): a bundle path or a model name, as -m takes it."),
    errors: str = typer.Option("strict", help="Invalid UTF-8 in the corpus: strict or replace."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration as JSON and exit."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file with [tokenizer], [model] and [train] tables; flags override it."),
) -> None:
    """Train an LSTM language model on a corpus and write the best model as one .lstmgen bundle."""
    from .bundle import load_bundle
    from .config import TokenizerConfig, TrainConfig, apply_settings, load_config_file, parse_duration
    from .data import check_corpus_file
    from .distributed import setup as setup_distributed
    from .trainer import RunLock, Trainer, apply_device_defaults, load_checkpoint_config, resolve_device, run_directory

    group = setup_distributed()
    if not group.is_main:
        _setup_logging(quiet=True)
    if resume and overwrite:
        raise LstmgenError("--resume continues the run and --overwrite starts it over; give one of them")
    for path in corpus:
        check_corpus_file(path)
    output = output or Path(corpus[0].stem + ".lstmgen")
    run_dir = run_directory(output)
    init_path = _resolve_model(str(init_from)) if init_from is not None else None
    if tokenizer_dir is not None:
        _check_tokenizer_dir(tokenizer_dir)
    _declare_train_inputs(corpus, tokenizer_dir, init_path, config_file)
    _check_train_outputs(output, run_dir, tokenizer_dir)

    saved = load_checkpoint_config(output) if resume else None
    if resume and saved is None:
        raise LstmgenError(f"nothing to resume: {run_dir / 'checkpoint.ckpt'} does not exist; run without --resume")
    saved_val_fraction = saved[1].val_fraction if saved else None
    file_settings = load_config_file(config_file) if config_file is not None else {}
    train_config = saved[1] if saved else TrainConfig()
    if not saved:
        apply_device_defaults(train_config, resolve_device(device or train_config.device))  # flags and config files still win
    apply_settings(train_config, file_settings.get("train", {}), "train")
    overrides = {
        "batch_size": batch_size, "seq_len": seq_len, "learning_rate": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "grad_clip": grad_clip, "max_steps": max_steps, "epochs": epochs,
        "val_every": val_every, "seed": seed, "device": device, "threads": threads, "log_every": log_every,
        "precision": precision, "compile": compile_model,
        "max_time": parse_duration(max_time) if max_time is not None else None,
        "checkpoint_every": parse_duration(checkpoint_every, "--checkpoint-every") if checkpoint_every is not None else None,
    }
    if any(overrides[k] is not None for k in ("max_time", "max_steps", "epochs")) and not saved:
        train_config.max_time, train_config.max_steps, train_config.epochs = None, None, None
    for name, value in overrides.items():
        if value is not None:
            setattr(train_config, name, value)
    if not saved and train_config.max_time is None and train_config.max_steps is None and train_config.epochs is None:
        train_config.max_time = 15 * 60.0
    if val_fraction is not None:
        train_config.val_fraction = val_fraction
    val_fraction = train_config.val_fraction
    train_config.validate()
    if saved and val_fraction != saved_val_fraction:
        raise LstmgenError(f"cannot resume: --val-fraction differs (checkpoint {saved_val_fraction!r}, now {val_fraction!r}); "
                           "drop the option or start over with --overwrite")
    _check_model_options(hidden_size, embedding_size, layers, dropout, cell)
    _check_model_settings(file_settings.get("model", {}))
    device_obj = resolve_device(train_config.device)
    if train_config.threads:
        import torch

        torch.set_num_threads(train_config.threads)

    tokenizer_config = TokenizerConfig()
    apply_settings(tokenizer_config, file_settings.get("tokenizer", {}), "tokenizer")
    documents = documents if documents is not None else file_settings.get("tokenizer", {}).get("documents")
    for name, value in {"vocab_size": vocab_size, "model_type": model_type, "documents": documents}.items():
        if value is not None:
            setattr(tokenizer_config, name, value)
    tokenizer_config.validate()
    init_bundle = load_bundle(init_path) if init_path is not None else None
    if init_bundle is not None:
        _check_init_from_options(init_bundle.model_config, hidden_size, embedding_size, layers, tie_weights, cell)
    # The lock comes before anything in the run directory is read for reuse or written: a refused run changes nothing.
    lock: Any = RunLock(run_dir) if group.is_main else contextlib.nullcontext()
    with _termination_raises(), lock:
        if group.is_main:
            _refuse_replacing_a_run(output, run_dir, resume, overwrite)
            if saved:
                _check_resume_inputs(run_dir, corpus, tokenizer_dir, init_bundle)
        try:  # until training starts, a failure removes the run directory this run made
            if group.is_main:
                corpus_data = _prepare_corpus(corpus, run_dir / "tokens", tokenizer_config, tokenizer_dir, init_bundle, val_fraction, errors, resume,
                                              documents=documents)
                _check_corpus_fits_a_batch(corpus_data.split, train_config)
                group.barrier()
            else:
                group.barrier()  # rank 0 has written the encoding; the other ranks find it ready
                corpus_data = _prepare_corpus(corpus, run_dir / "tokens", tokenizer_config, tokenizer_dir, init_bundle, val_fraction, errors, resume,
                                              documents=documents)
            model_config = _train_model_config(saved, init_bundle, corpus_data, device_obj, file_settings.get("model", {}), train_config, group,
                                               hidden_size=hidden_size, embedding_size=embedding_size, num_layers=layers, dropout=dropout,
                                               cell=cell, tie_weights=tie_weights)
        except BaseException:
            if group.is_main and lock.created:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise

        if dry_run:
            if group.is_main:
                _write_stdout(json.dumps(_dry_run_report(model_config, train_config, corpus_data, device_obj), indent=2) + "\n")
            return
        display = _TrainDisplay()
        trainer = Trainer(corpus_data, model_config, train_config, output, on_event=display, resume=resume,
                          init_weights=init_bundle.tensors if init_bundle is not None else None, group=group)
        try:
            trainer.run()
        except TrainingInterrupted as interrupted:
            display.close()
            print(_interrupted_line(display.end_event, corpus, output), file=sys.stderr)
            raise typer.Exit(130 if interrupted.signal_number == signal.SIGINT else 143) from None
        finally:
            display.close()
            if group.enabled:
                from .distributed import shutdown

                shutdown()


def _train_model_config(saved: Any, init_bundle: Any, corpus_data: Any, device: Any, file_model: dict[str, Any], train_config: Any, group: Any,
                        **options: Any) -> Any:
    """The model configuration of a run: the checkpoint's, the base model's (--init-from), or one sized for the corpus;
    then the config file's [model] table and the command line's options (a value of None is not given)."""
    from .config import apply_settings
    from .trainer import budget_dropout, suggest_model

    if saved:
        model_config = saved[0]
    elif init_bundle is not None:
        model_config = dataclasses.replace(init_bundle.model_config)  # a copy: --dropout may change, the base stays as it is
    else:
        model_config = suggest_model(corpus_data.split, corpus_data.meta["vocab_size"], device)
    file_model = dict(file_model)
    if file_model and not saved and init_bundle is None:
        if "hidden_size" in file_model and "embedding_size" not in file_model:
            file_model["embedding_size"] = file_model["hidden_size"]
        apply_settings(model_config, file_model, "model")
    tie_weights = options.pop("tie_weights")
    for name, value in options.items():
        if value is not None:
            setattr(model_config, name, value)
    if options["hidden_size"] is not None and options["embedding_size"] is None and not saved and init_bundle is None:
        model_config.embedding_size = options["hidden_size"]
    if not tie_weights:
        model_config.tie_weights = False
    if not saved and init_bundle is None and options["dropout"] is None and "dropout" not in file_model:
        model_config.dropout = budget_dropout(model_config, train_config, corpus_data.split, device, group.broadcast_float)
    model_config.validate()
    return model_config


def _declare_train_inputs(corpus: list[Path], tokenizer_dir: Optional[Path], init_path: Optional[Path], config_file: Optional[Path]) -> None:
    """Tell the guard (fsutil) what `train` reads, so that none of it can be written over."""
    from .fsutil import declare_input

    for path in corpus:
        declare_input(path, "a corpus file")
    declare_input(tokenizer_dir, "the --tokenizer directory")
    declare_input(init_path, "the --init-from model")
    declare_input(config_file, "the --config file")


def _check_tokenizer_dir(path: Path) -> None:
    """--tokenizer names an existing path (TokenizedCorpus.open says what is wrong with one that exists)."""
    from .fsutil import stat_or_none

    if stat_or_none(path, "read tokenized corpus") is None:
        raise LstmgenError(f"tokenized corpus {path} does not exist; create it with `lstmgen tokenize CORPUS -o {path}`")


def _check_train_outputs(output: Path, run_dir: Path, tokenizer_dir: Optional[Path]) -> None:
    """The guard's checks of the bundle and the run directory beside it, before any work."""
    from .fsutil import BUNDLE, check_output, check_output_directory
    from .trainer import RUN_FILES

    check_output(output, BUNDLE, "bundle")
    check_output_directory(run_dir, "run directory", members=RUN_FILES)
    if tokenizer_dir is not None and os.path.realpath(tokenizer_dir) == os.path.realpath(run_dir / "tokens"):
        raise LstmgenError(f"--tokenizer {tokenizer_dir} is the encoding this run writes; copy it elsewhere first, or drop --tokenizer")


def _check_init_from_options(base: Any, hidden_size: Optional[int], embedding_size: Optional[int], layers: Optional[int],
                             tie_weights: bool, cell: Optional[str]) -> None:
    """--init-from keeps the base model's architecture: refuse an option that changes it, before any work."""
    changed = [option for option, value, kept in (("--hidden-size", hidden_size, base.hidden_size), ("--embedding-size", embedding_size, base.embedding_size),
                                                  ("--layers", layers, base.num_layers), ("--cell", cell, base.cell))
               if value is not None and value != kept]
    if not tie_weights and base.tie_weights:
        changed.append("--no-tie-weights")
    if changed:
        raise LstmgenError(f"--init-from keeps the base model's architecture ({base.num_layers}×{base.hidden_size} {base.cell}, embedding "
                           f"{base.embedding_size}{', tied' if base.tie_weights else ', untied'} weights); drop {', '.join(changed)}")


class _Terminated(BaseException):
    """SIGTERM arrived while a run was being prepared (the trainer handles it itself once training runs).

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


@contextlib.contextmanager
def _termination_raises() -> Any:
    """Turn SIGTERM into an exception, so that a run stopped while it tokenizes cleans up what it made."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def _interrupted_line(end: Optional[dict[str, Any]], corpus: list[Path], output: Path) -> str:
    """The one line an interrupted run ends with: where it stopped, what was saved, how to go on (shell-quoted)."""
    command = " ".join(["lstmgen", "train", *(shlex.quote(str(p)) for p in corpus), "-o", shlex.quote(str(output)), "--resume"])
    if end is None:
        return f"interrupted; checkpoint saved; resume with: {command}"
    bpc = end.get("best_val_bits_per_char")
    quality = f"{bpc:.4f} bits/char" if bpc is not None else "no validation yet"
    return (f"interrupted after {_plural(end['steps'], 'step')} ({_format_seconds(end['elapsed'])}); checkpoint saved, "
            f"best model so far in {output} ({quality}); resume with: {command}")


def _refuse_replacing_a_run(output: Path, run_dir: Path, resume: bool, overwrite: bool) -> None:
    """A fresh run must not replace a trained model or another run's checkpoint unless --overwrite says so."""
    found = _previous_run(output, run_dir)
    if found is None or resume:
        return
    if overwrite:
        _info(f"--overwrite: starting over, replacing what is there: {found}")
        return
    raise LstmgenError(f"{found}; continue it with --resume, write to another -o, or start over with --overwrite")


def _previous_run(output: Path, run_dir: Path) -> Optional[str]:
    """What a fresh run would replace, in words (steps, bits per character, date), or None."""
    from .fsutil import stat_or_none

    parts = []
    bundle = stat_or_none(output)
    if bundle is not None and bundle.st_size > 0:
        meta = _bundle_training(output)
        steps = meta.get("steps")
        bpc = meta.get("best_val_bits_per_char")
        facts = [f"{bpc:.2f} bits/char" if isinstance(bpc, (int, float)) and math.isfinite(bpc) else "no validation", _date(bundle.st_mtime)]
        trained = f"a model trained for {_plural(steps, 'step')}" if isinstance(steps, int) else "a model bundle"
        parts.append(f"{output} already holds {trained} ({', '.join(facts)})")
    checkpoint = run_dir / "checkpoint.ckpt"
    saved = stat_or_none(checkpoint)
    if saved is not None:
        step = (_checkpoint_state(checkpoint).get("progress") or {}).get("step")
        at = f"at step {step:,}" if isinstance(step, int) else "(unreadable)"
        parts.append(f"{run_dir} holds the checkpoint of a run {at} ({_date(saved.st_mtime)})")
    return " and ".join(parts) or None


def _date(timestamp: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _bundle_training(path: Path) -> dict[str, Any]:
    """The `training` record of a bundle's metadata, read without the weights ({} when unreadable)."""
    from .registry import bundle_metadata

    try:
        training = bundle_metadata(path).get("training")
    except Exception:  # a damaged bundle is still a bundle: say so without its figures
        return {}
    return training if isinstance(training, dict) else {}


def _checkpoint_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint (progress and fingerprint), read without the tensors ({} when unreadable)."""
    import stat as stat_module
    import zipfile

    from .trainer import CHECKPOINT_MEMBERS

    limit = CHECKPOINT_MEMBERS["state.json"]
    try:
        if not stat_module.S_ISREG(os.stat(path).st_mode):
            return {}
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("state.json")
            if info.file_size > limit:
                return {}
            with archive.open(info) as member:
                state = json.loads(member.read(limit + 1))
    except Exception:  # damaged: --resume reports it precisely; here it only describes the file
        return {}
    return state if isinstance(state, dict) else {}


def _check_resume_inputs(run_dir: Path, corpus: list[Path], tokenizer_dir: Optional[Path], init_bundle: Any) -> None:
    """Refuse a --resume with another corpus or tokenizer before the run's encoding is touched."""
    import hashlib

    from .data import corpus_digest, file_sha256

    fingerprint = _checkpoint_state(run_dir / "checkpoint.ckpt").get("fingerprint") or {}
    expected = fingerprint.get("corpus_sha256")
    if expected is not None and corpus_digest([file_sha256(p) for p in corpus]) != expected:
        raise LstmgenError("cannot resume: the corpus differs from the checkpoint's; pass the run's corpus files (same order), "
                           "or start over with --overwrite")
    proto = None
    if init_bundle is not None:
        proto = init_bundle.tokenizer.model_proto
    elif tokenizer_dir is not None:
        from .fsutil import read_regular_file

        proto = read_regular_file(Path(tokenizer_dir) / "tokenizer.model", 64 << 20, "tokenizer")
    expected = fingerprint.get("tokenizer_sha256")
    if proto is not None and expected is not None and hashlib.sha256(proto).hexdigest() != expected:
        raise LstmgenError("cannot resume: the tokenizer differs from the checkpoint's; drop --tokenizer/--init-from, or start over with --overwrite")


def _check_model_options(hidden_size: Optional[int], embedding_size: Optional[int], layers: Optional[int], dropout: Optional[float],
                         cell: Optional[str] = None) -> None:
    """Refuse impossible model options before any work (the rest of the config is known only later)."""
    from .config import ModelConfig

    probe = ModelConfig(vocab_size=2)
    for name, value in {"hidden_size": hidden_size, "embedding_size": embedding_size, "num_layers": layers, "dropout": dropout,
                        "cell": cell}.items():
        if value is not None:
            setattr(probe, name, value)
    probe.validate()


def _check_model_settings(settings: dict[str, Any]) -> None:
    """Refuse a config file's [model] table before any work (it is applied once the corpus is encoded)."""
    from .config import ModelConfig, apply_settings

    probe = ModelConfig(vocab_size=2)
    apply_settings(probe, settings, "model")
    probe.vocab_size = 2
    probe.validate()


def _check_corpus_fits_a_batch(train_tokens: int, train_config: Any) -> None:
    if (train_tokens - 1) // train_config.batch_size < train_config.seq_len:
        raise LstmgenError(
            f"the training split ({train_tokens} tokens) is shorter than one batch of {train_config.batch_size} streams × "
            f"{train_config.seq_len + 1} tokens; give more text or lower --batch-size / --seq-len"
        )


def _dry_run_report(model_config: Any, train_config: Any, corpus_data: Any, device: Any) -> dict[str, Any]:
    """The resolved configuration, the parameter count and a measured training speed."""
    import torch

    from .config import to_dict
    from .model import LSTMLanguageModel
    from .trainer import measure_tokens_per_second

    return {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "tokenizer": corpus_data.meta.get("tokenizer"),
        "parameters": LSTMLanguageModel(model_config).num_parameters(),
        "train_tokens": corpus_data.split,
        "val_tokens": corpus_data.num_tokens - corpus_data.split,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "estimated_tokens_per_second": round(measure_tokens_per_second(model_config, train_config, device)),
    }


def _prepare_corpus(
    corpus: list[Path], tokens_dir: Path, tokenizer_config: Any, tokenizer_dir: Optional[Path], init_bundle: Any,
    val_fraction: float, errors: str, resume: bool, documents: Optional[str] = None,
) -> Any:
    """The tokenized corpus for a run: reuse an up-to-date encoding, else tokenize (with the given tokenizer).

    `documents` (when given) overrides the document convention of --tokenizer or --init-from.
    """
    from .data import TokenizedCorpus, reusable_encoding
    from .tokenizer import Tokenizer

    if init_bundle is not None:
        tokenizer: Any = init_bundle.tokenizer
        settings = _tokenizer_config_from(init_bundle.meta.get("tokenizer", {}).get("settings") or {})
        settings.documents = documents or settings.documents
    elif tokenizer_dir is not None:
        given = TokenizedCorpus.open(tokenizer_dir)
        same_files = [f.get("sha256") for f in given.meta.get("files", [])] == [_file_sha(p) for p in corpus]
        same_documents = documents is None or given.meta.get("tokenizer", {}).get("documents", "file") == documents
        if same_files and same_documents and given.meta["split"].get("val_fraction") == val_fraction:
            return given
        tokenizer = Tokenizer.load(given.tokenizer_path)
        settings = _tokenizer_config_from(given.meta.get("tokenizer", {}))
        settings.documents = documents or settings.documents
    elif resume and tokens_dir.exists():
        # Resuming keeps the run's own tokenizer, whatever the tokenizer options say now.
        existing = TokenizedCorpus.open(tokens_dir)
        tokenizer, settings = None, _tokenizer_config_from(existing.meta.get("tokenizer", {}))
    else:
        tokenizer, settings = None, tokenizer_config
    found = reusable_encoding(tokens_dir, corpus, settings, val_fraction, errors)
    if found is not None and (tokenizer is None or found.meta.get("tokenizer_sha256") == _sha256(tokenizer.model_proto)):
        _info(f"reusing the encoded corpus in {tokens_dir}")
        return found
    return _tokenize_with_progress(corpus, settings, tokens_dir, val_fraction, errors, tokenizer)


def _tokenizer_config_from(settings: dict[str, Any]) -> Any:
    from .config import TokenizerConfig, from_dict

    fields = {k: v for k, v in settings.items() if k != "errors"}
    return from_dict(TokenizerConfig, fields, "tokenizer settings")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    from .data import file_sha256

    return file_sha256(path)


def _tokenize_with_progress(corpus: list[Path], config: Any, directory: Path, val_fraction: float, errors: str, tokenizer: Any) -> Any:
    from .data import tokenize_corpus

    progress, update = _progress_bar("training the tokenizer and encoding" if tokenizer is None else "encoding")
    if progress:
        progress.start()
    try:
        return tokenize_corpus(corpus, config, directory, val_fraction, errors=errors, on_progress=update, tokenizer=tokenizer)
    finally:
        if progress:
            progress.stop()


# -- sample -----------------------------------------------------------------------------------------


def _resolve_model(model: Optional[str]) -> Path:
    """-m as a path or a name, else $LSTMGEN_MODEL, else the built-in default (lstmgen.registry)."""
    from .registry import resolve_model

    return resolve_model(model, os.environ)


def _model_and_page(model: Optional[str], texts: list[Path], html_path: Optional[Path]) -> Path:
    """Resolve -m, tell the guard (fsutil) what the command reads, and check --html against it, before any work."""
    from .fsutil import HTML, check_output, declare_input

    model_path = _resolve_model(model)
    declare_input(model_path, "the model")
    for path in texts:
        declare_input(path, "a text file")
    if html_path is not None:
        check_output(html_path, HTML, "HTML page", "--html")
    return model_path


def _check_text_file(path: Path, command: str) -> None:
    """check_corpus_file, saying where a bundle goes when one is given as the text (`lstmgen eval MODEL FILE`)."""
    from .data import check_corpus_file
    from .registry import looks_like_bundle

    if path.exists() and looks_like_bundle(path):
        raise LstmgenError(f"{path} is a model bundle or zip archive, not a text file; pass a model with -m: `lstmgen {command} -m {path} TEXT.txt`")
    check_corpus_file(path)


#: A prompt file is read whole; sampling reads long prompts in windows, but a prompt beyond this is a mistake.
PROMPT_FILE_LIMIT = 256 << 20


def _read_prompt_file(path: Path) -> str:
    """A UTF-8 text file, read within bounds (a regular file; never a FIFO or device, which could block forever)."""
    from .fsutil import describe_content, read_regular_file

    data = read_regular_file(path, PROMPT_FILE_LIMIT, "prompt file", "pass a text file, or pipe the prompt in with --prompt -")
    kind = describe_content(data[:4096])
    if kind in ("binary file", "model bundle", "PNG image"):
        raise LstmgenError(f"prompt file {path} looks like a binary file ({kind}), not text; pass a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LstmgenError(f"prompt file {path} is not valid UTF-8 (byte offset {error.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise LstmgenError(f"prompt file {path} looks like a binary file (it contains NUL bytes); pass a text file")
    return text


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if prompt is not None and prompt_file is not None:
        raise LstmgenError("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return _read_prompt_file(prompt_file)
    if prompt == "-":
        if "stdin" in _CLOSED_STREAMS:
            raise LstmgenError("--prompt - reads the prompt from stdin, but stdin is closed; pipe the prompt in or use --prompt TEXT")
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LstmgenError(f"the prompt on stdin is not valid UTF-8 (byte offset {error.start})") from None
    try:
        (prompt or "").encode("utf-8")
    except UnicodeEncodeError as error:  # bytes the shell passed that are not UTF-8 arrive as surrogates
        raise LstmgenError(f"--prompt is not valid UTF-8 (byte offset {len((prompt or '')[: error.start].encode('utf-8', 'surrogateescape'))}); pass UTF-8 text") from None
    return prompt or ""


@app.command(epilog=EXAMPLES_SAMPLE)
def sample(
    model: Optional[str] = typer.Option(None, "-m", "--model", help=MODEL_HELP),
    prompt: Optional[str] = typer.Option(None, help="Text to continue; - reads it from stdin."),
    prompt_file: Optional[Path] = typer.Option(None, help="Read the prompt from this file."),
    interactive: bool = typer.Option(False, "-i", "--interactive", help="Read prompts line by line and continue each; :q or Ctrl-D quits, Ctrl-C stops one generation."),
    temp: float = typer.Option(1.0, "--temp", "--temperature", help="Sampling temperature; 0 = greedy."),
    top_k: int = typer.Option(0, help="Keep only the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling: keep the smallest set with this much probability (1 = off)."),
    min_p: float = typer.Option(0.0, help="Drop tokens less likely than this fraction of the top one (0 = off)."),
    repetition_penalty: float = typer.Option(1.0, help="Penalise recently generated tokens (1 = off)."),
    repetition_window: int = typer.Option(64, help="How many recent tokens the repetition penalty looks at."),
    max_tokens: int = typer.Option(200, help="Tokens to generate per sample."),
    max_chars: Optional[int] = typer.Option(None, help="Stop a sample after this many characters."),
    stop: list[str] = typer.Option([], "--stop", help="Stop a sample at this string (not printed); repeatable."),
    num_samples: int = typer.Option(1, "-n", "--num-samples", help="Samples to generate (as one batch)."),
    separator: str = typer.Option("\n\n", help="Printed between samples in text format, where the sample before ends its last line (its line break counts as the separator's first); default: a blank line.", show_default=False),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives the same text."),
    output_format: str = typer.Option("text", "--format", help="text or jsonl (one JSON object per sample)."),
    echo_prompt: bool = typer.Option(True, "--echo-prompt/--no-echo-prompt", help="Print the prompt before its continuation (text format)."),
    quantize: str = typer.Option("none", help="none or int8 (int8 weights and activations on the CPU: faster, slightly less exact)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
) -> None:
    """Generate text from a trained model; text streams to stdout as it is generated."""
    from .quantization import QUANTIZE_CHOICES
    from .sampling import SamplingOptions, check_num_samples

    if output_format not in ("text", "jsonl"):
        raise LstmgenError(f"--format must be text or jsonl, not {output_format!r}")
    check_num_samples(num_samples)
    options = SamplingOptions(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                              repetition_window=repetition_window, max_tokens=max_tokens, max_chars=max_chars, stop=tuple(stop), seed=seed)
    options.validate()
    if quantize not in ("none", *QUANTIZE_CHOICES):
        raise LstmgenError(f"--quantize must be none or {' or '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
    _check_device_and_threads(device, threads, quantize)
    if interactive and (prompt is not None or prompt_file is not None):
        raise LstmgenError("--interactive reads its prompts from the terminal; drop --prompt/--prompt-file")
    text_prompt = "" if interactive else _read_prompt(prompt, prompt_file)
    from .api import LanguageModel

    lm = LanguageModel.load(_resolve_model(model), device=device, quantize=quantize)
    printer = _SamplePrinter(num_samples, separator, output_format, echo_prompt)
    if interactive:
        _interactive(lm, options, printer)
    else:
        printer.run(lm._sampler.stream(text_prompt, options, num_samples=num_samples), text_prompt)


def _check_device_and_threads(device: str, threads: Optional[int], quantize: str = "none") -> None:
    """Validate --device and --threads before any model is loaded, then apply --threads."""
    if device not in ("cpu", "cuda", "mps", "auto"):
        raise LstmgenError(f"--device must be one of cpu, cuda, mps, auto, not {device!r}")
    if quantize != "none" and device != "cpu":
        raise LstmgenError(f"--quantize {quantize} runs on the CPU; drop --device or use --device cpu")
    if threads is not None:
        if not 1 <= threads <= 4096:
            raise LstmgenError(f"--threads must be a whole number from 1 to 4096, not {threads}")
        import torch

        torch.set_num_threads(threads)


class _SamplePrinter:
    """Prints the samples of one prompt in order while they stream (text or jsonl)."""

    def __init__(self, num_samples: int, separator: str, output_format: str, echo_prompt: bool) -> None:
        self.num_samples = num_samples
        self.separator = separator
        self.jsonl = output_format == "jsonl"
        self.echo_prompt = echo_prompt
        self.line_open = False  # text has been printed that does not end with a newline

    def _write(self, text: str) -> None:
        if text:
            _write_stdout(text)
            self.line_open = not text.endswith("\n")

    def run(self, stream: Any, prompt: str, stop: Any = None) -> None:
        """Sample 0 streams as it is generated; later ones stream once the earlier ones are printed.

        `stop.requested` (when given) is checked after every piece: generation ends when it is set."""
        from .sampling import Sample

        buffered: dict[int, list[str]] = {}
        finished: dict[int, Sample] = {}
        current = 0
        self.line_open = False

        def open_sample(index: int) -> None:
            if self.jsonl:
                return
            if index > 0:  # the sample before ended its line: a separator's leading line break is that one
                self._write(self.separator[1:] if self.separator.startswith("\n") else self.separator)
            self._write((prompt if self.echo_prompt else "") + "".join(buffered.pop(index, [])))

        def close_sample(index: int) -> None:
            item = finished.pop(index)
            if self.jsonl:
                record = {"index": index, "prompt": prompt, "text": item.text, "tokens_generated": len(item.tokens),
                          "log_prob": item.log_prob, "finish_reason": item.finish_reason}
                self._write(json.dumps(record, ensure_ascii=False) + "\n")
            elif not ((prompt if self.echo_prompt else "") + item.text).endswith("\n"):
                self._write("\n")

        open_sample(0)
        for index, item in stream:
            if stop is not None and stop.requested:
                return
            if isinstance(item, str):
                if index == current and not self.jsonl:
                    self._write(item)
                else:
                    buffered.setdefault(index, []).append(item)
                continue
            finished[index] = item
            while current in finished:
                close_sample(current)
                current += 1
                if current < self.num_samples:
                    open_sample(current)

    def end_line(self) -> None:
        """After an interrupted generation: finish the partial line so the next output starts clean."""
        if self.line_open:
            self._write("\n")


class _StopRequest:
    """A SIGINT handler for the REPL: the first signal asks the generation to stop, the second forces it."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


REPL_HELP = "type a prompt and press Enter to continue it; :q or Ctrl-D quits, Ctrl-C stops a generation"


def _interactive(lm: Any, options: Any, printer: _SamplePrinter) -> None:
    """A small REPL: each line is a prompt, continued with the command line's options."""
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    if terminal:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # pragma: no cover - platforms without readline
            pass
    show_prompt = sys.stderr.isatty()
    if show_prompt:
        print(f"lstmgen: {REPL_HELP}", file=sys.stderr)
    while True:
        try:
            if terminal:
                line = input("> ")
            else:
                if show_prompt:
                    sys.stderr.write("> ")
                    sys.stderr.flush()
                raw = sys.stdin.readline()
                if not raw:
                    raise EOFError
                line = raw[:-1] if raw.endswith("\n") else raw
                line = line[:-1] if line.endswith("\r") else line
        except EOFError:
            if show_prompt:
                sys.stderr.write("\n")
            return
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            continue
        command = line.strip()
        if command in (":q", ":quit", ":exit"):
            return
        if command in (":h", ":help", ":?"):
            print(REPL_HELP, file=sys.stderr)
            continue
        # Ctrl-C during a generation sets a flag checked after every piece of text (an exception
        # could land anywhere, even in a finaliser that swallows it); a second Ctrl-C raises.
        stop = _StopRequest()
        previous = signal.signal(signal.SIGINT, stop)
        stream = None
        try:
            stream = lm._sampler.stream(line, options, num_samples=printer.num_samples)
            printer.run(stream, line, stop=stop)
        except KeyboardInterrupt:
            stop.requested = True
        finally:
            signal.signal(signal.SIGINT, previous)
            if stream is not None:
                stream.close()
        if stop.requested:
            printer.end_line()
            print("(stopped)", file=sys.stderr)


# -- eval -------------------------------------------------------------------------------------------


@app.command(name="eval", epilog=EXAMPLES_EVAL)
def evaluate(
    files: list[Path] = typer.Argument(..., help="Text files to evaluate.", show_default=False),
    model: Optional[str] = typer.Option(None, "-m", "--model", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    streams: Optional[int] = typer.Option(None, help="Evaluate each file as N parallel streams (default: 1 per 200k tokens, exact for small files)."),
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict or replace."),
    quantize: str = typer.Option("none", help="none or int8: evaluate the int8 model `sample --quantize int8` runs."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also report gzip -9, bz2 -9, xz -9e and a unigram model of the training tokens on the same text."),
    per_token: bool = typer.Option(False, "--per-token", help="Write one JSON line per token on stdout: id, text, surprisal in bits, top alternatives (the table goes to stderr)."),
    top_k_alternatives: int = typer.Option(5, "--top-k-alternatives", help="Alternatives listed per token by --per-token, --heatmap and --html."),
    heatmap: bool = typer.Option(False, "--heatmap", help="Print the text with each token coloured by its surprisal (marked with ‹ › « » without colour)."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="Write the surprisal heatmap as a self-contained HTML page (hover for details)."),
) -> None:
    """Report perplexity, bits per byte and bits per character of a model on text files, next to compressors and a unigram model."""
    from .quantization import QUANTIZE_CHOICES

    if streams is not None and not 1 <= streams <= 4096:
        raise LstmgenError(f"--streams must be a whole number from 1 to 4096, not {streams}")
    if quantize not in ("none", *QUANTIZE_CHOICES):
        raise LstmgenError(f"--quantize must be none or {' or '.join(QUANTIZE_CHOICES)}, not {quantize!r}")
    _check_device_and_threads(device, threads, quantize)
    detail = _check_eval_detail(files, as_json, streams, per_token, top_k_alternatives, heatmap, html_path)
    for path in files:
        _check_text_file(path, "eval")
        _refuse_blank_text(path)
    model_path = _model_and_page(model, files, html_path)
    from .api import LanguageModel

    lm = LanguageModel.load(model_path, device=device, quantize=quantize)
    results = [_evaluate_in_context(lm, path, streams, errors, baselines, detail) for path in files]
    for result in results:
        if not result["tokens"] or not math.isfinite(result["nll"]):
            raise LstmgenError(f"{result['file']} has no text to score (nothing but blank lines, or nothing the model reads); give a file with text")
    if quantize != "none":
        for result in results:
            result["quantize"] = quantize
    if as_json:
        payload: Any = results[0] if len(results) == 1 else {"files": results, "total": _combine(results, baselines)}
        _write_stdout(json.dumps(payload, allow_nan=False, default=str) + "\n" if _finite(payload) else json.dumps(payload) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=None)
    for column in ("file", "tokens", "nats/token", "perplexity", "bits/byte", "bits/char"):
        table.add_column(column, justify="left" if column == "file" else "right")
    rows = results + ([{**_combine(results, baselines), "file": "all"}] if len(results) > 1 else [])
    for r in rows:
        table.add_row(str(r["file"]), f"{r['tokens']:,}", f"{r['nll']:.4f}", f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}", f"{r['bits_per_char']:.4f}")
    console = Console(no_color=bool(os.environ.get("NO_COLOR"))) if sys.stdout.isatty() and not per_token else _stderr_console()
    console.print(table)
    _print_baselines(rows, console)


def _refuse_blank_text(path: Path, limit: int = 1 << 20) -> None:
    """A file of nothing but blank lines has no text to score: say so instead of computing a figure of nothing.

    Only files up to `limit` bytes are read for this (a larger one of white space alone is no one's held-out text)."""
    from .fsutil import read_head

    try:
        if os.stat(path).st_size > limit or read_head(path, limit).strip():
            return
    except (OSError, ValueError):
        return  # the reader reports it
    raise LstmgenError(f"{path} holds only blank lines and white space: there is no text to score; give a file with text")


def _combine(results: list[dict[str, Any]], baselines: bool = False) -> dict[str, Any]:
    from .evaluation import combine_baselines, summarize

    nll = sum(r["nll"] * r["tokens"] for r in results)
    total = summarize(nll, sum(r["tokens"] for r in results), sum(r["bytes"] for r in results), sum(r["chars"] for r in results))
    if baselines:
        total["baselines"] = combine_baselines(results)
    return total


def _finite(payload: Any) -> bool:
    text = json.dumps(payload)
    return "NaN" not in text and "Infinity" not in text


# -- eval in context: baselines, per-token surprisal, heatmaps -------------------------------------------

MAX_TOP_K_ALTERNATIVES = 100


def _check_eval_detail(files: list[Path], as_json: bool, streams: Optional[int], per_token: bool, top_k: int, heatmap: bool,
                       html_path: Optional[Path]) -> Optional[dict[str, Any]]:
    """Validate eval's per-token options before any work; None when only the summary is wanted."""
    if not 0 <= top_k <= MAX_TOP_K_ALTERNATIVES:
        raise LstmgenError(f"--top-k-alternatives must be a whole number from 0 to {MAX_TOP_K_ALTERNATIVES}, not {top_k}")
    if not (per_token or heatmap or html_path is not None):
        return None
    if per_token and as_json:
        raise LstmgenError("--per-token writes JSON lines on stdout; drop --json (the summary table goes to stderr)")
    if per_token and heatmap:
        raise LstmgenError("--per-token and --heatmap both write to stdout; use --per-token with --html instead of --heatmap")
    if heatmap and as_json:
        raise LstmgenError("--heatmap prints text on stdout; drop --json or write the heatmap with --html")
    if (heatmap or html_path is not None) and len(files) > 1:
        raise LstmgenError("--heatmap and --html show one file; evaluate the files one at a time")
    if streams is not None and streams != 1:
        raise LstmgenError("--per-token, --heatmap and --html read the text as one stream; drop --streams")
    return {"per_token": per_token, "top_k": top_k, "heatmap": heatmap, "html": html_path, "multi": len(files) > 1}


def _evaluate_in_context(lm: Any, path: Path, streams: Optional[int], errors: str, baselines: bool, detail: Optional[dict[str, Any]]) -> dict[str, Any]:
    """One file: the summary `eval --json` prints, its baselines, and any per-token output."""
    from .evaluation import TextWithContext, baselines as baseline_report, evaluate_tokens, summarize, token_surprisal

    text = TextWithContext(lm.tokenizer, path, errors=errors, compress=baselines, documents=lm.documents)
    if detail is None:
        result = evaluate_tokens(lm._eval_model, text.tokens, text.num_bytes, text.num_chars, streams, lm.device, lm.fresh_starts)
    else:
        surprisal = token_surprisal(lm._eval_model, text.tokens, top_k=detail["top_k"], device=lm.device)
        result = summarize(surprisal.nll, len(text.tokens) - 1, text.num_bytes, text.num_chars)
        result["streams"] = 1
        if detail["per_token"]:
            _write_per_token(lm.tokenizer, surprisal, str(path) if detail["multi"] else None)
        if detail["heatmap"] or detail["html"] is not None:
            _show_heatmap(lm.tokenizer, surprisal, path, result, detail)
    result["file"] = str(path)
    if baselines:
        counts = (lm.meta.get("training") or {}).get("token_counts")
        result["baselines"] = baseline_report(text.tokens, text.num_bytes, text.num_chars, text.compressed, counts, lm.tokenizer.vocab_size)
        if result["baselines"].get("unigram_note"):
            _info(f"note: {result['baselines']['unigram_note']}")
    return result


def _token_text(tokenizer: Any, token_id: int) -> tuple[str, Optional[str]]:
    """A token's text, and its bytes in hex when they are not whole UTF-8 characters on their own."""
    data = tokenizer.token_bytes(int(token_id))
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), data.hex()


def _write_per_token(tokenizer: Any, surprisal: Any, file: Optional[str]) -> None:
    """JSON lines: {index, id, text[, bytes], surprisal_bits, prob, alternatives: [{id, text, prob}]}."""
    texts: dict[int, tuple[str, Optional[str]]] = {}

    def text_of(token_id: int) -> tuple[str, Optional[str]]:
        if token_id not in texts:
            texts[token_id] = _token_text(tokenizer, token_id)
        return texts[token_id]

    lines: list[str] = []
    for index in range(len(surprisal.surprisal_bits)):
        token_id = int(surprisal.tokens[index + 1])
        text, raw = text_of(token_id)
        bits = float(surprisal.surprisal_bits[index])
        record: dict[str, Any] = {"index": index, "id": token_id, "text": text}
        if raw is not None:
            record["bytes"] = raw
        record["surprisal_bits"] = round(bits, 4)
        record["prob"] = float(f"{2.0 ** -bits:.6g}")
        record["alternatives"] = [{"id": int(alt), "text": text_of(int(alt))[0], "prob": float(f"{prob:.6g}")}
                                  for alt, prob in zip(surprisal.top_ids[index], surprisal.top_probs[index])]
        if file is not None:
            record = {"file": file, **record}
        lines.append(json.dumps(record, ensure_ascii=False))
        if len(lines) >= 2000:
            _write_stdout("\n".join(lines) + "\n")
            lines = []
    if lines:
        _write_stdout("\n".join(lines) + "\n")


def _stdout_color_console() -> Any:
    """A rich console for coloured output on stdout, or None where colour is off (NO_COLOR, not a terminal)."""
    if os.environ.get("NO_COLOR"):
        return None
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal and console.color_system is not None else None


def _heatmap_spans(tokenizer: Any, surprisal: Any) -> list[Any]:
    from .inspection import group_pieces
    from .visualize import Span

    spans = []
    for piece in group_pieces(tokenizer, surprisal.tokens, start=1):
        bits = float(surprisal.surprisal_bits[piece.first - 1 : piece.last].sum())
        position = piece.first - 1
        actual = int(surprisal.tokens[piece.first])
        alternatives = [[_token_text(tokenizer, int(alt))[0], round(float(prob), 5), int(alt) == actual]
                        for alt, prob in zip(surprisal.top_ids[position], surprisal.top_probs[position])]
        info: dict[str, Any] = {"bits": round(bits, 3), "p": float(f"{2.0 ** -bits:.4g}"), "alternatives": alternatives}
        if piece.token_count > 1:
            info["tokens"] = piece.token_count
        spans.append(Span(piece.text, bits, info))
    return spans


def _show_heatmap(tokenizer: Any, surprisal: Any, path: Path, result: dict[str, Any], detail: dict[str, Any]) -> None:
    from .visualize import html_page, print_spans, surprisal_scale, write_html

    spans = _heatmap_spans(tokenizer, surprisal)
    scale = surprisal_scale()
    if detail["heatmap"]:
        print_spans(spans, scale, _write_stdout, _stdout_color_console())
    if detail["html"] is not None:
        summary = (f"{result['tokens']:,} tokens, {result['bits_per_byte']:.4f} bits/byte, {result['bits_per_char']:.4f} bits/char, "
                   f"perplexity {result['perplexity']:.2f}. Each piece of text is coloured by its surprisal, −log₂ p, under the model.")
        fields = [{"key": "bits", "label": "surprisal", "unit": "bits", "digits": 2}, {"key": "p", "label": "probability", "digits": "pct"},
                  {"key": "tokens", "label": "tokens in this piece", "digits": 0}]
        write_html(detail["html"], html_page(f"Surprisal: {path.name}", spans, scale, summary, fields))
        _info(f"wrote {detail['html']}")


def _print_baselines(rows: list[dict[str, Any]], console: Any) -> None:
    """Bits per byte of the model next to the unigram model and the compressors (lower is better)."""
    from rich.table import Table

    from .evaluation import COMPRESSORS

    if not any(r.get("baselines") for r in rows):
        return
    has_unigram = any((r.get("baselines") or {}).get("unigram") for r in rows)
    table = Table(title="bits per byte, lower is better", title_justify="left")
    columns = ["file", "this model"] + (["unigram"] if has_unigram else []) + [label for label, _ in COMPRESSORS.values()]
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


# -- info -------------------------------------------------------------------------------------------


@app.command(epilog=EXAMPLES_INFO)
def info(
    model: Optional[str] = typer.Argument(None, help=MODEL_HELP, show_default=False),
    model_option: Optional[str] = typer.Option(None, "-m", "--model", help="The model, given as the other commands take it (instead of the argument)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON on stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write the train/validation loss curves as a PNG (needs matplotlib: pip install 'lstmgen[plot]')."),
) -> None:
    """Show a bundle's configuration, training summary, versions and loss curves."""
    from .bundle import load_bundle
    from .model import LSTMLanguageModel

    if model is not None and model_option is not None:
        raise LstmgenError("give the model once: `lstmgen info MODEL` or `lstmgen info -m MODEL`")
    path = _resolve_model(model if model is not None else model_option)
    if plot is not None:
        from .fsutil import PNG, check_output, declare_input

        _require_matplotlib()
        declare_input(path, "the model")
        check_output(plot, PNG, "plot", "--plot")
    bundle = load_bundle(path)
    parameters = LSTMLanguageModel(bundle.model_config).num_parameters()
    meta = {**bundle.meta, "parameters": parameters}
    training = meta.get("training", {})
    from .visualize import read_curve

    curve = read_curve(training)
    if plot is not None:
        if curve is None:
            raise LstmgenError(f"{path} has no training curve to plot (it is written by `lstmgen train` at each validation)")
        from .visualize import plot_curves_png

        plot_curves_png(curve, plot, f"{path.name}: training curves")
        _info(f"wrote {plot}")
    if as_json:
        _write_stdout(json.dumps(meta, indent=2) + "\n")
        return
    cfg = meta["model"]
    lines = [
        f"model       {cfg['num_layers']}×{cfg['hidden_size']} {cfg['cell'].upper()}, embedding {cfg['embedding_size']}, vocabulary {cfg['vocab_size']}, {parameters:,} parameters",
        f"training    {training.get('steps', '?')} steps, {training.get('tokens_seen', 0):,} tokens, {training.get('elapsed_seconds', 0):.0f} s on {training.get('device', '?')}",
    ]
    if training.get("best_val_loss") is not None:
        lines.append(f"validation  {training['best_val_loss']:.4f} nats/token, {training.get('best_val_bits_per_char') or float('nan'):.4f} bits/char (step {training.get('best_val_step')})")
    lines.extend(_info_config_lines(meta))
    lines.append(f"corpus      {_corpus_files_text(training.get('corpus_files'))}sha256 {training.get('corpus_sha256', '?')}")
    versions = meta.get("versions", {})
    lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    # The summary is data (`lstmgen info MODEL > f` keeps it): stdout, like --json.
    _write_stdout("\n".join(lines) + "\n")
    if curve is not None:
        import io

        from rich.console import Console

        from .visualize import print_curve

        width = shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 80
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, force_terminal=sys.stdout.isatty() and not os.environ.get("NO_COLOR"),
                          no_color=bool(os.environ.get("NO_COLOR")), highlight=False)
        print_curve(curve, console, width=max(20, min(72, width - 12)))
        _write_stdout("\n" + buffer.getvalue())
    else:
        _write_stdout("curves      none (the bundle has no training.curve)\n")


def _corpus_files_text(files: Any) -> str:
    if not isinstance(files, list) or not files:
        return ""
    shown = [f"{f.get('name', '?')} ({f['bytes']:,} bytes)" if isinstance(f.get("bytes"), int) else str(f.get("name", "?"))
             for f in files[:3] if isinstance(f, dict)]
    return ", ".join(shown) + (f" and {len(files) - 3} more" if len(files) > 3 else "") + ", " if shown else ""


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LstmgenError("--plot needs matplotlib, which is not installed; install it with: pip install 'lstmgen[plot]'") from None


def _info_config_lines(meta: dict[str, Any]) -> list[str]:
    """Tokenizer, training options and corpus files of `lstmgen info` (what is there, tolerantly)."""
    lines = []
    tokenizer = meta.get("tokenizer") or {}
    settings = tokenizer.get("settings") or {}
    described = ", ".join(f"{key} {settings[key]}" for key in ("model_type", "documents", "character_coverage") if settings.get(key) is not None)
    lines.append(f"tokenizer   {tokenizer.get('type', '?')}, {tokenizer.get('vocab_size', '?')} pieces" + (f", {described}" if described else ""))
    train_config = (meta.get("training") or {}).get("train_config")
    if isinstance(train_config, dict) and train_config:
        keys = ("batch_size", "seq_len", "learning_rate", "weight_decay", "warmup_steps", "grad_clip", "seed")
        lines.append("train with  " + ", ".join(f"{key} {train_config[key]}" for key in keys if key in train_config))
    if meta.get("created"):
        lines.append(f"created     {meta['created']} (weights {(meta.get('weights') or {}).get('dtype', 'float32')})")
    return lines


# -- models -----------------------------------------------------------------------------------------


@app.command(name="models", epilog=EXAMPLES_MODELS)
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON on stdout: name, path, source, size, description."),
) -> None:
    """List the models -m NAME can name: the built-ins and the bundles in your model directory."""
    from .registry import list_models

    entries = list_models(os.environ)
    if as_json:
        _write_stdout(json.dumps([entry.as_dict() for entry in entries], ensure_ascii=False) + "\n")
    elif entries:
        _write_stdout(_models_table(entries))
    for line in _models_notes(entries):
        _info(line)


def _models_table(entries: list[Any]) -> str:
    """Plain aligned columns: greppable and never wrapped, unlike a rich table in a pipe."""
    rows = [("NAME", "SOURCE", "SIZE", "DESCRIPTION")] + [(e.name, e.source, _human_bytes(e.size), e.description) for e in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}\n" for row in rows)


def _models_notes(entries: list[Any]) -> list[str]:
    """The lines on stderr under the list: where user models go, which model runs without -m, name clashes."""
    from .registry import resolve_model, user_model_dir

    directory = user_model_dir(os.environ)
    state = "" if directory.is_dir() else ", which does not exist yet"
    notes = [f"your models: {directory}{state}; put NAME.lstmgen there to use -m NAME (LSTMGEN_HOME or XDG_DATA_HOME move it)"]
    if not entries:
        return ["no models found: the built-in models are not installed and you have none; train one with `lstmgen train corpus.txt`", *notes]
    try:
        notes.append(f"without -m: {resolve_model(None, os.environ)}")
    except LstmgenError as error:
        notes.append(f"without -m: {error}")
    user_names = {e.name for e in entries if e.source == "user"}
    notes += [f"-m {e.name} uses your model, not the built-in one" for e in entries if e.source == "builtin" and e.name in user_names]
    return notes


EXAMPLES_CONVERT = """
Examples:\n
  lstmgen convert shakespeare.lstmgen -o shakespeare-half.lstmgen --dtype float16\n
  lstmgen eval -m shakespeare-half.lstmgen held-out.txt   # check what the smaller file costs
"""


@app.command(epilog=EXAMPLES_CONVERT)
def convert(
    model: str = typer.Argument(..., help="Bundle path or model name.", metavar="MODEL"),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle to write.", metavar="PATH"),
    dtype: str = typer.Option("float16", help="Weights dtype: float16 (half the size), bfloat16 or float32."),
) -> None:
    """Rewrite a bundle with its weights in another dtype, e.g. half the size to ship or share it."""
    from .bundle import convert_bundle
    from .fsutil import BUNDLE, check_output, declare_input
    from .registry import resolve_model

    source = resolve_model(model, os.environ)
    declare_input(source, "the bundle being converted")
    check_output(output, BUNDLE, "bundle")
    converted = convert_bundle(source, output, dtype)
    _info(f"wrote {output}: {output.stat().st_size / 1e6:.1f} MB ({converted.meta['weights']['dtype']} weights; was {source.stat().st_size / 1e6:.1f} MB)")


def _human_bytes(size: int) -> str:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# -- inspect ----------------------------------------------------------------------------------------

EXAMPLES_INSPECT = """
Examples:\n
  lstmgen inspect held-out.txt --find\n
  lstmgen inspect -m shakespeare.lstmgen held-out.txt --find\n
  lstmgen inspect -m shakespeare.lstmgen held-out.txt --neuron 1:137\n
  lstmgen inspect -m shakespeare.lstmgen held-out.txt --neuron 1:137 --html cell.html
"""


@app.command(name="inspect", epilog=EXAMPLES_INSPECT)
def inspect_command(
    file: Path = typer.Argument(..., help="Text file to run the model over (UTF-8).", show_default=False),
    model: Optional[str] = typer.Option(None, "-m", "--model", help=MODEL_HELP),
    neuron: Optional[str] = typer.Option(None, "--neuron", help="LAYER:CELL, both counted from 0: colour the text by this cell's activation."),
    find: bool = typer.Option(False, "--find", help="Rank cells by how strongly they track simple features of the text (quotes, brackets, position in line, ...)."),
    state: Optional[str] = typer.Option(None, "--state", help="c (cell state; the default for --neuron) or h (output). --find scans both unless given."),
    html_path: Optional[Path] = typer.Option(None, "--html", help="With --neuron: also write the coloured text as a self-contained HTML page."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    top: int = typer.Option(3, "--top", help="Cells listed per feature (--find)."),
    max_tokens: int = typer.Option(20_000, "--max-tokens", help="Read at most this many tokens from the start of the file."),
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict or replace."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
) -> None:
    """Look inside a model: colour a text by one cell's activation, or find the cells that track features of it."""
    if find == (neuron is not None):
        raise LstmgenError("give --neuron LAYER:CELL to colour the text by one cell, or --find to rank cells by feature (one of them)")
    if state is not None and state not in ("c", "h"):
        raise LstmgenError(f"--state must be c (cell state) or h (output), not {state!r}")
    if html_path is not None and neuron is None:
        raise LstmgenError("--html draws one cell: use it with --neuron (run --find first to pick one)")
    if not 1 <= top <= 100:
        raise LstmgenError(f"--top must be a whole number from 1 to 100, not {top}")
    if not 1 <= max_tokens <= 10_000_000:
        raise LstmgenError(f"--max-tokens must be a whole number from 1 to 10000000, not {max_tokens}")
    _check_device_and_threads("cpu", threads)
    _check_text_file(file, "inspect")
    model_path = _model_and_page(model, [file], html_path)
    from .api import LanguageModel
    from .inspection import STATE_KINDS, activations, check_state_kind, group_pieces

    lm = LanguageModel.load(model_path)
    cell = lm.config.cell
    if cell not in STATE_KINDS:
        raise LstmgenError(f"cannot inspect {cell!r} cells; the cells are {', '.join(STATE_KINDS)}")
    if neuron is not None:
        from .inspection import parse_neuron

        layer, index = parse_neuron(neuron, lm.config.num_layers, lm.config.hidden_size)
        kinds: tuple[str, ...] = (state or ("c" if "c" in STATE_KINDS[cell] else "h"),)
    else:
        kinds = (state,) if state is not None else STATE_KINDS[cell]
    for kind in kinds:
        check_state_kind(cell, kind)
    ids, total = _inspect_ids(lm.tokenizer, file, errors, max_tokens)
    if total > max_tokens:
        _info(f"inspecting the first {max_tokens:,} of {total:,} tokens; raise --max-tokens for more")
    acts = activations(lm.model, ids, kinds)
    pieces = group_pieces(lm.tokenizer, ids, start=1)
    if neuron is not None:
        _show_neuron(acts, pieces, layer, index, kinds[0], cell, file, html_path, as_json)
    else:
        _show_find(acts, pieces, kinds, top, file, model, as_json, lm.config)


def _inspect_ids(tokenizer: Any, path: Path, errors: str, max_tokens: int) -> tuple[list[int], int]:
    """[start] + the ids of the file's beginning (at most max_tokens), and how many the part read has."""
    from .data import CorpusReader

    lines, chars = [], 0
    for line in CorpusReader(path, errors).lines():
        lines.append(line)
        chars += len(line)
        if chars > 16 * max_tokens + 1024:  # far more text than max_tokens tokens need
            break
    encoded = tokenizer.encode("".join(lines))
    if not encoded:
        raise LstmgenError(f"{path} has no text to inspect")
    return [tokenizer.bos_id] + encoded[:max_tokens], len(encoded)


def _show_neuron(acts: Any, pieces: list[Any], layer: int, index: int, kind: str, cell: str, path: Path, html_path: Optional[Path], as_json: bool) -> None:
    import numpy as np

    from .inspection import STATE_LABELS
    from .visualize import Span, activation_scale, html_page, print_spans, write_html

    values = acts.cell(layer, index, kind)
    shown = np.array([values[p.last] for p in pieces], dtype=np.float64)
    label = f"cell {layer}:{index} {STATE_LABELS[kind]} ({kind})"
    if as_json:
        payload = {"neuron": f"{layer}:{index}", "layer": layer, "cell": index, "state": kind, "file": str(path),
                   "min": float(shown.min()), "max": float(shown.max()), "mean": float(shown.mean()),
                   "pieces": [{"text": p.text, "value": round(float(v), 5)} for p, v in zip(pieces, shown)]}
        _write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
    limit = float(np.percentile(np.abs(shown), 99)) if len(shown) else 1.0
    spread = float(shown.std()) if len(shown) > 1 else 0.0
    low, high = (float(shown.mean()) - spread, float(shown.mean()) + spread) if spread > 1e-9 else (-math.inf, math.inf)
    scale = activation_scale(limit if limit > 1e-6 else 1.0, label, low, high)
    spans = [Span(p.text, float(v), {"value": round(float(v), 4)} | ({"tokens": p.token_count} if p.token_count > 1 else {}))
             for p, v in zip(pieces, shown)]
    if not as_json:
        print_spans(spans, scale, _write_stdout, _stdout_color_console())
    if html_path is not None:
        summary = (f"{cell.upper()} layer {layer}, cell {index}, {STATE_LABELS[kind]} {kind}, after reading each piece of {path.name}: "
                   f"red positive, blue negative, full colour at ±{scale.high:.3g} (range {shown.min():.3g} … {shown.max():.3g}).")
        fields = [{"key": "value", "label": f"{kind}[{layer}:{index}]", "digits": 4}, {"key": "tokens", "label": "tokens in this piece", "digits": 0}]
        write_html(html_path, html_page(f"{label}: {path.name}", spans, scale, summary, fields))
        _info(f"wrote {html_path}")


def _show_find(acts: Any, pieces: list[Any], kinds: tuple[str, ...], top: int, path: Path, model: Optional[str], as_json: bool, config: Any) -> None:
    from .inspection import STATE_LABELS, chance_level, find_cells, text_features

    features = text_features([p.text for p in pieces])
    matches, constant = find_cells(acts, [p.last for p in pieces], features, top=top, kinds=kinds)
    chance = chance_level(len(pieces))
    if as_json:
        payload = {
            "file": str(path), "pieces": len(pieces), "tokens": len(acts.ids) - 1, "cell": config.cell, "layers": config.num_layers,
            "hidden_size": config.hidden_size, "states": list(kinds), "chance_r": round(chance, 4),
            "features": [{"name": m.name, "description": m.description, "context": m.context, "mean": round(m.mean, 4),
                          "top": [c.as_dict() for c in m.top]} for m in matches],
            "constant_features": constant,
        }
        _write_stdout(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False, width=None if sys.stdout.isatty() else 140)
    states = " and ".join(f"{STATE_LABELS[k]} ({k})" for k in kinds)
    table = Table(title=f"cells that track features of {path.name}: {len(pieces):,} pieces, {states} of {config.num_layers}×{config.hidden_size} cells",
                  title_justify="left", caption=f"Above the line: features of the context (a cell needs memory to track them); below: of the piece just read. "
                                                f"r: correlation over the pieces; |r| above {chance:.3f} is unlikely by chance. "
                                                "LAYER:CELL counts from 0, as --neuron takes it.", caption_justify="left")
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
        _info(f"features constant over this text (nothing to correlate): {', '.join(constant)}")
    if matches and matches[0].top:
        best = matches[0].top[0]  # the strongest context feature's cell when there is one
        hint_model = f" -m {model}" if model else ""
        _info(f"see one: lstmgen inspect{hint_model} {path} --neuron {best.layer}:{best.index} --state {best.kind}")


# -- entry point ------------------------------------------------------------------------------------


def _version_callback(value: bool) -> None:
    if value:
        _write_stdout(f"lstmgen {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only print errors on stderr."),
) -> None:
    _setup_logging(quiet)


def _usage_hint(error: Any) -> str:
    """The fix for a likely slip (`lstmgen sample corpus.txt`), else where the usage is explained."""
    if error.ctx is None:
        return ""
    if error.ctx.info_name == "sample" and "unexpected extra argument" in error.format_message():
        return "; sample takes no file: choose the model with `lstmgen sample -m MODEL` and the text to continue with --prompt or --prompt-file"
    return f" (see `{error.ctx.command_path} --help`)"


def _error(message: str, code: int) -> None:
    try:
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    _exit_quietly(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _exit_quietly(code: int) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        _silence_stdout()
    sys.exit(code)


#: Standard streams that were closed when lstmgen started (`<&-`, `>&-`, `2>&-`); they now lead to /dev/null.
_CLOSED_STREAMS: set[str] = set()


def _reopen_closed_streams() -> None:
    """Give a closed standard stream /dev/null, so that no file lstmgen opens can take its descriptor
    (a bundle opened as descriptor 1 would receive what `print` writes)."""
    _CLOSED_STREAMS.clear()
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        except OSError:
            continue
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        _CLOSED_STREAMS.add(name)
        setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False, encoding="utf-8", errors="replace"))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with lstmgen's error conventions (one line, exit 2; 1 for a machine failure; 130 on Ctrl-C)."""
    from .fsutil import MACHINE_ERRNOS, reset_inputs

    _reopen_closed_streams()
    reset_inputs()
    try:
        code = app(args=argv, standalone_mode=False, prog_name="lstmgen")
        if isinstance(code, int) and code:
            _exit_quietly(code)
    except typer.Exit as done:
        _exit_quietly(done.exit_code)
    except typer.Abort:
        _error("interrupted", 130)
    except click_exceptions.UsageError as error:
        _error(" ".join(error.format_message().split()) + _usage_hint(error), 2)
    except click_exceptions.ClickException as error:
        _error(" ".join(error.format_message().split()), 2)
    except LstmgenError as error:
        _error(str(error), error.exit_code)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except _Terminated:
        _error("terminated", 143)
    except BrokenPipeError:
        _exit_quietly(0)
    except SystemExit:
        # Click turns a broken pipe anywhere inside a command (`lstmgen --help | head -1`) into sys.exit(1)
        # after wrapping the streams in PacifyFlushWrapper: end quietly with 0, as _write_stdout does.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _silence_stdout()
            _exit_quietly(0)
        raise
    except MemoryError:
        _error("out of memory; use a smaller model, --batch-size or input", 1)
    except OSError as error:
        # An OS error no check turned into a message: one line all the same. A full disk (or a file-size
        # limit) hit by a write that is not one of the atomic writes (stdout to a file) fails the machine: exit 1.
        where = error.filename or "the output"
        if error.errno in MACHINE_ERRNOS:
            _error(f"could not write {where}: {error.strerror}; free disk space or choose another location", 1)
        _error(f"{where}: {error.strerror or error}", 2)
    except RuntimeError as error:
        # PyTorch reports a failed allocation as a RuntimeError (torch.cuda.OutOfMemoryError is one too).
        text = str(error)
        if "out of memory" not in text.lower() and "can't allocate memory" not in text:
            raise
        _error("out of memory; use a smaller model, --batch-size, --num-samples or input", 1)
    _exit_quietly(0)
