"""`lstmgen train`: every option of a run (lstmgen.run), its progress on stderr, and the line an interrupted run ends with."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from ..config import TRAINING_SECTIONS, RunOptions
from ..errors import TrainingInterrupted
from .app import app
from .output import ByteProgress, format_seconds, human_count, info, setup_logging, stderr_console, write_stdout
from .params import Flag, examples, given, options_of, signature

OPTIONS = [*options_of(RunOptions), *(o for cls in TRAINING_SECTIONS.values() for o in options_of(cls))]
FLAGS = [
    Flag("corpus", "Corpus text files (UTF-8).", type=list[Path], metavar="CORPUS...", argument=True, required=True),
    Flag(
        "dry_run",
        "Print the resolved configuration, the parameter count and the measured training speed as JSON, and train nothing.",
        ("--dry-run",),
        type=bool,
        default=False,
    ),
]


def train(**values: Any) -> None:
    """Train a language model on a corpus and write the best model as one .lstmgen bundle."""
    import os

    from .. import run

    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 shows progress
        setup_logging(quiet=True)
    options = given(values, OPTIONS)
    display = _TrainDisplay()
    if values["dry_run"]:
        report = run.dry_run(values["corpus"], on_event=display, **options)
        display.close()
        if report is not None:
            write_stdout(json.dumps(report, indent=2) + "\n")
        return
    try:
        run.train(values["corpus"], on_event=display, **options)
    except TrainingInterrupted as interrupted:
        display.close()
        output = display.output or options.get("output") or run.default_output(values["corpus"])
        print(_interrupted_line(display.end_event, values["corpus"], Path(output)), file=sys.stderr)
        raise typer.Exit(130 if interrupted.signal_number == signal.SIGINT else 143) from None
    finally:
        display.close()


class _TrainDisplay:
    """Shows a run's progress: rich bars on a terminal, plain log lines otherwise."""

    def __init__(self) -> None:
        self.interactive = sys.stderr.isatty()
        self.progress: Any = None
        self.task: Any = None
        self.encoding: ByteProgress | None = None
        self.val_loss: float | None = None
        self.val_bpc: float | None = None
        self.end_event: dict[str, Any] | None = None  # the run's end, kept for the line an interrupted run prints
        self.output: str | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, "_" + event["event"].replace("-", "_"), None)
        if handler is not None:
            handler(event)

    def _encoding(self, event: dict[str, Any]) -> None:
        self.encoding = ByteProgress(
            "training the tokenizer and encoding" if event["training_tokenizer"] else "encoding"
        )

    def _encoding_progress(self, event: dict[str, Any]) -> None:
        if self.encoding is not None:
            self.encoding.update(event["done"], event["total"])

    def _encoded(self, event: dict[str, Any]) -> None:
        if self.encoding is not None:
            self.encoding.close()

    def _start(self, event: dict[str, Any]) -> None:
        action = "resuming" if event["resumed"] else "training"
        model = event["model"]
        info(
            f"{action} a {model['num_layers']}×{model['hidden_size']} {str(model.get('cell', 'lstm')).upper()} ({event['parameters']:,} "
            f"parameters, vocabulary {model['vocab_size']}) on {event['device']}"
        )
        if self.interactive:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=stderr_console(),
            )
            self.task = self.progress.add_task("train", total=1.0, status="")
            self.progress.start()

    def _step(self, event: dict[str, Any]) -> None:
        status = f"step {event['step']} loss {event['loss']:.3f}"
        if self.val_loss is not None:
            status += f" val {self.val_loss:.3f} ({self.val_bpc:.3f} bpc)"
        status += f" {human_count(event['tokens_per_second'])} tok/s"
        if self.progress:
            self.progress.update(self.task, completed=min(1.0, event["progress"]), status=status)
        else:
            info(f"{status} {_budget_text(event['elapsed'], event['progress'])}")

    def _val(self, event: dict[str, Any]) -> None:
        self.val_loss, self.val_bpc = event["val_loss"], event["val_bits_per_char"]
        figures = f"loss {event['val_loss']:.4f} nats/token, {event['val_bits_per_char']:.4f} bits/char"
        if event.get("final"):
            self.close()  # the final validation comes after the bar has finished
            tokens = f"{event['val_tokens']:,} held-out tokens"
            info(f"final validation of the best weights (step {event['step']}) on {tokens}: {figures}")
        elif not self.progress:
            mark = " (best)" if event["best"] else ""
            info(f"validation at step {event['step']} ({event['val_tokens']:,}-token sample): {figures}{mark}")

    def _end(self, event: dict[str, Any]) -> None:
        self.close()
        self.end_event = event
        self.output = event.get("output")
        if event.get("stopped_by") == "signal":
            return  # the command prints one line for an interrupted run
        best = event["best_val_loss"]
        best_text = (
            f"best validation loss {best:.4f} nats/token ({event['best_val_bits_per_char']:.4f} bits/char)"
            if best is not None
            else "no validation yet"
        )
        info(
            f"done after {_plural(event['steps'], 'step')}, {format_seconds(event['elapsed'])}, "
            f"{human_count(event['tokens_per_second'])} tok/s; {best_text}; model in {event['output']}"
        )

    def close(self) -> None:
        if self.encoding is not None:
            self.encoding.close()
        if self.progress:
            self.progress.stop()
            self.progress = None


def _budget_text(elapsed: float, progress: float) -> str:
    """Elapsed time, the share of the budget done and the time left, for progress lines in logs."""
    text = f"{format_seconds(elapsed)} elapsed"
    if progress <= 0:
        return text
    done = min(progress, 1.0)
    left = elapsed * (1.0 - done) / done
    return f"{text}, {done:.0%} of the budget, ~{format_seconds(left)} left"


def _plural(count: int, word: str) -> str:
    from ..run import plural

    return plural(count, word)


def _interrupted_line(end: dict[str, Any] | None, corpus: list[Path], output: Path) -> str:
    """The one line an interrupted run ends with: where it stopped, what was saved, how to go on (shell-quoted)."""
    command = " ".join(
        ["lstmgen", "train", *(shlex.quote(str(p)) for p in corpus), "-o", shlex.quote(str(output)), "--resume"]
    )
    if end is None:
        return f"interrupted; checkpoint saved; resume with: {command}"
    bpc = end.get("best_val_bits_per_char")
    quality = f"{bpc:.4f} bits/char" if bpc is not None else "no validation yet"
    return (
        f"interrupted after {_plural(end['steps'], 'step')} ({format_seconds(end['elapsed'])}); checkpoint saved, "
        f"best model so far in {output} ({quality}); resume with: {command}"
    )


app.command(
    short_help="Train a model on a corpus and write it as one .lstmgen bundle.",
    epilog=examples(
        "lstmgen train corpora/tinyshakespeare.txt -o shakespeare.lstmgen --max-time 5m",
        "lstmgen train corpus.txt --tokenizer corpus.tok --hidden-size 256 --max-steps 2000",
        "lstmgen train corpus.txt -o corpus.lstmgen --resume",
    ),
)(signature(train, FLAGS, OPTIONS))
