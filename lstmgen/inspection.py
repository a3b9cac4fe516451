"""See inside a model: per-token cell activations over a text, and the text features they track.

`activations(model, ids)` steps the model over a token sequence with the recurrent state carried
from the first token to the last and records, after every token, every layer's cell state and
output. `torch.nn.LSTM` returns only the state after the last time step, so the recurrence is
re-run from the weights by each cell's `trace` (lstmgen.cells: the cell's own one-step equations,
which the tests check against the model's own forward).

What each cell exposes (`STATE_KINDS`):

| cell  | `c`                                   | `h`                                 |
|-------|---------------------------------------|-------------------------------------|
| lstm  | the cell state c_t                    | the output h_t = o_t ⊙ tanh(c_t)    |
| paper | its recurrent state (the document's h_t) | its output y_t = o_t ⊙ tanh(h_t) |
| gru   | —                                     | the state h_t (also its output)     |

`text_features(pieces)` computes simple features of a text (inside quotes, inside brackets,
position in the line, ...) and `find_cells` ranks cells by their correlation with each, which is
how `lstmgen inspect --find` finds a model's "quote neuron" without guessing.
"""

from __future__ import annotations

import codecs
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cells import CELLS
from .errors import LstmgenError, option_mark

#: The activation kinds each cell exposes (see the module docstring).
STATE_KINDS: dict[str, tuple[str, ...]] = {name: cell.inspect_kinds for name, cell in CELLS.items()}
STATE_LABELS = {"c": "cell state", "h": "output"}
#: `kinds` of `activations`, `--state` of `lstmgen inspect`.
KINDS_REF = option_mark("kinds", "--state")
NEURON_REF = option_mark("neuron", "--neuron")


# -- activations ----------------------------------------------------------------------------------


@dataclass
class Activations:
    """Per-position activations: `values[kind]` is (layers, positions, hidden), float32.

    Position t holds the activations after reading ids[t] (position 0: after the start id).
    `logits` (positions, vocab) are the next-token logits at each position when requested.
    """

    ids: list[int]
    values: dict[str, np.ndarray]
    logits: np.ndarray | None = None

    @property
    def num_layers(self) -> int:
        return next(iter(self.values.values())).shape[0]

    @property
    def hidden_size(self) -> int:
        return next(iter(self.values.values())).shape[2]

    def cell(self, layer: int, index: int, kind: str = "c") -> np.ndarray:
        """The activation of one cell at every position."""
        return self.values[kind][layer, :, index]


def check_state_kind(cell: str, kind: str) -> None:
    kinds = STATE_KINDS.get(cell)
    if kinds is None:
        raise LstmgenError(f"cannot inspect {cell!r} cells; the cells are {', '.join(STATE_KINDS)}")
    if kind not in ("c", "h"):
        raise LstmgenError(f"{KINDS_REF} must be c (cell state) or h (output), not {kind!r}")
    if kind not in kinds:
        raise LstmgenError(f"a {cell} model has no separate cell state; use {KINDS_REF} h")


@torch.inference_mode()
def activations(
    model: Any, ids: Sequence[int], kinds: Sequence[str] | None = None, with_logits: bool = False
) -> Activations:
    """Step `model` (an LSTMLanguageModel) over `ids` from the zero state, recording every cell.

    `ids` should start with the start id (as evaluation and sampling do: [1] + encode(text)).
    `kinds` picks what to keep (default: all the cell exposes). Runs on the CPU in float32.
    """
    cell = getattr(model.config, "cell", "lstm")
    available = STATE_KINDS.get(cell)
    if available is None:
        raise LstmgenError(f"cannot inspect {cell!r} cells; the cells are {', '.join(STATE_KINDS)}")
    kinds = tuple(kinds) if kinds is not None else available
    for kind in kinds:
        check_state_kind(cell, kind)
    if not len(ids):
        raise LstmgenError("nothing to inspect: the text has no tokens")
    tokens = torch.as_tensor(list(ids), dtype=torch.long)
    x = model.embed(tokens[None])[0].detach().float().cpu()
    kept: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    for layer in range(model.config.num_layers):
        result = CELLS[cell].trace(model.rnn, layer, x)
        for kind in kinds:
            kept[kind].append(result[kind].numpy())
        x = result["out"]
    logits = None
    if with_logits:
        features = model.projection(x) if model.projection is not None else x
        logits = model.head(features).float().numpy()
    return Activations(list(ids), {kind: np.stack(arrays) for kind, arrays in kept.items()}, logits)


def parse_neuron(spec: str, num_layers: int, hidden_size: int) -> tuple[int, int]:
    """'L:K' → (layer, cell index), both counted from 0, checked against the model's sizes."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise LstmgenError(
            f"{NEURON_REF} must be LAYER:CELL with whole numbers counted from 0 (e.g. 0:17), not {spec!r}"
        )
    layer, index = int(parts[0]), int(parts[1])
    if layer >= num_layers:
        raise LstmgenError(
            f"{NEURON_REF} {spec}: the model has {num_layers} layer{'s' if num_layers != 1 else ''} (0 to {num_layers - 1})"
        )
    if index >= hidden_size:
        raise LstmgenError(f"{NEURON_REF} {spec}: each layer has {hidden_size} cells (0 to {hidden_size - 1})")
    return layer, index


# -- text pieces -----------------------------------------------------------------------------------


@dataclass
class Piece:
    """A run of tokens that decodes to whole characters: what one coloured span shows.

    Tokens are usually pieces on their own; a character split into UTF-8 byte tokens (byte
    fallback) becomes one piece of several tokens. `first`/`last` index the id sequence.
    """

    text: str
    first: int
    last: int

    @property
    def token_count(self) -> int:
        return self.last - self.first + 1


def group_pieces(tokenizer: Any, ids: Sequence[int], start: int = 1) -> list[Piece]:
    """Pieces of ids[start:] whose texts concatenate to the decoded text (as the decoder gives it)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[Piece] = []
    first = start
    text: list[str] = []
    for index in range(start, len(ids)):
        text.append(decoder.decode(tokenizer.token_bytes(int(ids[index]))))
        if not decoder.getstate()[0]:  # no incomplete character pending: the piece ends here
            pieces.append(Piece("".join(text), first, index))
            first, text = index + 1, []
    if first < len(ids):
        pieces.append(Piece("".join(text) + decoder.decode(b"", final=True), first, len(ids) - 1))
    return pieces


# -- text features ---------------------------------------------------------------------------------

#: Feature name → what it measures (after reading a piece; the activation is read at the same point).
FEATURES: dict[str, str] = {
    "in_quotes": 'inside "double" or “curly” quotes',
    "in_single_quotes": "inside 'single' or ‘curly single’ quotes",
    "in_parentheses": "inside ( )",
    "in_brackets": "inside [ ] or { }",
    "bracket_depth": "how many ( [ { are open",
    "position_in_line": "characters since the last line break",
    "position_in_word": "letters since the last non-letter",
    "caps_line": "in a line of capitals so far (speaker name, heading)",
    "after_newline": "the piece ends a line (the next one starts a line)",
    "line_start": "the piece is the first of its line",
    "whitespace": "the piece ends with a space or tab",
    "word_inside": "the piece ends with a letter",
    "digit": "the piece contains a digit",
    "uppercase": "the piece's letters are all capitals",
    "capitalized": "the piece is a capitalized word (Capital, small letters)",
    "punctuation": "the piece is punctuation",
    "sentence_end": "the piece ends a sentence (. ! ? 。！？)",
    "cjk": "the piece is CJK (Chinese, Japanese, Korean) rather than other script",
    "latin": "the piece contains Latin letters",
}
#: Features of the context read so far (a cell must remember something to track them); the others
#: describe the piece just read, which the input itself tells the network.
CONTEXT_FEATURES = frozenset(
    {
        "in_quotes",
        "in_single_quotes",
        "in_parentheses",
        "in_brackets",
        "bracket_depth",
        "position_in_line",
        "position_in_word",
        "caps_line",
    }
)
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_SENTENCE_END = set(".!?。！？")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2FA1F
        or 0xF900 <= code <= 0xFAFF
        or 0x3040 <= code <= 0x30FF
        or 0xAC00 <= code <= 0xD7AF
        or 0x3000 <= code <= 0x303F
        or 0xFF00 <= code <= 0xFFEF
    )


def _is_latin(char: str) -> bool:
    return char.isalpha() and (char.isascii() or "LATIN" in unicodedata.name(char, ""))


def text_features(pieces: Sequence[str]) -> dict[str, np.ndarray]:
    """Every feature of `FEATURES` for each piece, as float arrays of len(pieces).

    Stateful features (quotes, brackets, position in line) are read after the piece's last
    character: the opening quote is already inside, the closing one already outside.
    """
    out = {name: np.zeros(len(pieces), dtype=np.float64) for name in FEATURES}
    in_double = in_single = False
    depth = {"(": 0, "[": 0, "{": 0}
    column = 0
    word = 0
    caps = None  # the current line's letters so far: None = no letter yet, True = all capitals
    previous = "\n"
    for index, piece in enumerate(pieces):
        starts_line = previous == "\n"
        for char in piece:
            if char == '"':
                in_double = not in_double
            elif char == "“":
                in_double = True
            elif char == "”":
                in_double = False
            elif char == "‘":
                in_single = True
            elif char == "’":
                # A closing curly quote, or an apostrophe inside a word (don’t).
                in_single = in_single and not previous.isalpha()
            elif char == "'":
                if not previous.isalpha():
                    in_single = True
                elif in_single:
                    in_single = False
            elif char in _OPENERS:
                depth[char] += 1
            elif char in _CLOSERS:
                depth[_CLOSERS[char]] = max(0, depth[_CLOSERS[char]] - 1)
            if char.isalpha() and char.upper() != char.lower():
                caps = (caps is not False) and char.isupper()
            if char == "\n":
                caps = None
                column = 0
                in_single = False  # an unmatched apostrophe-quote does not run past the line
            else:
                column += 1
            word = word + 1 if char.isalpha() else 0
            previous = char
        letters = [ch for ch in piece if ch.isalpha()]
        stripped = piece.strip()
        values = out
        values["in_quotes"][index] = in_double
        values["in_single_quotes"][index] = in_single
        values["in_parentheses"][index] = depth["("] > 0
        values["in_brackets"][index] = depth["["] + depth["{"] > 0
        values["bracket_depth"][index] = sum(depth.values())
        values["position_in_line"][index] = column
        values["position_in_word"][index] = word
        values["caps_line"][index] = caps is True
        values["after_newline"][index] = piece.endswith("\n")
        values["line_start"][index] = starts_line and bool(piece)
        values["whitespace"][index] = piece[-1:] in (" ", "\t")
        values["word_inside"][index] = bool(piece) and piece[-1].isalpha()
        values["digit"][index] = any(ch.isdigit() for ch in piece)
        values["uppercase"][index] = (
            bool(letters)
            and all(ch.isupper() for ch in letters if ch.upper() != ch.lower())
            and any(ch.isupper() for ch in letters)
        )
        values["capitalized"][index] = (
            len(stripped) > 1 and stripped[0].isupper() and stripped[1:].isalpha() and stripped[1:].islower()
        )
        values["punctuation"][index] = bool(stripped) and all(
            unicodedata.category(ch).startswith("P") for ch in stripped
        )
        values["sentence_end"][index] = bool(stripped) and stripped.rstrip("\"'”’)")[-1:] in _SENTENCE_END
        values["cjk"][index] = any(_is_cjk(ch) for ch in piece)
        values["latin"][index] = any(_is_latin(ch) for ch in piece)
    return out


# -- finding cells ---------------------------------------------------------------------------------


@dataclass
class CellMatch:
    layer: int
    index: int
    kind: str
    r: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "neuron": f"{self.layer}:{self.index}",
            "layer": self.layer,
            "cell": self.index,
            "state": self.kind,
            "r": round(self.r, 4),
        }


@dataclass
class FeatureMatches:
    name: str
    description: str
    mean: float
    top: list[CellMatch] = field(default_factory=list)

    @property
    def context(self) -> bool:
        """Whether the feature is about the context (needs memory) rather than the piece just read."""
        return self.name in CONTEXT_FEATURES

    @property
    def best(self) -> float:
        return abs(self.top[0].r) if self.top else 0.0


def correlations(activations: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """Pearson r of every column of `activations` (N, cells) with `feature` (N,); 0 for constant columns."""
    a = activations.astype(np.float64)
    a = a - a.mean(axis=0)
    f = feature.astype(np.float64) - feature.mean()
    denominator = np.sqrt((a * a).sum(axis=0) * float((f * f).sum()))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a * f[:, None]).sum(axis=0) / denominator
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def find_cells(
    acts: Activations,
    positions: Sequence[int],
    features: dict[str, np.ndarray],
    top: int = 3,
    kinds: Sequence[str] | None = None,
) -> tuple[list[FeatureMatches], list[str]]:
    """For each feature, the `top` cells whose activation correlates most (by |r|) with it.

    Context features (`CONTEXT_FEATURES`) come first, then the others, each group strongest first.
    `positions` are the activation positions of the pieces the features describe (each piece's
    last token). Returns the matches, strongest first, and the features left out because they
    are constant over the text (nothing to correlate with).
    """
    kinds = tuple(kinds) if kinds is not None else tuple(acts.values)
    index = np.asarray(positions, dtype=np.int64)
    columns = []  # (kind, layer) blocks of (N, hidden)
    for kind in kinds:
        for layer in range(acts.num_layers):
            columns.append((kind, layer, acts.values[kind][layer][index]))
    matches, constant = [], []
    for name, feature in features.items():
        if len(feature) < 3 or np.all(feature == feature[0]):
            constant.append(name)
            continue
        candidates: list[CellMatch] = []
        for kind, layer, block in columns:
            r = correlations(block, feature)
            for cell in np.argsort(-np.abs(r))[:top]:
                candidates.append(CellMatch(layer, int(cell), kind, float(r[cell])))
        candidates.sort(key=lambda m: -abs(m.r))
        matches.append(FeatureMatches(name, FEATURES.get(name, name), float(feature.mean()), candidates[:top]))
    matches.sort(key=lambda m: (not m.context, -m.best))
    return matches, constant


def chance_level(count: int) -> float:
    """|r| that a cell unrelated to a feature exceeds with ~0.3% probability on `count` points (3/√n)."""
    return 3.0 / math.sqrt(count) if count > 0 else 1.0


# -- inspecting a text file with a loaded model: what `lstmgen inspect` shows ------------------------

TOP_REF = option_mark("top", "--top")
MAX_TOKENS_REF = option_mark("max_tokens", "--max-tokens")


@dataclass
class TextActivations:
    """A file's beginning as the model read it: ids ([start] + text), pieces, activations, and the file's token count."""

    path: Any
    ids: list[int]
    total_tokens: int
    pieces: list[Piece]
    activations: Activations
    kinds: tuple[str, ...]
    config: Any


@dataclass
class NeuronView:
    """One cell's value after each piece, and the colour scale's extent: full colour at the 99th percentile of |value|,
    marks more than a standard deviation from the mean."""

    values: np.ndarray
    limit: float
    low: float
    high: float


def check_inspect_options(neuron: str | None, find: bool, state: str | None, top: int, max_tokens: int) -> None:
    """Refuse impossible inspect options before any model is loaded."""
    if find == (neuron is not None):
        raise LstmgenError(
            f"give {NEURON_REF} LAYER:CELL to colour the text by one cell, or {option_mark('find', '--find')} to rank cells "
            "by feature (one of them)"
        )
    if state is not None and state not in ("c", "h"):
        raise LstmgenError(f"{KINDS_REF} must be c (cell state) or h (output), not {state!r}")
    if not 1 <= top <= 100:
        raise LstmgenError(f"{TOP_REF} must be a whole number from 1 to 100, not {top}")
    if not 1 <= max_tokens <= 10_000_000:
        raise LstmgenError(f"{MAX_TOKENS_REF} must be a whole number from 1 to 10000000, not {max_tokens}")


def inspect_file(
    lm: Any,
    path: Any,
    neuron: str | None = None,
    state: str | None = None,
    max_tokens: int = 20_000,
    errors: str = "strict",
) -> tuple[TextActivations, tuple[int, int] | None]:
    """Read the beginning of `path` (at most `max_tokens` tokens) with `lm` (a LanguageModel), recording the
    activations to show: one cell's (`neuron` "LAYER:CELL", with `state` or its cell's default) or every cell's."""
    config = lm.config
    cell = config.cell
    position = parse_neuron(neuron, config.num_layers, config.hidden_size) if neuron is not None else None
    if position is not None:
        kinds: tuple[str, ...] = (state or ("c" if "c" in STATE_KINDS[cell] else "h"),)
    else:
        kinds = (state,) if state is not None else STATE_KINDS[cell]
    for kind in kinds:
        check_state_kind(cell, kind)
    ids, total = _file_ids(lm.tokenizer, path, errors, max_tokens)
    acts = activations(lm.model, ids, kinds)
    return TextActivations(path, ids, total, group_pieces(lm.tokenizer, ids, start=1), acts, kinds, config), position


def _file_ids(tokenizer: Any, path: Any, errors: str, max_tokens: int) -> tuple[list[int], int]:
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


def neuron_view(text: TextActivations, layer: int, index: int) -> NeuronView:
    values = text.activations.cell(layer, index, text.kinds[0])
    shown = np.array([values[p.last] for p in text.pieces], dtype=np.float64)
    limit = float(np.percentile(np.abs(shown), 99)) if len(shown) else 1.0
    spread = float(shown.std()) if len(shown) > 1 else 0.0
    low, high = (float(shown.mean()) - spread, float(shown.mean()) + spread) if spread > 1e-9 else (-math.inf, math.inf)
    return NeuronView(shown, limit if limit > 1e-6 else 1.0, low, high)


def find_in_text(text: TextActivations, top: int) -> tuple[list[FeatureMatches], list[str], float]:
    """The cells that track each feature of the text best, the features constant over it, and the |r| of chance."""
    features = text_features([p.text for p in text.pieces])
    matches, constant = find_cells(text.activations, [p.last for p in text.pieces], features, top=top, kinds=text.kinds)
    return matches, constant, chance_level(len(text.pieces))
