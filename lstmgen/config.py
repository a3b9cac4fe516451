"""Plain dataclass configuration shared by the CLI, the Python API and the bundle.

Every field that a person may set declares itself as an option (lstmgen.options): its help, flag
and valid values live here and nowhere else. Every config serializes to JSON with `to_dict` and
back with `from_dict`, so the same object that drives a run is stored in the bundle and
checkpoint that the run writes. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import LstmgenError
from .options import declared_by_name, option, validate

#: The recurrent cells (lstmgen.cells implements one for each name).
CELLS = ("lstm", "gru", "paper")
MODEL_TYPES = ("unigram", "bpe", "char")
DOCUMENTS = ("file", "blank-line")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: auto = bf16 autocast on GPUs that support it, else fp32 (bf16 is slower than fp32 on most CPUs).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ERRORS = ("strict", "replace")
INFERENCE_DEVICES = ("cpu", "cuda", "mps", "auto")
QUANTIZE = ("none", "int8")
#: Poem forms for `--form` (lstmgen.poetry): the names and their pinyin aliases.
POEM_FORMS = ("五言绝句", "七言绝句", "五言律诗", "七言律诗", "wujue", "qijue", "wulv", "qilv")

T = TypeVar("T")

_DOCUMENTS_HELP = (
    "Where documents end (an end-of-text token follows each): file (each corpus file is one document) or blank-line "
    "(a run of blank lines also ends one, e.g. one poem per paragraph)."
)


@dataclass
class TokenizerConfig:
    """How the SentencePiece tokenizer is trained. `None` means "choose from the corpus"."""

    vocab_size: int | None = option(
        None, low=8, high=1 << 20, help="Size of the tokenizer's vocabulary.", default_text="chosen from the corpus"
    )
    model_type: str = option("unigram", choices=MODEL_TYPES, help="The SentencePiece model: unigram, bpe or char.")
    character_coverage: float | None = option(
        None,
        low=0.9,
        high=1.0,
        metavar="SHARE",
        help="Share of the corpus's characters kept as pieces of their own; the rarest fall back to bytes.",
        default_text="1.0, or 0.9995 for scripts of more than 1,000 characters",
    )
    max_training_bytes: int = option(
        16 * 1024 * 1024,
        flag=None,
        low=1 << 16,
        high=1 << 50,
        help="Bytes of the corpus, sampled evenly, that the tokenizer is trained on.",
    )
    documents: str = option("file", choices=DOCUMENTS, help=_DOCUMENTS_HELP)

    def validate(self) -> None:
        validate(self)


@dataclass
class ModelConfig:
    """Sizes of the embedding → recurrent cell → head network (see docs/bundle-format.md)."""

    vocab_size: int = option(
        flag=None, low=2, high=1 << 22, help="Tokens the model knows: always the tokenizer's vocabulary size."
    )
    embedding_size: int = option(
        512, low=1, high=1 << 16, help="Size of the token embeddings.", default_text="the hidden size"
    )
    hidden_size: int = option(
        512, low=1, high=1 << 16, help="Units per recurrent layer.", default_text="from the corpus size and the device"
    )
    num_layers: int = option(
        2, flag="--layers", low=1, high=64, help="Number of recurrent layers.", default_text="from the corpus size"
    )
    dropout: float = option(
        0.2,
        low=0.0,
        high=1.0,
        high_open=True,
        metavar="RATE",
        help="Dropout between layers and on the embeddings and outputs.",
        default_text="0.2, or 0.3 when the budget buys 15 or more passes over the corpus",
    )
    tie_weights: bool = option(True, negative="--no-tie-weights", help="Share the embedding and output weights.")
    cell: str = option(
        "lstm",
        choices=CELLS,
        help="The recurrent cell: lstm (torch.nn.LSTM), gru, or paper (the design document's LSTM; see docs/cells.md).",
    )

    def validate(self) -> None:
        validate(self)

    @property
    def head_input_size(self) -> int:
        return self.embedding_size if self.tie_weights else self.hidden_size


@dataclass
class TrainConfig:
    """Optimisation, schedule, stopping and bookkeeping for one training run."""

    batch_size: int = option(
        32, low=1, high=1 << 16, help="Parallel streams per step.", default_text="32 on a CPU, 128 on a GPU"
    )
    seq_len: int = option(
        32,
        low=1,
        high=1 << 16,
        help="Tokens per window of truncated backpropagation.",
        default_text="32 on a CPU, 128 on a GPU",
    )
    learning_rate: float = option(
        6e-3,
        flag="--lr",
        low=0.0,
        high=10.0,
        low_open=True,
        metavar="RATE",
        help="Peak learning rate of AdamW.",
        default_text="6e-3 on a CPU, 3e-3 on a GPU",
    )
    min_lr_ratio: float = option(
        0.05, flag=None, low=0.0, high=1.0, help="Where the cosine decay ends, as a share of the peak learning rate."
    )
    warmup_steps: int = option(50, low=0, high=1 << 40, help="Steps of linear learning-rate warm-up.")
    weight_decay: float = option(0.01, low=0.0, high=10.0, help="AdamW weight decay.")
    grad_clip: float = option(
        1.0, low=0.0, high=1e6, low_open=True, help="Largest gradient norm; larger gradients are scaled down to it."
    )
    max_time: float | None = option(
        None,
        duration=True,
        low=0.0,
        high=1e9,
        low_open=True,
        resumable=True,
        help="Stop after this long, e.g. 90s, 5m or 2h.",
        default_text="15m when no other limit is given",
    )
    max_steps: int | None = option(None, low=1, high=1 << 40, resumable=True, help="Stop after this many steps.")
    epochs: float | None = option(
        None, low=0.0, high=1e6, low_open=True, resumable=True, help="Stop after this many passes over the corpus."
    )
    reset_every: int = option(
        2048,
        low=0,
        high=1 << 40,
        help="Mean tokens between a stream's restarts from a fresh state at a paragraph start; 0 never.",
    )
    val_fraction: float = option(
        0.1, low=0.0, high=0.5, low_open=True, metavar="SHARE", help="Share of the corpus tail held out for validation."
    )
    val_every: int | None = option(
        None,
        resumable=True,
        low=1,
        high=1 << 40,
        help="Validate every N steps.",
        default_text="as often as keeps validation near 3 % of the time",
    )
    val_max_tokens: int = option(
        250_000, flag=None, low=1, high=1 << 40, help="The most held-out tokens a validation reads."
    )
    seed: int = option(1234, low=0, high=2**63 - 1, help="Random seed; a fixed seed makes a CPU run reproducible.")
    device: str = option(
        "auto",
        choices=DEVICES,
        resumable=True,
        help="Where to train: auto (a GPU when there is one), cpu, cuda or mps.",
    )
    log_every: int = option(10, low=1, high=1 << 40, resumable=True, help="Log the training loss every N steps.")
    checkpoint_every: float = option(
        600.0,
        duration=True,
        low=0.0,
        high=1e9,
        low_open=True,
        resumable=True,
        help="Write a checkpoint this often, e.g. 10m.",
    )
    threads: int | None = option(None, low=1, high=4096, resumable=True, help="CPU threads.", default_text="all cores")
    precision: str = option(
        "auto",
        choices=PRECISIONS,
        resumable=True,
        help="GPU autocast: auto (bf16 where the GPU supports it, else fp32), fp32, bf16 or fp16.",
    )
    compile: bool = option(
        False, resumable=True, negative="--no-compile", help="Compile the model with torch.compile (for GPU runs)."
    )

    def validate(self) -> None:
        validate(self)


@dataclass
class RunOptions:
    """What a training run reads and writes, and how it treats what is already there."""

    output: Path | None = option(
        None,
        short="-o",
        flag="--output",
        metavar="MODEL.lstmgen",
        help="The bundle to write.",
        default_text="FIRST-CORPUS-NAME.lstmgen",
    )
    tokenizer: Path | None = option(
        None,
        metavar="DIR",
        help="A directory made by `lstmgen tokenize` whose tokenizer and encoding to use.",
        default_text="train a tokenizer",
    )
    init_from: str | Path | None = option(
        None,
        metavar="MODEL",
        help="Start from this model's weights and tokenizer (fine-tuning): a bundle path or a model name, as -m takes it.",
    )
    config: Path | None = option(
        None,
        metavar="RUN.toml",
        help="A TOML file with [tokenizer], [model] and [train] tables; options given here override it.",
    )
    resume: bool = option(False, help="Continue the run that wrote the output exactly where it stopped.")
    overwrite: bool = option(
        False, help="Start over when the output already holds a model or its run a checkpoint (both are replaced)."
    )
    errors: str = option(
        "strict",
        choices=ERRORS,
        help="Invalid UTF-8 in the corpus: strict (refuse it, with its byte offset) or replace it with U+FFFD.",
    )

    def validate(self) -> None:
        validate(self)


@dataclass
class SamplingOptions:
    """Every knob of generation: the flags of `lstmgen sample` and the keywords of LanguageModel.generate."""

    temperature: float = option(
        1.0,
        flag="--temp",
        aliases=("--temperature",),
        low=0,
        high=100,
        rule="a number from 0 (greedy) to 100",
        help="Sampling temperature; 0 always picks the most likely token.",
    )
    top_k: int = option(
        0,
        low=0,
        high=None,
        rule="a whole number ≥ 0 (0 turns it off)",
        help="Keep only the k most likely tokens; 0 keeps all.",
    )
    top_p: float = option(
        1.0,
        low=0.0,
        high=1.0,
        low_open=True,
        rule="in (0, 1] (1 turns it off)",
        metavar="P",
        help="Nucleus sampling: keep the smallest set of likely tokens that holds this much probability; 1 keeps all.",
    )
    min_p: float = option(
        0.0,
        low=0.0,
        high=1.0,
        high_open=True,
        rule="in [0, 1) (0 turns it off)",
        metavar="P",
        help="Drop tokens less likely than this fraction of the most likely one; 0 keeps all.",
    )
    repetition_penalty: float = option(
        1.0,
        low=1.0,
        high=100.0,
        rule="a number from 1 (off) to 100",
        metavar="FACTOR",
        help="Make recently seen tokens less likely by this factor; 1 turns it off.",
    )
    repetition_window: int = option(
        64, low=1, high=1 << 20, help="How many recent tokens the repetition penalty looks at."
    )
    max_tokens: int = option(200, low=0, high=10**9, help="The most tokens each sample generates.")
    max_chars: int | None = option(
        None, low=0, high=10**12, rule="a whole number ≥ 0", help="End a sample after this many characters."
    )
    stop: Sequence[str] = option(
        default_factory=tuple,
        metavar="TEXT",
        rule="non-empty strings",
        help="End a sample where this text appears (it is not printed); give it again for more.",
    )
    seed: int | None = option(
        None,
        low=0,
        high=2**63 - 1,
        rule="a whole number from 0 to 2^63-1",
        help="Random seed; the same seed gives the same text.",
        default_text="a new one each time",
    )
    # Poems (lstmgen.poetry): constraints applied while sampling, so that every sample has the shape asked for.
    form: str | None = option(
        None,
        choices=POEM_FORMS,
        metavar="FORM",
        rule="one of 五言绝句 (wujue), 七言绝句 (qijue), 五言律诗 (wulv), 七言律诗 (qilv)",
        help="Chinese models: every sample is a poem of this form (its verses, verse length and punctuation): "
        "五言绝句 or wujue, 七言绝句 or qijue, 五言律诗 or wulv, 七言律诗 or qilv.",
    )
    acrostic: str | None = option(
        None,
        metavar="TEXT",
        help="Verse i begins with character i of TEXT (Chinese; it sets the number of verses when no --form is "
        "given); for English models line i begins with the i-th word of TEXT, or its i-th letter when TEXT is one word.",
    )
    rhyme: bool = option(
        False,
        help="Rhyme: a Chinese poem's even verses end on distinct characters of one 中华新韵 rhyme group (needs "
        "--form or --acrostic); English lines rhyme in couplets (AABB...). Needs pip install 'lstmgen[poetry]'.",
    )
    rhyme_scheme: str | None = option(
        None,
        metavar="SCHEME",
        rule="capital letters, one per line, some repeated (AABB, ABAB, ABBA)",
        help="English models: one letter per line, lines of one letter end on distinct words that rhyme by the CMU "
        "pronouncing dictionary, e.g. ABAB; it sets the number of lines.",
    )
    tones: bool = option(
        False,
        help="Chinese models with --form: the verses follow one of the form's standard level/oblique (平仄) patterns "
        "(Mandarin tones by pypinyin).",
    )

    def poem(self) -> bool:
        """Some poem constraint is asked for."""
        return bool(self.form or self.acrostic or self.rhyme or self.rhyme_scheme or self.tones)

    def validate(self) -> None:
        stop = declared_by_name(SamplingOptions)["stop"]
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise LstmgenError(f"{stop.ref} needs a non-empty string" + " (or a list of them)")
        validate(self)
        if self.poem():
            self._validate_poem()

    def _validate_poem(self) -> None:
        """What a poem request needs whatever the model (the model's part: lstmgen.poetry.build_constraint)."""
        names = declared_by_name(SamplingOptions)
        asked = f"{names['form'].ref}, {names['acrostic'].ref} or {names['rhyme'].ref}"
        if self.tones and not self.form:
            raise LstmgenError(
                f"{names['tones'].ref} needs {names['form'].ref}: level/oblique patterns belong to a form"
            )
        if self.stop:
            raise LstmgenError(f"{names['stop'].ref} could cut a poem short; drop it when using {asked}")
        if self.max_chars is not None:
            raise LstmgenError(f"{names['max_chars'].ref} could cut a poem short; drop it when using {asked}")
        if self.acrostic is not None and not self.acrostic.strip():
            raise LstmgenError(f"{names['acrostic'].ref} needs some text")
        scheme = self.rhyme_scheme
        if scheme is not None and (re.fullmatch(r"[A-Z]{2,}", scheme) is None or len(set(scheme)) == len(scheme)):
            raise LstmgenError(f"{names['rhyme_scheme'].ref} must be {names['rhyme_scheme'].rule}, not {scheme!r}")


@dataclass
class InferenceOptions:
    """Where and how a loaded model runs: the keywords of `lstmgen.load` and flags of sample, eval and inspect."""

    device: str = option(
        "cpu", choices=INFERENCE_DEVICES, help="Where the model runs: cpu, cuda, mps or auto (a GPU when there is one)."
    )
    quantize: str = option(
        "none",
        choices=QUANTIZE,
        help="int8 runs int8 weights and activations on the CPU, a little less exact. It is timed against float32 at "
        "its first use, and where it is slower (as measured so far: small models, one-stream eval, most uses on CPUs "
        "without AVX512-VNNI) float32 runs instead, with a warning; LSTMGEN_INT8=always keeps int8 (eval --quantize "
        "int8 then measures its cost).",
    )
    threads: int | None = option(
        None,
        low=1,
        high=4096,
        help="CPU threads; 1 is often fastest for one sample on a busy machine.",
        default_text="all cores",
    )

    def validate(self) -> None:
        validate(self)


#: The settings a training run takes, by section (a config file's tables, lstmgen.train's keywords).
TRAINING_SECTIONS: dict[str, type] = {"tokenizer": TokenizerConfig, "model": ModelConfig, "train": TrainConfig}


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type[T], data: Any, what: str = "configuration") -> T:
    """Build a config dataclass from JSON data, refusing unknown or mistyped keys."""
    if not isinstance(data, dict):
        raise LstmgenError(f"{what} must be a JSON object")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LstmgenError(f"{what} has unknown keys: {', '.join(unknown)}")
    kwargs = {name: _coerce(cls, name, value, what) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise LstmgenError(f"{what} is incomplete: {error}") from None


def _coerce(cls: type, name: str, value: Any, what: str) -> Any:
    """The value with the field's JSON type (a whole number where a float goes becomes a float)."""
    declared = declared_by_name(cls).get(name)
    if declared is None or value is None:
        return value
    if declared.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if declared.kind == "strings" and isinstance(value, list):
        return tuple(value)
    fits = {"bool": (bool,), "int": (int,), "float": (float,), "str": (str,), "path": (str,), "strings": (tuple, list)}[
        declared.kind
    ]
    if not isinstance(value, fits) or (isinstance(value, bool) and declared.kind != "bool"):
        raise LstmgenError(f"{what}: {name} must be {declared.describe()}, not {value!r}")
    return value


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
}


def parse_duration(text: str, name: str = "--max-time") -> float:
    """Parse `90s`, `5m`, `1.5h`, `2h30m` or a bare number of seconds into seconds (`name` goes into the message)."""
    parts = re.findall(r"\d+(?:\.\d+)?\s*[a-zA-Z]*", text.strip()) if text else []
    if not parts or "".join(p.replace(" ", "") for p in parts) != text.strip().replace(" ", ""):
        raise LstmgenError(f"{name} must be a duration such as 90s, 5m, 2h or 1h30m, not {text!r}")
    total = 0.0
    for part in parts:
        match = _DURATION.match(part)
        if not match:
            raise LstmgenError(f"{name} must be a duration such as 90s, 5m, 2h or 1h30m, not {text!r}")
        number, unit = match.groups()
        total += float(number) * _UNIT_SECONDS[unit.lower() if unit else None]
    if not math.isfinite(total) or total <= 0:
        raise LstmgenError(f"{name} must be a positive duration, not {text!r}")
    return total


#: A run file is a few hundred bytes; anything near this limit is not one.
CONFIG_FILE_LIMIT = 1 << 20


def load_config_file(path: Any) -> dict[str, dict[str, Any]]:
    """Read a TOML run file: tables [tokenizer], [model] and [train] with the config field names.

    The read is bounded: a regular file of at most CONFIG_FILE_LIMIT bytes (never a FIFO or
    /dev/zero), and nesting too deep for the parser is refused, not a crash.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10
        import tomli as tomllib
    from .fsutil import read_regular_file

    raw = read_regular_file(path, CONFIG_FILE_LIMIT, "config file", "pass a .toml file")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise LstmgenError(f"config file {path} is not valid TOML ({str(error).splitlines()[0]}); fix it") from None
    except RecursionError:
        raise LstmgenError(f"config file {path} nests arrays or tables too deeply to be a run file; fix it") from None
    unknown = sorted(set(data) - set(TRAINING_SECTIONS))
    if unknown:
        raise LstmgenError(f"config file {path}: unknown table [{unknown[0]}]; use [tokenizer], [model] and [train]")
    for section, table in data.items():
        if not isinstance(table, dict):
            raise LstmgenError(f"config file {path}: {section} must be a table ([{section}])")
    return data


def apply_settings(config: Any, settings: dict[str, Any], section: str) -> None:
    """Set fields of a config dataclass from a config-file table, checking names and types.

    A field without a flag and without a default (the model's vocabulary size) is not a setting."""
    fields = declared_by_name(type(config))
    settable = {name for name, o in fields.items() if o.flag or o.default is not None}
    for name, value in settings.items():
        if name not in fields:
            raise LstmgenError(
                f"config file: [{section}] has no setting {name!r}; valid: {', '.join(sorted(settable))}"
            )
        if name not in settable:
            raise LstmgenError(f"config file: [{section}] {name} cannot be set: {fields[name].help}")
        if fields[name].duration and isinstance(value, str):
            value = parse_duration(value, f"[{section}] {name}")
        setattr(config, name, _coerce(type(config), name, value, f"config file [{section}]"))
