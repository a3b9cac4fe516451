"""The command line: parse options, call the core, print. Data goes to stdout, the rest to stderr."""

from __future__ import annotations

import json
import logging
import math
import os
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
  lstmgen tokenize poems.txt --model-type char -o poems.tok
"""
EXAMPLES_TRAIN = """
Examples:\n
  lstmgen train corpora/tinyshakespeare.txt -o shakespeare.lstmgen --max-time 5m\n
  lstmgen train corpus.txt --tokenizer corpus.tok --hidden-size 256 --max-steps 2000\n
  lstmgen train corpus.txt -o corpus.lstmgen --resume
"""
EXAMPLES_SAMPLE = """
Examples:\n
  lstmgen sample -m shakespeare.lstmgen --prompt "ROMEO:" --temp 0.8 --max-tokens 300 | head -20\n
  echo "JULIET:" | lstmgen sample -m shakespeare.lstmgen --prompt - -n 3 --seed 7
"""
EXAMPLES_EVAL = """
Examples:\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt\n
  lstmgen eval -m shakespeare.lstmgen held-out.txt --json | jq .bits_per_char
"""
EXAMPLES_INFO = """
Example:\n
  lstmgen info shakespeare.lstmgen --json
"""


# -- output helpers ---------------------------------------------------------------------------------


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False)


def _write_stdout(text: str) -> None:
    """Write data to stdout; when the reader has gone (`| head`), stop quietly."""
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
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict (refuse) or replace (with U+FFFD)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Train a lossless SentencePiece tokenizer and encode the corpus to token ids."""
    from .config import TokenizerConfig, _check_float
    from .data import tokenize_corpus

    _check_float("--val-fraction", val_fraction, low=0.0, high=0.5, low_open=True)
    config = TokenizerConfig(vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage)
    config.validate()
    directory = output or Path(corpus[0].stem + ".tok")
    if directory.exists() and not directory.is_dir():
        raise LstmgenError(f"output {directory} exists and is not a directory; choose another -o")
    from .fsutil import check_writable_directory

    check_writable_directory(directory / "tokens.json" if directory.exists() else directory, "tokenized corpus")
    progress, update = _progress_bar("encoding")
    if progress:
        progress.start()
    try:
        result = tokenize_corpus(corpus, config, directory, val_fraction, errors=errors, on_progress=update)
    finally:
        if progress:
            progress.stop()
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

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            action = "resuming" if event["resumed"] else "training"
            model = event["model"]
            _info(
                f"{action} a {model['num_layers']}×{model['hidden_size']} LSTM ({event['parameters']:,} parameters, "
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
                _info(f"{status} {_format_seconds(event['elapsed'])} elapsed")
        elif kind == "val":
            self.val_loss, self.val_bpc = event["val_loss"], event["val_bits_per_char"]
            if not self.progress:
                mark = " (best)" if event["best"] else ""
                _info(f"validation at step {event['step']}: loss {event['val_loss']:.4f} nats/token, {event['val_bits_per_char']:.4f} bits/char{mark}")
        elif kind == "end":
            self.close()
            best = event["best_val_loss"]
            best_text = f"best validation loss {best:.4f} nats/token ({event['best_val_bits_per_char']:.4f} bits/char)" if best is not None else "no validation yet"
            _info(
                f"done after {event['steps']} steps, {_format_seconds(event['elapsed'])}, "
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
    hidden_size: Optional[int] = typer.Option(None, help="LSTM units per layer (default: from corpus size and device)."),
    embedding_size: Optional[int] = typer.Option(None, help="Embedding size (default: the hidden size)."),
    layers: Optional[int] = typer.Option(None, help="Number of LSTM layers."),
    dropout: Optional[float] = typer.Option(None, help="Dropout rate."),
    tie_weights: bool = typer.Option(True, "--tie-weights/--no-tie-weights", help="Share the embedding and output weights."),
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
    val_every: Optional[int] = typer.Option(None, help="Validate every N steps."),
    seed: Optional[int] = typer.Option(None, help="Random seed (a fixed seed makes a CPU run reproducible)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or mps."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
    precision: Optional[str] = typer.Option(None, help="auto (bf16 autocast on GPUs that support it, else fp32), fp32, bf16 or fp16."),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Compile the model with torch.compile (GPU runs)."),
    checkpoint_every: Optional[str] = typer.Option(None, help="Checkpoint interval, e.g. 10m."),
    log_every: Optional[int] = typer.Option(None, help="Log every N steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run that wrote -o exactly where it stopped."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this bundle's weights and tokenizer (fine-tuning)."),
    errors: str = typer.Option("strict", help="Invalid UTF-8 in the corpus: strict or replace."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved configuration as JSON and exit."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="A TOML file with [tokenizer], [model] and [train] tables; flags override it."),
) -> None:
    """Train an LSTM language model on a corpus and write the best model as one .lstmgen bundle."""
    from .bundle import load_bundle
    from .config import TokenizerConfig, TrainConfig, apply_settings, load_config_file, parse_duration
    from .data import check_corpus_file
    from .fsutil import check_writable_directory
    from .distributed import setup as setup_distributed
    from .trainer import Trainer, load_checkpoint_config, resolve_device, run_directory, suggest_model

    group = setup_distributed()
    if not group.is_main:
        _setup_logging(quiet=True)
    for path in corpus:
        check_corpus_file(path)
    output = output or Path(corpus[0].stem + ".lstmgen")
    check_writable_directory(output, "bundle")
    run_dir = run_directory(output)

    saved = load_checkpoint_config(output) if resume else None
    if resume and saved is None:
        raise LstmgenError(f"nothing to resume: {run_dir / 'checkpoint.ckpt'} does not exist; run without --resume")
    file_settings = load_config_file(config_file) if config_file is not None else {}
    train_config = saved[1] if saved else TrainConfig()
    if not saved and resolve_device(device or train_config.device).type == "cuda":
        train_config.batch_size = 128  # a GPU wants wider batches; flags and config files still win
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
    device_obj = resolve_device(train_config.device)
    if train_config.threads:
        import torch

        torch.set_num_threads(train_config.threads)

    tokenizer_config = TokenizerConfig()
    apply_settings(tokenizer_config, file_settings.get("tokenizer", {}), "tokenizer")
    for name, value in {"vocab_size": vocab_size, "model_type": model_type}.items():
        if value is not None:
            setattr(tokenizer_config, name, value)
    tokenizer_config.validate()
    init_bundle = load_bundle(init_from) if init_from is not None else None
    if group.is_main:
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            corpus_data = _prepare_corpus(corpus, run_dir / "tokens", tokenizer_config, tokenizer_dir, init_bundle, val_fraction, errors, resume)
        except BaseException:
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        group.barrier()
    else:
        group.barrier()  # rank 0 has written the encoding; the other ranks find it ready
        corpus_data = _prepare_corpus(corpus, run_dir / "tokens", tokenizer_config, tokenizer_dir, init_bundle, val_fraction, errors, resume)

    if saved:
        model_config = saved[0]
    elif init_bundle is not None:
        model_config = init_bundle.model_config
    else:
        model_config = suggest_model(corpus_data.split, corpus_data.meta["vocab_size"], device_obj)
    file_model = dict(file_settings.get("model", {}))
    if file_model and not saved and init_bundle is None:
        if "hidden_size" in file_model and "embedding_size" not in file_model:
            file_model["embedding_size"] = file_model["hidden_size"]
        apply_settings(model_config, file_model, "model")
    model_overrides = {"hidden_size": hidden_size, "embedding_size": embedding_size, "num_layers": layers, "dropout": dropout}
    for name, value in model_overrides.items():
        if value is not None:
            setattr(model_config, name, value)
    if hidden_size is not None and embedding_size is None and not saved and init_bundle is None:
        model_config.embedding_size = hidden_size
    if not tie_weights:
        model_config.tie_weights = False
    model_config.validate()
    if init_bundle is not None and (model_config != init_bundle.model_config):
        raise LstmgenError("--init-from keeps the base model's sizes; drop --hidden-size/--embedding-size/--layers/--no-tie-weights")

    if dry_run:
        if group.is_main:
            _write_stdout(json.dumps(_dry_run_report(model_config, train_config, corpus_data, device_obj), indent=2) + "\n")
        return
    if not resume and (run_dir / "checkpoint.ckpt").exists():
        logging.getLogger("lstmgen").warning("%s holds a checkpoint of an earlier run; starting over (use --resume to continue it)", run_dir)
    display = _TrainDisplay()
    trainer = Trainer(corpus_data, model_config, train_config, output, on_event=display, resume=resume,
                      init_weights=init_bundle.tensors if init_bundle is not None else None, group=group)
    try:
        trainer.run()
    except TrainingInterrupted as interrupted:
        display.close()
        command = "lstmgen train " + " ".join(str(p) for p in corpus) + f" -o {output} --resume"
        print(f"interrupted: {interrupted}; best model so far in {output}; resume with: {command}", file=sys.stderr)
        raise typer.Exit(130 if interrupted.signal_number == signal.SIGINT else 143) from None
    finally:
        display.close()
        if group.enabled:
            from .distributed import shutdown

            shutdown()


def _dry_run_report(model_config: Any, train_config: Any, corpus_data: Any, device: Any) -> dict[str, Any]:
    """The resolved configuration, the parameter count and a measured training speed."""
    import time

    import torch

    from .config import to_dict
    from .model import LSTMLanguageModel

    model = LSTMLanguageModel(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(3, model_config.vocab_size, (train_config.batch_size, train_config.seq_len + 1), device=device)
    timings = []
    for _ in range(4):
        started = time.perf_counter()
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    step_time = sorted(timings[1:])[len(timings[1:]) // 2]
    return {
        "model": to_dict(model_config),
        "train": to_dict(train_config),
        "tokenizer": corpus_data.meta.get("tokenizer"),
        "parameters": model.num_parameters(),
        "train_tokens": corpus_data.split,
        "val_tokens": corpus_data.num_tokens - corpus_data.split,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "estimated_tokens_per_second": round(train_config.batch_size * train_config.seq_len / step_time),
    }


def _prepare_corpus(
    corpus: list[Path], tokens_dir: Path, tokenizer_config: Any, tokenizer_dir: Optional[Path], init_bundle: Any,
    val_fraction: float, errors: str, resume: bool,
) -> Any:
    """The tokenized corpus for a run: reuse an up-to-date encoding, else tokenize (with the given tokenizer)."""
    from .data import TokenizedCorpus, reusable_encoding
    from .tokenizer import Tokenizer

    if init_bundle is not None:
        tokenizer: Any = init_bundle.tokenizer
        settings = _tokenizer_config_from(init_bundle.meta.get("tokenizer", {}).get("settings") or {})
    elif tokenizer_dir is not None:
        given = TokenizedCorpus.open(tokenizer_dir)
        same_files = [f.get("sha256") for f in given.meta.get("files", [])] == [_file_sha(p) for p in corpus]
        if same_files and given.meta["split"].get("val_fraction") == val_fraction:
            return given
        tokenizer = Tokenizer.load(given.tokenizer_path)
        settings = _tokenizer_config_from(given.meta.get("tokenizer", {}))
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
    name = model or os.environ.get("LSTMGEN_MODEL")
    if not name:
        raise LstmgenError("no model given; pass -m MODEL.lstmgen or set LSTMGEN_MODEL (train one with `lstmgen train corpus.txt`)")
    return Path(name)


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if prompt is not None and prompt_file is not None:
        raise LstmgenError("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        from .data import CorpusReader

        return "".join(CorpusReader(prompt_file).lines())
    if prompt == "-":
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LstmgenError(f"the prompt on stdin is not valid UTF-8 (byte offset {error.start})") from None
    return prompt or ""


@app.command(epilog=EXAMPLES_SAMPLE)
def sample(
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Bundle to sample from (default: $LSTMGEN_MODEL)."),
    prompt: Optional[str] = typer.Option(None, help="Text to continue; - reads it from stdin."),
    prompt_file: Optional[Path] = typer.Option(None, help="Read the prompt from this file."),
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
    separator: str = typer.Option("\n\n", help="Printed between samples in text format."),
    seed: Optional[int] = typer.Option(None, help="Random seed; the same seed gives the same text."),
    output_format: str = typer.Option("text", "--format", help="text or jsonl (one JSON object per sample)."),
    echo_prompt: bool = typer.Option(True, "--echo-prompt/--no-echo-prompt", help="Print the prompt before its continuation (text format)."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
) -> None:
    """Generate text from a trained model; text streams to stdout as it is generated."""
    from .sampling import Sample, SamplingOptions

    if output_format not in ("text", "jsonl"):
        raise LstmgenError(f"--format must be text or jsonl, not {output_format!r}")
    if num_samples < 1:
        raise LstmgenError(f"--num-samples must be a whole number ≥ 1, not {num_samples}")
    options = SamplingOptions(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                              repetition_window=repetition_window, max_tokens=max_tokens, max_chars=max_chars, stop=tuple(stop), seed=seed)
    options.validate()
    text_prompt = _read_prompt(prompt, prompt_file)
    from .api import LanguageModel

    lm = LanguageModel.load(_resolve_model(model), device=device)
    buffered: dict[int, list[str]] = {}
    next_to_print = 0
    finished: dict[int, Sample] = {}

    def flush_finished() -> None:
        nonlocal next_to_print
        while next_to_print in finished:
            index = next_to_print
            if output_format == "jsonl":
                item = finished[index]
                record = {"index": index, "prompt": text_prompt, "text": item.text, "tokens_generated": len(item.tokens),
                          "log_prob": item.log_prob, "finish_reason": item.finish_reason}
                _write_stdout(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                if index > 0:
                    _write_stdout(separator)
                    if echo_prompt:
                        _write_stdout(text_prompt)
                    _write_stdout("".join(buffered.pop(index, [])))
                _write_stdout("\n" if not (text_prompt + finished[index].text).endswith("\n") else "")
            next_to_print += 1

    if output_format == "text" and echo_prompt:
        _write_stdout(text_prompt)
    for index, item in lm._sampler.stream(text_prompt, options, num_samples=num_samples):
        if isinstance(item, str):
            if output_format == "text" and index == next_to_print == 0:
                _write_stdout(item)
            else:
                buffered.setdefault(index, []).append(item)
        else:
            finished[index] = item
            flush_finished()


# -- eval -------------------------------------------------------------------------------------------


@app.command(name="eval", epilog=EXAMPLES_EVAL)
def evaluate(
    files: list[Path] = typer.Argument(..., help="Text files to evaluate.", show_default=False),
    model: Optional[str] = typer.Option(None, "-m", "--model", help="Bundle to evaluate (default: $LSTMGEN_MODEL)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    streams: Optional[int] = typer.Option(None, help="Evaluate each file as N parallel streams (default: 1 per 200k tokens, exact for small files)."),
    errors: str = typer.Option("strict", help="Invalid UTF-8: strict or replace."),
    device: str = typer.Option("cpu", help="cpu, cuda, mps or auto."),
) -> None:
    """Report perplexity, bits per byte and bits per character of a model on text files."""
    if streams is not None and not 1 <= streams <= 4096:
        raise LstmgenError(f"--streams must be a whole number from 1 to 4096, not {streams}")
    from .data import check_corpus_file

    for path in files:
        check_corpus_file(path)
    from .api import LanguageModel

    lm = LanguageModel.load(_resolve_model(model), device=device)
    results = [lm.evaluate_file(path, streams=streams, errors=errors) for path in files]
    if as_json:
        payload: Any = results[0] if len(results) == 1 else {"files": results, "total": _combine(results)}
        _write_stdout(json.dumps(payload, allow_nan=False, default=str) + "\n" if _finite(payload) else json.dumps(payload) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=None)
    for column in ("file", "tokens", "nats/token", "perplexity", "bits/byte", "bits/char"):
        table.add_column(column, justify="left" if column == "file" else "right")
    rows = results + ([{**_combine(results), "file": "all"}] if len(results) > 1 else [])
    for r in rows:
        table.add_row(str(r["file"]), f"{r['tokens']:,}", f"{r['nll']:.4f}", f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}", f"{r['bits_per_char']:.4f}")
    console = Console(no_color=bool(os.environ.get("NO_COLOR"))) if sys.stdout.isatty() else _stderr_console()
    console.print(table)


def _combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    from .evaluation import summarize

    nll = sum(r["nll"] * r["tokens"] for r in results)
    return summarize(nll, sum(r["tokens"] for r in results), sum(r["bytes"] for r in results), sum(r["chars"] for r in results))


def _finite(payload: Any) -> bool:
    text = json.dumps(payload)
    return "NaN" not in text and "Infinity" not in text


# -- info -------------------------------------------------------------------------------------------


@app.command(epilog=EXAMPLES_INFO)
def info(
    model: Path = typer.Argument(..., help="A .lstmgen bundle.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the metadata as JSON on stdout."),
) -> None:
    """Show a bundle's configuration, training summary and versions."""
    from .bundle import load_bundle
    from .model import LSTMLanguageModel

    bundle = load_bundle(model)
    parameters = LSTMLanguageModel(bundle.model_config).num_parameters()
    meta = {**bundle.meta, "parameters": parameters}
    if as_json:
        _write_stdout(json.dumps(meta, indent=2) + "\n")
        return
    training = meta.get("training", {})
    cfg = meta["model"]
    lines = [
        f"model       {cfg['num_layers']}×{cfg['hidden_size']} {cfg['cell'].upper()}, embedding {cfg['embedding_size']}, vocabulary {cfg['vocab_size']}, {parameters:,} parameters",
        f"training    {training.get('steps', '?')} steps, {training.get('tokens_seen', 0):,} tokens, {training.get('elapsed_seconds', 0):.0f} s on {training.get('device', '?')}",
    ]
    if training.get("best_val_loss") is not None:
        lines.append(f"validation  {training['best_val_loss']:.4f} nats/token, {training.get('best_val_bits_per_char') or float('nan'):.4f} bits/char (step {training.get('best_val_step')})")
    lines.append(f"corpus      sha256 {training.get('corpus_sha256', '?')}")
    versions = meta.get("versions", {})
    lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    stream = sys.stdout if sys.stdout.isatty() else sys.stderr
    print("\n".join(lines), file=stream)


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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with lstmgen's error conventions (one line, exit 2; 130 on Ctrl-C)."""
    try:
        code = app(args=argv, standalone_mode=False, prog_name="lstmgen")
        if isinstance(code, int) and code:
            _exit_quietly(code)
    except typer.Exit as done:
        _exit_quietly(done.exit_code)
    except typer.Abort:
        _error("interrupted", 130)
    except click_exceptions.UsageError as error:
        hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
        _error(" ".join(error.format_message().split()) + hint, 2)
    except click_exceptions.ClickException as error:
        _error(" ".join(error.format_message().split()), 2)
    except LstmgenError as error:
        _error(str(error), 2)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    except BrokenPipeError:
        _exit_quietly(0)
    except MemoryError:
        _error("out of memory; use a smaller model, --batch-size or input", 1)
    _exit_quietly(0)
