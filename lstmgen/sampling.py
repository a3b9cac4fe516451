"""Generation: each prompt is read once, then the recurrent state steps one token at a time.

Each sample owns a random generator derived from (seed, sample index) and draws exactly one
uniform number per sampled token, so the same seed gives the same text whether samples run in one
batch or one at a time, and whatever else is in the batch. Tokens are drawn by inverting the
cumulative distribution of the filtered candidates (no full sort unless top-p needs one). Text is
decoded incrementally from each token's bytes, so streamed output equals decoding the whole
sequence byte for byte.
"""

from __future__ import annotations

import codecs
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import start_ids
from .errors import LstmgenError
from .model import START_ID, LSTMLanguageModel, State
from .quantization import Int8LSTMLanguageModel, check_quantize, reorder_gates
from .tokenizer import Tokenizer

#: Prompt tokens read per forward call (bounds the logits a long prompt needs).
PROMPT_WINDOW = 1024
#: The most prompt tokens kept for the repetition penalty (its window's upper limit).
MAX_HISTORY = 1 << 20

FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_END = "end-of-text"

#: Candidates looked at first for top-p without top-k; more only when they hold too little mass.
_TOP_P_CANDIDATES = 64
#: Uniform numbers drawn from a sample's generator at a time.
_UNIFORM_BLOCK = 64


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class SamplingOptions:
    """Every knob of generation; the CLI flags map one to one onto these fields."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64
    max_tokens: int = 200
    max_chars: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    seed: int | None = None

    def validate(self) -> None:
        """Raise LstmgenError naming the first impossible value and what would be valid."""
        if not _number(self.temperature) or not 0 <= self.temperature <= 100:
            raise LstmgenError(f"--temp must be a number from 0 (greedy) to 100, not {self.temperature!r}")
        if not _whole(self.top_k) or self.top_k < 0:
            raise LstmgenError(f"--top-k must be a whole number ≥ 0 (0 turns it off), not {self.top_k!r}")
        if not _number(self.top_p) or not 0 < self.top_p <= 1:
            raise LstmgenError(f"--top-p must be in (0, 1] (1 turns it off), not {self.top_p!r}")
        if not _number(self.min_p) or not 0 <= self.min_p < 1:
            raise LstmgenError(f"--min-p must be in [0, 1) (0 turns it off), not {self.min_p!r}")
        if not _number(self.repetition_penalty) or not 1 <= self.repetition_penalty <= 100:
            raise LstmgenError(f"--repetition-penalty must be a number from 1 (off) to 100, not {self.repetition_penalty!r}")
        if not _whole(self.repetition_window) or not 1 <= self.repetition_window <= 1 << 20:
            raise LstmgenError(f"--repetition-window must be a whole number from 1 to {1 << 20}, not {self.repetition_window!r}")
        if not _whole(self.max_tokens) or not 0 <= self.max_tokens <= 10**9:
            raise LstmgenError(f"--max-tokens must be a whole number from 0 to 1000000000, not {self.max_tokens!r}")
        if self.max_chars is not None and (not _whole(self.max_chars) or not 0 <= self.max_chars <= 10**12):
            raise LstmgenError(f"--max-chars must be a whole number ≥ 0, not {self.max_chars!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise LstmgenError("--stop needs a non-empty string")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed < 2**63):
            raise LstmgenError(f"--seed must be a whole number from 0 to 2^63-1, not {self.seed!r}")


def check_num_samples(num_samples: object) -> int:
    if not _whole(num_samples) or not 1 <= num_samples <= 1 << 16:  # type: ignore[operator]
        raise LstmgenError(f"--num-samples must be a whole number from 1 to {1 << 16}, not {num_samples!r}")
    return num_samples  # type: ignore[return-value]


@dataclass
class Sample:
    """One finished sample."""

    text: str
    tokens: list[int]
    log_prob: float
    finish_reason: str


# -- one-token steps --------------------------------------------------------------------------------

#: A cell step maps (layer-0 input (batch, embedding), state) to (top-layer output, new state).
CellStep = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]
_CELL_STEPS: dict[str, Callable[[Any], CellStep]] = {}


def register_cell_step(cell: str, factory: Callable[[Any], CellStep]) -> None:
    """Give FastStepper a fast float step for models whose `config.cell` is `cell`.

    `factory(model)` is called once per model and returns `step(x, state) -> (output, state)`,
    where x is the (batch, embedding) input of the first layer, output is the (batch, hidden)
    output of the last layer, and state has the layout `model.forward` takes and returns (batch
    on dimension 1 of every tensor). Cells without a registered step use `cells.make_step`
    when it knows the cell, else `model.forward` on one time step (correct but slower).
    """
    _CELL_STEPS[cell] = factory


class _LSTMStep:
    """Float LSTM step: one fused addmm per layer over [x, h], gates reordered to (i, f, o, g).

    nn.LSTM called on a single time step pays oneDNN's setup cost on every call; this plain step
    is several times faster at batch 1 and reads each weight exactly once per token.
    """

    def __init__(self, model: LSTMLanguageModel) -> None:
        rnn = model.rnn
        self.hidden = model.config.hidden_size
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        with torch.no_grad():
            for layer in range(model.config.num_layers):
                weight = torch.cat([getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")], dim=1)
                bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
                self.layers.append((reorder_gates(weight).t().contiguous(), reorder_gates(bias).contiguous()))

    def __call__(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_all, c_all = state
        hidden = self.hidden
        new_h, new_c = [], []
        for layer, (weight, bias) in enumerate(self.layers):
            gates = torch.addmm(bias, torch.cat([x, h_all[layer]], dim=1), weight)
            sig = gates[:, : 3 * hidden].sigmoid_()
            c = torch.addcmul(sig[:, hidden : 2 * hidden] * c_all[layer], sig[:, :hidden], gates[:, 3 * hidden :].tanh_())
            x = torch.tanh(c).mul_(sig[:, 2 * hidden :])
            new_h.append(x)
            new_c.append(c)
        return x, (torch.stack(new_h), torch.stack(new_c))


register_cell_step("lstm", _LSTMStep)


def _cell_step(model: LSTMLanguageModel) -> CellStep | None:
    """The registered step of the model's cell, else the cell module's own, else None."""
    cell = getattr(model.config, "cell", "lstm")
    if cell in _CELL_STEPS:
        return _CELL_STEPS[cell](model)
    try:
        from .cells import make_step  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        return make_step(model.rnn, cell, model.config.num_layers)
    except ValueError:
        return None


class FastStepper:
    """`step(tokens, state) -> (logits, state)`: advance every row of a batch by one token.

    Float models use the cell's registered step (see `register_cell_step`); `quantize="int8"`
    runs the int8 model of `lstmgen.quantization`. `forward(tokens, state)` reads whole
    sequences (prompts) with the arithmetic that matches the steps.
    """

    def __init__(self, model: LSTMLanguageModel, quantize: str | None = None) -> None:
        self.model = model
        self.quantize = quantize
        self.int8 = Int8LSTMLanguageModel(model) if quantize == "int8" else None
        self.cell: CellStep | None = _cell_step(model) if self.int8 is None else None
        self.embedding = model.embedding.weight
        self.projection = model.projection.weight if model.projection is not None else None
        self.head_weight = model.head.weight
        self.head_bias = model.head.bias

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights read to produce one token at batch 1 (the embedding: one row)."""
        if self.int8 is not None:
            return self.int8.weight_bytes
        model = self.model
        total = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith("embedding"))
        if model.config.tie_weights:  # the tied head is not among the named parameters twice
            total += model.head.weight.numel() * model.head.weight.element_size()
        return total + model.embedding.weight.shape[1] * model.embedding.weight.element_size()

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """tokens (batch,) → logits (batch, vocab) and the new state."""
        if self.int8 is not None:
            return self.int8.step(tokens, state)
        if self.cell is None:
            logits, state = self.model(tokens[:, None], state)
            return logits[:, 0], state
        x = self.embedding[tokens].masked_fill_((tokens == START_ID).unsqueeze(-1), 0.0)
        x, state = self.cell(x, state)
        if self.projection is not None:
            x = F.linear(x, self.projection)
        return F.linear(x, self.head_weight, self.head_bias), state

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """tokens (batch, time) → logits (batch, time, vocab) and the state after the last token."""
        if self.int8 is not None:
            return self.int8(tokens, state)
        return self.model(tokens, state)


# -- text ---------------------------------------------------------------------------------------------


class _TextTracker:
    """Incremental decode of one sample, holding back text that may begin a stop string."""

    def __init__(self, stops: Sequence[str], max_chars: int | None) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = list(stops)
        self.max_chars = max_chars
        self.pending = ""
        self.emitted_chars = 0
        self.text_parts: list[str] = []
        self.finish: str | None = None

    def feed(self, data: bytes, final: bool = False) -> str:
        """Text that is now safe to emit."""
        self.pending += self.decoder.decode(data, final=final)
        out = self.pending
        for stop in self.stops:
            index = self.pending.find(stop)
            if index >= 0 and (self.finish is None or index < len(out)):
                out = self.pending[:index]
                self.finish = FINISH_STOP
        if self.finish == FINISH_STOP:
            self.pending = ""
        elif not final:
            hold = self._stop_prefix_length()
            out = self.pending[: len(self.pending) - hold]
            self.pending = self.pending[len(out) :]
        else:
            self.pending = ""
        if self.max_chars is not None and self.emitted_chars + len(out) >= self.max_chars:
            out = out[: self.max_chars - self.emitted_chars]
            if self.finish is None:
                self.finish = FINISH_LENGTH
        self.emitted_chars += len(out)
        self.text_parts.append(out)
        return out

    def _stop_prefix_length(self) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest


# -- randomness and filters ---------------------------------------------------------------------------


def _generator(seed: int | None, index: int) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((seed * 1_000_003 + index) % (2**63))
    return generator


class _Uniforms:
    """One uniform number per sample and step, from each sample's own generator.

    Rows advance in lockstep (one draw per row per step), so the numbers are drawn in blocks:
    sample i's k-th number is always the k-th number of its generator, whatever the batch.
    """

    def __init__(self, seed: int | None, first_index: int, count: int) -> None:
        self.generators = [_generator(seed, first_index + i) for i in range(count)]
        self.rows = list(range(count))  # the sample of each row of the block
        self.block = torch.empty(count, 0, dtype=torch.float64)
        self.column = 0

    def take(self) -> torch.Tensor:
        """(rows, 1) float64: the next number of every row still in the batch."""
        if self.column == self.block.shape[1]:
            self.block = torch.stack([torch.rand(_UNIFORM_BLOCK, generator=self.generators[i], dtype=torch.float64) for i in self.rows])
            self.column = 0
        self.column += 1
        return self.block[:, self.column - 1 : self.column]

    def select(self, keep: Sequence[int]) -> None:
        """Keep only these rows (samples that finished leave the batch)."""
        self.rows = [self.rows[row] for row in keep]
        self.block = self.block[list(keep)]


class _RecentTokens:
    """The last `window` tokens of each row (prompt, then generated), for the repetition penalty."""

    def __init__(self, histories: Sequence[Sequence[int]], window: int, vocab_size: int, device: torch.device) -> None:
        self.window = window
        self.vocab_size = vocab_size
        ring = torch.full((len(histories), window), vocab_size, dtype=torch.long)  # vocab_size: empty slot
        for row, history in enumerate(histories):
            recent = list(history)[-window:]
            if recent:
                ring[row, window - len(recent) :] = torch.tensor(recent, dtype=torch.long)
        self.ring = ring.to(device)
        self.position = 0  # slot of the oldest token, the next to be replaced

    def penalize(self, logits: torch.Tensor, penalty: float) -> torch.Tensor:
        """CTRL-style: divide positive logits, multiply negative ones, of recently seen tokens."""
        seen = torch.zeros(logits.shape[0], self.vocab_size + 1, dtype=torch.bool, device=logits.device)
        seen.scatter_(1, self.ring, True)
        penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
        return torch.where(seen[:, : self.vocab_size], penalized, logits)

    def push(self, tokens: torch.Tensor) -> None:
        self.ring[:, self.position] = tokens
        self.position = (self.position + 1) % self.window

    def select(self, rows: torch.Tensor) -> None:
        self.ring = self.ring[rows]


def _candidates(scaled: torch.Tensor, options: SamplingOptions) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The logits left after top-k, top-p and min-p (dropped ones at -inf) and their token ids.

    Returns (values, ids) with values sorted in descending order when ids is not None, or the
    full (batch, vocab) logits with ids None when no filter needed a subset.
    """
    vocab = scaled.shape[1]
    values, ids = scaled, None
    if options.top_k and options.top_k < vocab:
        values, ids = torch.topk(scaled, options.top_k, dim=1)
    if options.top_p < 1.0:
        if ids is None:
            # The nucleus is nearly always among the first few dozen tokens: look there first and
            # widen only for rows whose candidates hold less than top_p of the probability.
            log_total = torch.logsumexp(scaled, dim=1, keepdim=True)
            count = min(vocab, _TOP_P_CANDIDATES)
            while True:
                values, ids = torch.topk(scaled, count, dim=1)
                probs = torch.exp(values - log_total)
                cumulative = probs.cumsum(dim=1)
                if count == vocab or bool((cumulative[:, -1] >= options.top_p).all()):
                    break
                count = min(vocab, count * 8)
        else:
            probs = torch.softmax(values, dim=1)
            cumulative = probs.cumsum(dim=1)
        values = values.masked_fill(cumulative - probs >= options.top_p, -math.inf)
    if options.min_p > 0.0:
        top = values.amax(dim=1, keepdim=True)
        values = values.masked_fill(values < top + math.log(options.min_p), -math.inf)
    return values, ids


def _choose(scores: torch.Tensor, options: SamplingOptions, uniforms: _Uniforms | None) -> torch.Tensor:
    """One token id per row: greedy at temperature 0, else an inverse-CDF draw (no sort)."""
    if options.temperature == 0 or uniforms is None:
        return scores.argmax(dim=1)
    scaled = scores / options.temperature if options.temperature != 1.0 else scores
    values, ids = _candidates(scaled, options)
    cumulative = torch.softmax(values, dim=1).cumsum_(dim=1)
    total = cumulative[:, -1:]
    # 0 <= target < total, so the first entry above it exists and has a positive probability.
    target = torch.minimum(uniforms.take().to(cumulative).mul_(total), torch.nextafter(total, torch.zeros_like(total)))
    picks = torch.searchsorted(cumulative, target, right=True)
    return picks.squeeze(1) if ids is None else ids.gather(1, picks).squeeze(1)


# -- states --------------------------------------------------------------------------------------------


def _map_state(state: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(state, torch.Tensor):
        return fn(state)
    return tuple(_map_state(part, fn) for part in state)


def _cat_states(states: Sequence[Any]) -> Any:
    """Stack the states of several batches into one (batch is dimension 1 of every tensor)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(states), dim=1)
    return tuple(_cat_states(parts) for parts in zip(*states))


# -- the sampler ---------------------------------------------------------------------------------------


class Sampler:
    """Generate samples from a model, yielding text pieces as soon as they are final."""

    def __init__(self, model: LSTMLanguageModel, tokenizer: Tokenizer, device: torch.device | str = "cpu", quantize: str | None = None,
                 document_start: bool = False) -> None:
        """`document_start`: prompts begin a new document, so they are read after an EOS (for
        models trained on documents="blank-line" corpora, where EOS precedes every document)."""
        self.model = model.eval()
        self.document_start = document_start
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.quantize = check_quantize(quantize, self.device)
        self.stepper = FastStepper(model, quantize=self.quantize)
        banned = [i for i in tokenizer.special_ids if i != tokenizer.eos_id]
        self.banned = torch.tensor(banned, dtype=torch.long, device=self.device)

    def prompt_ids(self, prompt: str) -> list[int]:
        """What the model reads before generating: the start id, [EOS,] then the prompt's tokens."""
        return start_ids(self.tokenizer, "blank-line" if self.document_start else "file") + self.tokenizer.encode(prompt)

    def read_prompt(self, prompt: str) -> tuple[torch.Tensor, Any, list[int]]:
        """Read a prompt once: (next-token logits (1, vocab), state, the prompt's last ids).

        Long prompts are encoded line batch by line batch and read in windows of PROMPT_WINDOW
        tokens with the state carried, so memory stays bounded however long the prompt is (the ids
        are the same as encoding it whole: newline is a piece of its own, never merged across).
        """
        if not isinstance(prompt, str):
            raise LstmgenError(f"a prompt must be a string, not {type(prompt).__name__}")
        start = self.prompt_ids("")
        tokens = np.concatenate([np.asarray(start, dtype=np.int32), *self._encode_in_batches(prompt)])
        state: Any = None
        for begin in range(0, len(tokens), PROMPT_WINDOW):
            window = torch.from_numpy(tokens[None, begin : begin + PROMPT_WINDOW].astype(np.int64)).to(self.device)
            logits, state = self.stepper.forward(window, state)
            logits = logits[:, -1, :]
        history = tokens[len(start) :][-MAX_HISTORY:].tolist()
        return logits.float(), state, history

    def _encode_in_batches(self, text: str) -> Iterator[np.ndarray]:
        batch: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            batch.append(line)
            size += len(line)
            if size >= 1 << 13:
                yield self._ids_tensor(batch)
                batch, size = [], 0
        if batch:
            yield self._ids_tensor(batch)

    def _ids_tensor(self, lines: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(lines)
        count = sum(len(ids) for ids in encoded)
        return np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=count)

    def stream(self, prompt: str, options: SamplingOptions, num_samples: int = 1, first_index: int = 0) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Yield (sample index, text piece) while generating and (index, Sample) when one ends.

        The prompt is read once and its state copied to `num_samples` rows generated as a batch;
        sample i draws from the generator of index `first_index + i`.
        """
        options.validate()
        check_num_samples(num_samples)
        return self._stream([prompt], options, num_samples, first_index)

    def stream_batch(self, prompts: Sequence[str], options: SamplingOptions, first_index: int = 0) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Like `stream` with one sample per prompt: prompt i is read on its own, then all rows
        step together; sample i draws from the generator of index `first_index + i`."""
        options.validate()
        if isinstance(prompts, str) or not len(prompts):
            raise LstmgenError("give a non-empty list of prompts")
        return self._stream(list(prompts), options, 1, first_index)

    @torch.inference_mode()
    def _stream(self, prompts: list[str], options: SamplingOptions, copies: int, first_index: int) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        reads = [self.read_prompt(prompt) for prompt in prompts]
        if len(reads) == 1:
            logits, state, history = reads[0]
            logits = logits.repeat(copies, 1)
            state = _map_state(state, lambda s: s.repeat_interleave(copies, dim=1) if copies > 1 else s)
            histories = [history] * copies
        else:
            logits = torch.cat([r[0] for r in reads])
            state = _cat_states([r[1] for r in reads])
            histories = [r[2] for r in reads]
        yield from self._generate(logits, state, histories, options, first_index)

    def _generate(self, logits: torch.Tensor, state: Any, histories: list[list[int]], options: SamplingOptions,
                  first_index: int) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        count = logits.shape[0]
        eos = self.tokenizer.eos_id
        token_bytes = self.tokenizer.token_bytes
        trackers = [_TextTracker(options.stop, options.max_chars) for _ in range(count)]
        uniforms = _Uniforms(options.seed, first_index, count) if options.temperature > 0 else None
        penalty = options.repetition_penalty
        recent = _RecentTokens(histories, options.repetition_window, logits.shape[1], logits.device) if penalty != 1.0 else None
        generated: list[list[int]] = [[] for _ in range(count)]
        log_probs = [0.0] * count
        active = list(range(count))  # the sample index of each row still in the batch
        choice = torch.empty(0, dtype=torch.long)
        for step in range(options.max_tokens):
            if step:
                if recent is not None:
                    recent.push(choice)
                logits, state = self.stepper.step(choice, state)
                logits = logits.float()
            logits.index_fill_(1, self.banned, -math.inf)
            scores = recent.penalize(logits, penalty) if recent is not None else logits
            choice = _choose(scores, options, uniforms)
            chosen_log_probs = torch.log_softmax(logits, dim=1).gather(1, choice.unsqueeze(1)).squeeze(1).tolist()
            tokens = choice.tolist()
            finished = []
            for row, index in enumerate(active):
                token = tokens[row]
                tracker = trackers[index]
                log_probs[index] += chosen_log_probs[row]
                if token == eos:
                    tracker.finish = FINISH_END
                    piece = tracker.feed(b"", final=True)
                else:
                    generated[index].append(token)
                    piece = tracker.feed(token_bytes(token))
                if piece:
                    yield index + first_index, piece
                if tracker.finish is not None:
                    finished.append(row)
                    yield index + first_index, self._sample(tracker, generated[index], log_probs[index])
            if finished:
                keep = [row for row in range(len(active)) if row not in finished]
                active = [active[row] for row in keep]
                if not active:
                    return
                rows = torch.tensor(keep, dtype=torch.long, device=choice.device)
                choice = choice[rows]
                state = _map_state(state, lambda s: s.index_select(1, rows))
                if recent is not None:
                    recent.select(rows)
                if uniforms is not None:
                    uniforms.select(keep)
        for index in active:
            tracker = trackers[index]
            tail = tracker.feed(b"", final=True)
            if tail:
                yield index + first_index, tail
            tracker.finish = tracker.finish or FINISH_LENGTH
            yield index + first_index, self._sample(tracker, generated[index], log_probs[index])

    def _sample(self, tracker: _TextTracker, tokens: list[int], log_prob: float) -> Sample:
        return Sample(text="".join(tracker.text_parts), tokens=list(tokens), log_prob=log_prob, finish_reason=tracker.finish or FINISH_LENGTH)
