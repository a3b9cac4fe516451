"""See inside a model: per-token cell activations over a text, and the text features they track.

`activations(model, ids)` steps the model over a token sequence with the recurrent state carried
from the first token to the last and records, after every token, every layer's cell state and
output. `torch.nn.LSTM` returns only the state after the last time step, so the recurrence is
re-run here from the weights: layer by layer, one GEMM for the input projections of the whole
sequence and then one small GEMM per time step (the same equations as `cells.make_step`, which
the tests check against the model's own forward).

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

from .errors import LstmgenError

#: The activation kinds each cell exposes (see the module docstring).
STATE_KINDS: dict[str, tuple[str, ...]] = {"lstm": ("c", "h"), "paper": ("c", "h"), "gru": ("h",)}
STATE_LABELS = {"c": "cell state", "h": "output"}


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
        raise LstmgenError(f"--state must be c (cell state) or h (output), not {kind!r}")
    if kind not in kinds:
        raise LstmgenError(f"a {cell} model has no separate cell state; use --state h")


def _layer_weights(rnn: torch.nn.Module, cell: str, layer: int) -> dict[str, torch.Tensor]:
    if cell in ("lstm", "gru"):
        return {name: getattr(rnn, f"{name}_l{layer}").detach().float() for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    w_ih, w_hh, w_ho, bias = rnn.layer_weights(layer)
    return {"weight_ih": w_ih.detach().float(), "weight_hh": w_hh.detach().float(), "weight_ho": w_ho.detach().float(), "bias": bias.detach().float()}


def run_layer(cell: str, weights: dict[str, torch.Tensor], inputs: torch.Tensor, state: Sequence[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One recurrent layer over a whole sequence, keeping every time step.

    inputs (T, in) → {"out": (T, H) outputs fed to the next layer, "c"/"h": (T, H) per `STATE_KINDS`}.
    `state` is the layer's initial state ((h, c) for lstm, (h,) otherwise; zeros when None).
    """
    steps = inputs.shape[0]
    hidden = weights["weight_hh"].shape[1]
    zeros = inputs.new_zeros(1, hidden)
    if cell == "lstm":
        projected = torch.addmm(weights["bias_ih"] + weights["bias_hh"], inputs, weights["weight_ih"].t())
        w_hh = weights["weight_hh"].t().contiguous()
        h, c = (state[0].reshape(1, hidden), state[1].reshape(1, hidden)) if state is not None else (zeros, zeros)
        hs, cs = inputs.new_empty(steps, hidden), inputs.new_empty(steps, hidden)
        for t in range(steps):
            i, f, g, o = torch.addmm(projected[t : t + 1], h, w_hh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs[t], cs[t] = h[0], c[0]
        return {"out": hs, "h": hs, "c": cs}
    if cell == "gru":
        projected = torch.addmm(weights["bias_ih"], inputs, weights["weight_ih"].t())
        w_hh, b_hh = weights["weight_hh"].t().contiguous(), weights["bias_hh"]
        h = state[0].reshape(1, hidden) if state is not None else zeros
        hs = inputs.new_empty(steps, hidden)
        for t in range(steps):
            ir, iz, in_ = projected[t : t + 1].chunk(3, dim=1)
            hr, hz, hn = torch.addmm(b_hh, h, w_hh).chunk(3, dim=1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            h = n + z * (h - n)
            hs[t] = h[0]
        return {"out": hs, "h": hs}
    if cell == "paper":
        projected = torch.addmm(weights["bias"], inputs, weights["weight_ih"].t())
        w_hh = weights["weight_hh"].t().contiguous()
        h = state[0].reshape(1, hidden) if state is not None else zeros
        cs = inputs.new_empty(steps, hidden)
        for t in range(steps):
            a = torch.addmm(projected[t : t + 1, : 3 * hidden], h, w_hh)
            i, f, candidate = torch.sigmoid(a[:, :hidden]), torch.sigmoid(a[:, hidden : 2 * hidden]), torch.tanh(a[:, 2 * hidden :])
            h = f * h + i * candidate
            cs[t] = h[0]
        # The output gate reads the new state but never feeds the recurrence: one GEMM for all steps.
        out_gate = torch.sigmoid(torch.addmm(projected[:, 3 * hidden :], cs, weights["weight_ho"].t()))
        ys = out_gate * torch.tanh(cs)
        return {"out": ys, "h": ys, "c": cs}
    raise LstmgenError(f"cannot inspect {cell!r} cells; the cells are {', '.join(STATE_KINDS)}")


@torch.inference_mode()
def activations(model: Any, ids: Sequence[int], kinds: Sequence[str] | None = None, with_logits: bool = False) -> Activations:
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
        result = run_layer(cell, _layer_weights(model.rnn, cell, layer), x)
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
        raise LstmgenError(f"--neuron must be LAYER:CELL with whole numbers counted from 0 (e.g. 0:17), not {spec!r}")
    layer, index = int(parts[0]), int(parts[1])
    if layer >= num_layers:
        raise LstmgenError(f"--neuron {spec}: the model has {num_layers} layer{'s' if num_layers != 1 else ''} (0 to {num_layers - 1})")
    if index >= hidden_size:
        raise LstmgenError(f"--neuron {spec}: each layer has {hidden_size} cells (0 to {hidden_size - 1})")
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
CONTEXT_FEATURES = frozenset({"in_quotes", "in_single_quotes", "in_parentheses", "in_brackets", "bracket_depth", "position_in_line",
                              "position_in_word", "caps_line"})
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}
_SENTENCE_END = set(".!?。！？")


def _is_cjk(char: str) -> bool:
    code = ord(char)
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2FA1F or 0xF900 <= code <= 0xFAFF
            or 0x3040 <= code <= 0x30FF or 0xAC00 <= code <= 0xD7AF or 0x3000 <= code <= 0x303F or 0xFF00 <= code <= 0xFFEF)


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
        values["uppercase"][index] = bool(letters) and all(ch.isupper() for ch in letters if ch.upper() != ch.lower()) and any(ch.isupper() for ch in letters)
        values["capitalized"][index] = len(stripped) > 1 and stripped[0].isupper() and stripped[1:].isalpha() and stripped[1:].islower()
        values["punctuation"][index] = bool(stripped) and all(unicodedata.category(ch).startswith("P") for ch in stripped)
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
        return {"neuron": f"{self.layer}:{self.index}", "layer": self.layer, "cell": self.index, "state": self.kind, "r": round(self.r, 4)}


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


def find_cells(acts: Activations, positions: Sequence[int], features: dict[str, np.ndarray], top: int = 3,
               kinds: Sequence[str] | None = None) -> tuple[list[FeatureMatches], list[str]]:
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
