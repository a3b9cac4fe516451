"""Plain dataclass configuration shared by the CLI, the Python API and the bundle.

Every config serializes to JSON with `to_dict` and back with `from_dict`, so the same object that
drives a run is stored in the bundle and checkpoint that the run writes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import LstmgenError

MODEL_TYPES = ("unigram", "bpe", "char")
DOCUMENTS = ("file", "blank-line")
CELLS = ("lstm", "gru", "paper")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: auto = bf16 autocast on GPUs that support it, else fp32 (bf16 is slower than fp32 on most CPUs).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

T = TypeVar("T")


@dataclass
class TokenizerConfig:
    """How the SentencePiece tokenizer is trained. `None` means "choose from the corpus"."""

    vocab_size: int | None = None
    model_type: str = "unigram"
    character_coverage: float | None = None
    max_training_bytes: int = 16 * 1024 * 1024
    #: Where documents end (an EOS id follows each): "file" (each corpus file is one document) or
    #: "blank-line" (a run of blank lines also separates documents, e.g. one poem per paragraph).
    documents: str = "file"

    def validate(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise LstmgenError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, not {self.model_type!r}")
        if self.documents not in DOCUMENTS:
            raise LstmgenError(f"--documents must be one of {', '.join(DOCUMENTS)}, not {self.documents!r}")
        if self.vocab_size is not None:
            _check_int("--vocab-size", self.vocab_size, low=8, high=1 << 20)
        if self.character_coverage is not None:
            _check_float("--character-coverage", self.character_coverage, low=0.9, high=1.0, low_open=False)


@dataclass
class ModelConfig:
    """Sizes of the embedding → LSTM → head network (see docs/bundle-format.md)."""

    vocab_size: int
    embedding_size: int = 512
    hidden_size: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    tie_weights: bool = True
    cell: str = "lstm"

    def validate(self) -> None:
        _check_int("vocab_size", self.vocab_size, low=2, high=1 << 22)
        _check_int("--embedding-size", self.embedding_size, low=1, high=1 << 16)
        _check_int("--hidden-size", self.hidden_size, low=1, high=1 << 16)
        _check_int("--layers", self.num_layers, low=1, high=64)
        _check_float("--dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        if self.cell not in CELLS:
            raise LstmgenError(f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}")

    @property
    def head_input_size(self) -> int:
        return self.embedding_size if self.tie_weights else self.hidden_size


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping and bookkeeping for one training run."""

    batch_size: int = 32
    seq_len: int = 32
    learning_rate: float = 6e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    max_time: float | None = None
    max_steps: int | None = None
    epochs: float | None = None
    #: Mean tokens between a stream's restarts from a fresh state at a paragraph start (0: never).
    reset_every: int = 2048
    val_fraction: float = 0.1
    val_every: int | None = None
    val_max_tokens: int = 250_000
    seed: int = 1234
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: float = 600.0
    threads: int | None = None
    precision: str = "auto"
    compile: bool = False

    def validate(self) -> None:
        _check_int("--batch-size", self.batch_size, low=1, high=1 << 16)
        _check_int("--seq-len", self.seq_len, low=1, high=1 << 16)
        _check_float("--lr", self.learning_rate, low=0.0, high=10.0, low_open=True)
        _check_float("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        _check_int("--warmup-steps", self.warmup_steps, low=0, high=1 << 40)
        _check_float("--weight-decay", self.weight_decay, low=0.0, high=10.0)
        _check_float("--grad-clip", self.grad_clip, low=0.0, high=1e6, low_open=True)
        if self.max_time is not None:
            _check_float("--max-time", self.max_time, low=0.0, high=1e9, low_open=True)
        if self.max_steps is not None:
            _check_int("--max-steps", self.max_steps, low=1, high=1 << 40)
        if self.epochs is not None:
            _check_float("--epochs", self.epochs, low=0.0, high=1e6, low_open=True)
        _check_int("--reset-every", self.reset_every, low=0, high=1 << 40)
        _check_float("--val-fraction", self.val_fraction, low=0.0, high=0.5, low_open=True)
        if self.val_every is not None:
            _check_int("--val-every", self.val_every, low=1, high=1 << 40)
        _check_int("--val-max-tokens", self.val_max_tokens, low=1, high=1 << 40)
        _check_int("--seed", self.seed, low=0, high=2**63 - 1)
        if self.device not in DEVICES:
            raise LstmgenError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _check_int("--log-every", self.log_every, low=1, high=1 << 40)
        _check_float("--checkpoint-every", self.checkpoint_every, low=0.0, high=1e9, low_open=True)
        if self.threads is not None:
            _check_int("--threads", self.threads, low=1, high=4096)
        if self.precision not in PRECISIONS:
            raise LstmgenError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: Any, what: str = "configuration") -> T:
    """Build a config dataclass from JSON data, refusing unknown or mistyped keys."""
    if not isinstance(data, dict):
        raise LstmgenError(f"{what} must be a JSON object")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise LstmgenError(f"{what} has unknown keys: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(names[name], value, what)
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise LstmgenError(f"{what} is incomplete: {error}") from None


def _coerce(f: dataclasses.Field, value: Any, what: str) -> Any:
    annotation = str(f.type)
    allowed: list[type] = []
    if "bool" in annotation:
        allowed.append(bool)
    if "int" in annotation:
        allowed.append(int)
    if "float" in annotation:
        allowed.extend([float, int])
    if "str" in annotation:
        allowed.append(str)
    if value is None and "None" in annotation:
        return None
    if isinstance(value, bool) and bool not in allowed:
        raise LstmgenError(f"{what}: {f.name} must be {annotation}, not {value!r}")
    if not any(isinstance(value, t) for t in allowed):
        raise LstmgenError(f"{what}: {f.name} must be {annotation}, not {value!r}")
    if "float" in annotation and isinstance(value, int) and not isinstance(value, bool) and "int" not in annotation:
        return float(value)
    return value


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LstmgenError(f"{name} must be a whole number from {low} to {high}, not {value!r}")


def _check_float(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise LstmgenError(f"{name} must be a number in {left}{low:g}, {high:g}{right}, not {value!r}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str = "--max-time") -> float:
    """Parse `90s`, `5m`, `1.5h`, `2h30m` or a bare number of seconds into seconds."""
    parts = re.findall(r"\d+(?:\.\d+)?\s*[a-zA-Z]*", text.strip()) if text else []
    if not parts or "".join(p.replace(" ", "") for p in parts) != text.strip().replace(" ", ""):
        raise LstmgenError(f"{option} must be a duration such as 90s, 5m, 2h or 1h30m, not {text!r}")
    total = 0.0
    for part in parts:
        match = _DURATION.match(part)
        if not match:
            raise LstmgenError(f"{option} must be a duration such as 90s, 5m, 2h or 1h30m, not {text!r}")
        number, unit = match.groups()
        total += float(number) * _UNIT_SECONDS[unit.lower() if unit else None]
    if not math.isfinite(total) or total <= 0:
        raise LstmgenError(f"{option} must be a positive duration, not {text!r}")
    return total


CONFIG_SECTIONS = ("tokenizer", "model", "train")
DURATION_FIELDS = {"max_time", "checkpoint_every"}


#: A run file is a few hundred bytes; anything near this limit is not one.
CONFIG_FILE_LIMIT = 1 << 20


def load_config_file(path: Any) -> dict[str, dict[str, Any]]:
    """Read a TOML run file: tables [tokenizer], [model] and [train] with the config field names.

    The read is bounded: a regular file of at most CONFIG_FILE_LIMIT bytes (never a FIFO or
    /dev/zero), and nesting too deep for the parser is refused, not a crash.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from .fsutil import read_regular_file

    raw = read_regular_file(path, CONFIG_FILE_LIMIT, "config file", "pass a .toml file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise LstmgenError(f"config file {path} is not valid TOML ({str(error).splitlines()[0]}); fix it") from None
    except RecursionError:
        raise LstmgenError(f"config file {path} nests arrays or tables too deeply to be a run file; fix it") from None
    unknown = sorted(set(data) - set(CONFIG_SECTIONS))
    if unknown:
        raise LstmgenError(f"config file {path}: unknown table [{unknown[0]}]; use [tokenizer], [model] and [train]")
    for section, table in data.items():
        if not isinstance(table, dict):
            raise LstmgenError(f"config file {path}: {section} must be a table ([{section}])")
    return data


#: Settings a run file may not give, with the reason (each would only fail later, with another message).
FORBIDDEN_SETTINGS = {
    ("model", "vocab_size"): "the model's vocabulary is the tokenizer's; set [tokenizer] vocab_size instead",
}
#: Lower bounds the dataclasses do not check, for settings only a run file can give.
SETTING_MINIMUM = {("tokenizer", "max_training_bytes"): 1 << 16}


def apply_settings(config: Any, settings: dict[str, Any], section: str) -> None:
    """Set fields of a config dataclass from a config-file table, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name, value in settings.items():
        if name not in fields:
            raise LstmgenError(f"config file: [{section}] has no setting {name!r}; valid: {', '.join(sorted(fields))}")
        if (section, name) in FORBIDDEN_SETTINGS:
            raise LstmgenError(f"config file: [{section}] {name} cannot be set: {FORBIDDEN_SETTINGS[(section, name)]}")
        if name in DURATION_FIELDS and isinstance(value, str):
            value = parse_duration(value, f"[{section}] {name}")
        value = _coerce(fields[name], value, f"config file [{section}]")
        if (section, name) in SETTING_MINIMUM:
            _check_int(f"config file: [{section}] {name}", value, low=SETTING_MINIMUM[(section, name)], high=1 << 50)
        setattr(config, name, value)
