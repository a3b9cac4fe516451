"""`lstmgen sample`: read a prompt, stream samples to stdout in order; `-i` is a small REPL over the same sampler."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from ..config import InferenceOptions, SamplingOptions
from ..errors import LstmgenError
from .app import MODEL_HELP, app
from .output import CLOSED_STREAMS, write_stdout
from .params import Flag, examples, given, options_of, signature

SAMPLING = options_of(SamplingOptions)
INFERENCE = options_of(InferenceOptions)
FLAGS = [
    Flag("model", MODEL_HELP, ("-m", "--model"), metavar="MODEL"),
    Flag("prompt", "Text to continue; - reads it from stdin.", ("--prompt",), metavar="TEXT"),
    Flag("prompt_file", "Read the prompt from this file.", ("--prompt-file",), type=Optional[Path], metavar="FILE"),
    Flag(
        "interactive",
        "Read prompts line by line and continue each; :q or Ctrl-D quits, Ctrl-C stops one generation.",
        ("-i", "--interactive"),
        type=bool,
        default=False,
    ),
    Flag(
        "num_samples",
        "Samples to generate for the prompt (side by side, in batches). (default: 1)",
        ("-n", "--num-samples"),
        type=Optional[int],
        metavar="N",
    ),
    Flag(
        "separator",
        "Printed between samples in text format, where the sample before ends its last line (its line break counts as "
        "the separator's first). (default: a blank line)",
        ("--separator",),
        metavar="TEXT",
    ),
    Flag(
        "output_format",
        "text, or jsonl: one JSON object per sample with its text, tokens, log-probability and finish reason. "
        "(default: text)",
        ("--format",),
        metavar="text|jsonl",
    ),
    Flag(
        "echo_prompt",
        "Print the prompt before its continuation (text format).",
        ("--echo-prompt/--no-echo-prompt",),
        type=bool,
        default=True,
    ),
]


def sample(**values: Any) -> None:
    """Generate text from a trained model; text streams to stdout as it is generated."""
    import lstmgen

    from ..sampling import check_num_samples

    output_format = values["output_format"] or "text"
    if output_format not in ("text", "jsonl"):
        raise LstmgenError(f"--format must be text or jsonl, not {output_format!r}")
    num_samples = check_num_samples(values["num_samples"] if values["num_samples"] is not None else 1)
    options = SamplingOptions(**given(values, SAMPLING))
    options.validate()
    inference = InferenceOptions(**given(values, INFERENCE))
    from ..device import check_inference

    check_inference(inference)
    interactive = values["interactive"]
    if interactive and (values["prompt"] is not None or values["prompt_file"] is not None):
        raise LstmgenError("--interactive reads its prompts from the terminal; drop --prompt/--prompt-file")
    prompt = "" if interactive else _read_prompt(values["prompt"], values["prompt_file"])
    lm = lstmgen.load(values["model"], **given(values, INFERENCE))
    separator = values["separator"] if values["separator"] is not None else "\n\n"
    printer = _SamplePrinter(num_samples, separator, output_format, values["echo_prompt"])
    if interactive:
        _interactive(lm, options, printer)
    else:
        printer.run(lm.stream_samples(prompt, options, num_samples), prompt)


#: A prompt file is read whole; sampling reads long prompts in windows, but a prompt beyond this is a mistake.
PROMPT_FILE_LIMIT = 256 << 20


def _read_prompt_file(path: Path) -> str:
    """A UTF-8 text file, read within bounds (a regular file; never a FIFO or device, which could block forever)."""
    from ..fsutil import describe_content, read_regular_file

    data = read_regular_file(
        path, PROMPT_FILE_LIMIT, "prompt file", "pass a text file, or pipe the prompt in with --prompt -"
    )
    kind = describe_content(data[:4096])
    if kind in ("binary file", "model bundle", "PNG image"):
        raise LstmgenError(f"prompt file {path} looks like a binary file ({kind}), not text; pass a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LstmgenError(
            f"prompt file {path} is not valid UTF-8 (byte offset {error.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise LstmgenError(f"prompt file {path} looks like a binary file (it contains NUL bytes); pass a text file")
    return text


def _read_prompt(prompt: Optional[str], prompt_file: Optional[Path]) -> str:
    if prompt is not None and prompt_file is not None:
        raise LstmgenError("give either --prompt or --prompt-file, not both")
    if prompt_file is not None:
        return _read_prompt_file(prompt_file)
    if prompt == "-":
        if "stdin" in CLOSED_STREAMS:
            raise LstmgenError(
                "--prompt - reads the prompt from stdin, but stdin is closed; pipe the prompt in or use --prompt TEXT"
            )
        data = sys.stdin.buffer.read()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise LstmgenError(f"the prompt on stdin is not valid UTF-8 (byte offset {error.start})") from None
    try:
        (prompt or "").encode("utf-8")
    except UnicodeEncodeError as error:  # bytes the shell passed that are not UTF-8 arrive as surrogates
        raise LstmgenError(
            f"--prompt is not valid UTF-8 (byte offset {len((prompt or '')[: error.start].encode('utf-8', 'surrogateescape'))}); pass UTF-8 text"
        ) from None
    return prompt or ""


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
            write_stdout(text)
            self.line_open = not text.endswith("\n")

    def run(self, stream: Any, prompt: str, stop: Any = None) -> None:
        """Sample 0 streams as it is generated; later ones stream once the earlier ones are printed.

        `stop.requested` (when given) is checked after every piece: generation ends when it is set."""
        from ..sampling import Sample

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
                record = {
                    "index": index,
                    "prompt": prompt,
                    "text": item.text,
                    "tokens_generated": len(item.tokens),
                    "log_prob": item.log_prob,
                    "finish_reason": item.finish_reason,
                }
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
        with contextlib.suppress(ImportError):  # platforms without readline
            import readline  # noqa: F401  (line editing and history for input())
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
            stream = lm.stream_samples(line, options, printer.num_samples)
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


app.command(
    short_help="Generate text from a model, streamed to stdout.",
    epilog=examples(
        'lstmgen sample --prompt "ROMEO:" --temp 0.8 --max-tokens 300 | head -20',
        "lstmgen sample -m tang -n 5 --format jsonl --quantize int8",
        'echo "JULIET:" | lstmgen sample -m my-model.lstmgen --prompt - -n 3 --seed 7',
        "lstmgen sample --interactive --temp 0.8 --stop $'\\n\\n'",
    ),
)(signature(sample, FLAGS, SAMPLING, INFERENCE))
