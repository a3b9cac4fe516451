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
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cells import Step, make_step
from .config import SamplingOptions
from .constraints import Cursor, PromptMismatch, TokenConstraint
from .data import start_ids
from .errors import LstmgenError, option_mark
from .model import START_ID, LSTMLanguageModel
from .options import ref
from .quantization import Int8LSTMLanguageModel, check_quantize, int8_forced, int8_is_faster
from .tokenizer import Tokenizer

__all__ = ["FastStepper", "Sample", "Sampler", "SamplingOptions", "check_num_samples"]

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
#: The most samples of one call, and how many of them are generated side by side at a time: memory
#: stays bounded however many are asked for (samples are independent: the same texts either way).
MAX_SAMPLES = 1 << 16
SAMPLES_PER_BATCH = 256
#: `num_samples` of LanguageModel.sample_many, `-n/--num-samples` of `lstmgen sample`.
NUM_SAMPLES_REF = option_mark("num_samples", "--num-samples")
#: Constrained sampling (poems) backtracks a sample to the start of its current verse or line when the tokens
#: a constraint allows hold less than this share of the model's probability (the constraint would force an
#: unlikely token), at most BACKTRACK_BUDGET times per sample; greedy sampling never backtracks.
BACKTRACK_BELOW = 0.02
BACKTRACK_BUDGET = 8
#: Poem constraints kept built per sampler (building one reads the whole vocabulary).
_CONSTRAINTS_KEPT = 8


def check_num_samples(num_samples: object) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= MAX_SAMPLES:
        raise LstmgenError(f"{NUM_SAMPLES_REF} must be a whole number from 1 to {MAX_SAMPLES}, not {num_samples!r}")
    return num_samples


@dataclass
class Sample:
    """One finished sample."""

    text: str
    tokens: list[int]
    log_prob: float
    finish_reason: str


# -- one-token steps --------------------------------------------------------------------------------


class FastStepper:
    """`step(tokens, state) -> (logits, state)`: advance every row of a batch by one token.

    Float models use their cell's one-token step (`cells.make_step`: fused GEMMs per layer over the
    cell's equations); `quantize="int8"` runs the int8 model of `lstmgen.quantization` where it is
    at least as fast as float32 (`uses_int8`). `forward(tokens, state)` reads whole sequences
    (prompts) with the arithmetic that matches the steps.
    """

    def __init__(self, model: LSTMLanguageModel, quantize: str | None = None) -> None:
        self.model = model
        self.quantize = quantize
        self.int8 = Int8LSTMLanguageModel(model) if quantize == "int8" else None
        self.cell: Step | None = (
            make_step(model.rnn, model.config.cell, model.config.num_layers) if self.int8 is None else None
        )
        #: For int8: whether each use ("generation", "evaluation") runs the int8 model, decided at its first call
        #: (always, with $LSTMGEN_INT8=always when the model is loaded).
        self.runs_int8: dict[str, bool] = {}
        self.int8_forced = self.int8 is not None and int8_forced()
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
        total = sum(
            p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith("embedding")
        )
        if model.config.tie_weights:  # the tied head is not among the named parameters twice
            total += model.head.weight.numel() * model.head.weight.element_size()
        return total + model.embedding.weight.shape[1] * model.embedding.weight.element_size()

    def uses_int8(self) -> bool:
        """Whether generation (prompts and steps) runs the int8 model. Decided at its first call by timing 8
        one-token steps at batch 1 of both models, interleaved: float32 where int8 is slower, with one warning
        (quantization.int8_is_faster). One model for every batch size, so batching never changes a sample.
        Evaluation decides on its own first window (`Int8Evaluation`)."""
        if self.int8 is None:
            return False
        if "generation" not in self.runs_int8:
            self.runs_int8["generation"] = self.int8_forced or self._time_steps()
        return self.runs_int8["generation"]

    @torch.inference_mode()
    def _time_steps(self) -> bool:
        int8 = self.int8
        assert int8 is not None
        int8.choose_kernels(1)
        tokens = torch.randint(self.model.config.vocab_size, (8, 1), generator=torch.Generator().manual_seed(0))
        start = int8.initial_state(1)

        def steps(step: Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]) -> Callable[[], object]:
            def run() -> None:
                state = start
                for token in tokens:
                    _, state = step(token, state)

            return run

        return int8_is_faster("generation", steps(int8.step), steps(self._float_step))

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """tokens (batch,) → logits (batch, vocab) and the new state."""
        if self.int8 is not None and self.uses_int8():
            return self.int8.step(tokens, state)
        return self._float_step(tokens, state)

    @torch.inference_mode()
    def _float_step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        if self.cell is None:  # an int8 stepper running float32
            self.cell = make_step(self.model.rnn, self.model.config.cell, self.model.config.num_layers)
        x = self.embedding[tokens].masked_fill_((tokens == START_ID).unsqueeze(-1), 0.0)
        x, state = self.cell(x, state)
        if self.projection is not None:
            x = F.linear(x, self.projection)
        return F.linear(x, self.head_weight, self.head_bias), state

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        """tokens (batch, time) → logits (batch, time, vocab) and the state after the last token."""
        if self.int8 is not None and self.uses_int8():
            return self.int8(tokens, state)
        return self.model(tokens, state)

    def evaluation_network(self) -> Any:
        """What evaluation runs: the float model, or for int8 `Int8Evaluation` (int8 or float32, by timing)."""
        return Int8Evaluation(self) if self.int8 is not None else self.model


class Int8Evaluation:
    """Evaluation's network for quantize="int8": the int8 model, or the float one where int8 reads the first window
    slower. Both models read that window (a short window favours int8: nn.LSTM pays a fixed cost per call), timed
    in turn after a warm-up, and the faster one's result is returned and used from then on (one warning if float32)."""

    def __init__(self, stepper: FastStepper) -> None:
        self.stepper = stepper
        assert stepper.int8 is not None
        self.int8: Int8LSTMLanguageModel = stepper.int8

    def eval(self) -> Int8Evaluation:
        return self

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        stepper, int8 = self.stepper, self.int8
        if "evaluation" not in stepper.runs_int8 and stepper.int8_forced:
            stepper.runs_int8["evaluation"] = True
        if "evaluation" not in stepper.runs_int8:
            results: dict[str, tuple[torch.Tensor, Any]] = {}
            int8.choose_kernels(tokens.shape[0], tokens.shape[1])
            for model in (int8, stepper.model):  # first calls set up more than the next ones
                model(tokens[:, :2], state)

            def read(name: str, model: Callable[..., tuple[torch.Tensor, Any]]) -> Callable[[], object]:
                return lambda: results.__setitem__(name, model(tokens, state))

            faster = int8_is_faster(
                "evaluation", read("int8", int8), read("float32", stepper.model), rounds=3, budget=0.1, warmup=False
            )
            stepper.runs_int8["evaluation"] = faster
            return results["int8" if faster else "float32"]
        if stepper.runs_int8["evaluation"]:
            return int8(tokens, state)
        return stepper.model(tokens, state)


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
            self.block = torch.stack(
                [torch.rand(_UNIFORM_BLOCK, generator=self.generators[i], dtype=torch.float64) for i in self.rows]
            )
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

    def reset_row(self, row: int, history: Sequence[int]) -> None:
        """Make row `row` hold the last tokens of `history`, oldest in the slot the next push replaces."""
        recent = list(history)[-self.window :]
        values = torch.full((self.window,), self.vocab_size, dtype=torch.long)
        for offset, token in enumerate(recent):
            values[(self.position + self.window - len(recent) + offset) % self.window] = token
        self.ring[row] = values.to(self.ring.device)


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


def _repeat_rows(state: Any, count: int) -> Any:
    """Every row of the state `count` times (batch is dimension 1 of every tensor)."""
    return _map_state(state, lambda s: s.repeat_interleave(count, dim=1)) if count > 1 else state


def _select_rows(state: Any, rows: torch.Tensor) -> Any:
    return _map_state(state, lambda s: s.index_select(1, rows))


def _copy_rows(state: Any, rows: torch.Tensor, values: Any) -> Any:
    """The state with rows `rows` replaced by `values` (a state of len(rows) rows)."""
    if isinstance(state, torch.Tensor):
        return state.index_copy(1, rows, values)
    return tuple(_copy_rows(part, rows, value) for part, value in zip(state, values))


def _cat_states(states: Sequence[Any]) -> Any:
    """Stack the states of several batches into one (batch is dimension 1 of every tensor)."""
    first = states[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(states), dim=1)
    return tuple(_cat_states(parts) for parts in zip(*states))


# -- constrained rows ----------------------------------------------------------------------------------


@dataclass
class _Mark:
    """A sample at the start of a unit (verse, line): where backtracking returns to."""

    length: int  # tokens written, the last of which ended the unit
    cursor: Cursor
    state: Any  # the recurrent state before that last token was read


@dataclass
class _Row:
    """One constrained sample: tokens, the constraint's cursor, and the text not yet final."""

    cursor: Cursor
    tracker: _TextTracker
    backtracks: int
    tokens: list[int] = dataclasses.field(default_factory=list)
    log_probs: list[float] = dataclasses.field(default_factory=list)
    flushed: int = 0  # tokens whose text has been given out
    mark: _Mark | None = None

    def flush(self, token_bytes: Callable[[int], bytes], final: bool = False) -> str:
        """The text of the tokens since the last flush (final: and whatever the decoder holds)."""
        data = b"".join(token_bytes(token) for token in self.tokens[self.flushed :])
        self.flushed = len(self.tokens)
        return self.tracker.feed(data, final=final)

    def rewind(self) -> None:
        """Back to the mark: its tokens, log-probabilities and cursor (the caller restores the recurrent state)."""
        assert self.mark is not None
        del self.tokens[self.mark.length :]
        del self.log_probs[self.mark.length :]
        self.cursor = self.mark.cursor


# -- the sampler ---------------------------------------------------------------------------------------


class Sampler:
    """Generate samples from a model, yielding text pieces as soon as they are final."""

    def __init__(
        self,
        model: LSTMLanguageModel,
        tokenizer: Tokenizer,
        device: torch.device | str = "cpu",
        quantize: str | None = None,
        document_start: bool = False,
    ) -> None:
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
        self._constraints: dict[tuple[Any, ...], TokenConstraint | None] = {}

    def constraint(self, options: SamplingOptions) -> TokenConstraint | None:
        """The poem constraint the options ask for (lstmgen.poetry), None when none; built once per request.

        Every request the model cannot meet raises LstmgenError here, before any generation."""
        if not options.poem():
            return None
        key = (options.form, options.acrostic, options.rhyme, options.rhyme_scheme, options.tones, options.max_tokens)
        if key not in self._constraints:
            from .poetry import build_constraint

            if len(self._constraints) >= _CONSTRAINTS_KEPT:
                self._constraints.pop(next(iter(self._constraints)))
            self._constraints[key] = build_constraint(options, self.tokenizer)
        return self._constraints[key]

    def _cursor(self, constraint: TokenConstraint, prompt: str, max_tokens: int) -> Cursor:
        """Where a prompt leaves the poem; a prompt that breaks it, or too small a token budget, is refused."""
        try:
            cursor = constraint.start(prompt)
        except PromptMismatch as error:
            raise LstmgenError(
                f"the prompt does not fit the poem asked for: its {error} breaks it; give a title (and verses that "
                "fit), or no prompt"
            ) from None
        need = constraint.remaining(cursor)
        if need > max_tokens:
            raise LstmgenError(
                f"{ref(SamplingOptions, 'max_tokens')} {max_tokens} is too few for this poem: it needs at least {need}"
            )
        return cursor

    def prompt_ids(self, prompt: str) -> list[int]:
        """What the model reads before generating: the start id, [EOS,] then the prompt's tokens."""
        return start_ids(self.tokenizer, "blank-line" if self.document_start else "file") + self.tokenizer.encode(
            prompt
        )

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

    def stream(
        self, prompt: str, options: SamplingOptions, num_samples: int = 1, first_index: int = 0
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Yield (sample index, text piece) while generating and (index, Sample) when one ends.

        The prompt is read once and its state copied to `num_samples` rows generated as a batch;
        sample i draws from the generator of index `first_index + i`.
        """
        options.validate()
        check_num_samples(num_samples)
        constraint = self.constraint(options)
        cursors = [self._cursor(constraint, prompt, options.max_tokens)] if constraint is not None else None
        return self._stream([prompt], options, num_samples, first_index, constraint, cursors)

    def stream_batch(
        self, prompts: Sequence[str], options: SamplingOptions, first_index: int = 0
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Like `stream` with one sample per prompt: prompt i is read on its own, then all rows
        step together; sample i draws from the generator of index `first_index + i`."""
        options.validate()
        if isinstance(prompts, str) or not len(prompts):
            raise LstmgenError("give a non-empty list of prompts")
        constraint = self.constraint(options)
        cursors = (
            [self._cursor(constraint, prompt, options.max_tokens) for prompt in prompts]
            if constraint is not None
            else None
        )
        return self._stream(list(prompts), options, 1, first_index, constraint, cursors)

    @torch.inference_mode()
    def _stream(
        self,
        prompts: list[str],
        options: SamplingOptions,
        copies: int,
        first_index: int,
        constraint: TokenConstraint | None = None,
        cursors: list[Cursor] | None = None,
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Samples in batches of at most SAMPLES_PER_BATCH rows, in order: memory does not grow with their number."""
        shared = self.read_prompt(prompts[0]) if len(prompts) == 1 else None
        total = copies if shared is not None else len(prompts)
        for begin in range(0, total, SAMPLES_PER_BATCH):
            count = min(SAMPLES_PER_BATCH, total - begin)
            if shared is not None:
                logits, state, history = shared
                logits = logits.repeat(count, 1)
                state = _repeat_rows(state, count)
                histories = [history] * count
            else:
                reads = [self.read_prompt(prompt) for prompt in prompts[begin : begin + count]]
                logits = torch.cat([r[0] for r in reads])
                state = _cat_states([r[1] for r in reads])
                histories = [r[2] for r in reads]
            if constraint is None or cursors is None:
                yield from self._generate(logits, state, histories, options, first_index + begin)
            else:
                rows = cursors * count if shared is not None else cursors[begin : begin + count]
                yield from self._generate_constrained(
                    logits, state, histories, options, first_index + begin, constraint, rows
                )

    def _generate(
        self, logits: torch.Tensor, state: Any, histories: list[list[int]], options: SamplingOptions, first_index: int
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        count = logits.shape[0]
        eos = self.tokenizer.eos_id
        token_bytes = self.tokenizer.token_bytes
        trackers = [_TextTracker(options.stop, options.max_chars) for _ in range(count)]
        uniforms = _Uniforms(options.seed, first_index, count) if options.temperature > 0 else None
        penalty = options.repetition_penalty
        recent = (
            _RecentTokens(histories, options.repetition_window, logits.shape[1], logits.device)
            if penalty != 1.0
            else None
        )
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
                state = _select_rows(state, rows)
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

    def _generate_constrained(
        self,
        logits: torch.Tensor,
        state: Any,
        histories: list[list[int]],
        options: SamplingOptions,
        first_index: int,
        constraint: TokenConstraint,
        cursors: list[Cursor],
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Like _generate, with every row's next token masked by the constraint (lstmgen.constraints).

        The mask comes first and the controls (penalty, temperature, top-k/p, min-p) work on what it allows,
        so they never remove every allowed token. A row whose allowed tokens hold less than BACKTRACK_BELOW of
        the model's probability goes back to the start of its current unit (verse, line): its saved recurrent
        state reads the unit's last token again and the unit is drawn anew with the row's next random numbers
        (so a row's text still depends only on its own seed and index). Text is streamed unit by unit, once
        it can no longer be taken back."""
        count = logits.shape[0]
        eos = self.tokenizer.eos_id
        token_bytes = self.tokenizer.token_bytes
        uniforms = _Uniforms(options.seed, first_index, count) if options.temperature > 0 else None
        penalty = options.repetition_penalty
        recent = (
            _RecentTokens(histories, options.repetition_window, logits.shape[1], logits.device)
            if penalty != 1.0
            else None
        )
        rows = [
            _Row(cursor, _TextTracker((), None), BACKTRACK_BUDGET if uniforms is not None else 0) for cursor in cursors
        ]
        active = list(range(count))  # the sample index of each row still in the batch
        choice: torch.Tensor | None = None
        log_floor = math.log(BACKTRACK_BELOW)
        while True:
            if choice is not None:
                if recent is not None:
                    recent.push(choice)
                logits, state = self.stepper.step(choice, state)
                logits = logits.float()
            logits.index_fill_(1, self.banned, -math.inf)
            masks = torch.stack(
                [constraint.mask(rows[i].cursor, options.max_tokens - len(rows[i].tokens)) for i in active]
            ).to(logits.device)
            blocked = ~masks
            allowed = logits.masked_fill(blocked, -math.inf)
            log_total = torch.logsumexp(logits, dim=1)
            # log of the share of the model's probability on allowed tokens
            allowed_mass = (torch.logsumexp(allowed, dim=1) - log_total).tolist()
            scores = (
                recent.penalize(logits, penalty).masked_fill_(blocked, -math.inf) if recent is not None else allowed
            )
            choice = _choose(scores, options, uniforms)
            chosen_log_probs = (logits.gather(1, choice.unsqueeze(1)).squeeze(1) - log_total).tolist()
            tokens = choice.tolist()
            finished, marked, rewound = [], [], []
            for row, index in enumerate(active):
                sample = rows[index]
                mark = sample.mark
                if (
                    allowed_mass[row] < log_floor
                    and sample.backtracks > 0
                    and mark is not None
                    and len(sample.tokens) > mark.length
                ):
                    sample.backtracks -= 1
                    sample.rewind()
                    rewound.append(row)
                    continue
                token = tokens[row]
                sample.log_probs.append(chosen_log_probs[row])
                if token == eos:
                    sample.tracker.finish = FINISH_END
                    piece = sample.flush(token_bytes, final=True)
                else:
                    sample.tokens.append(token)
                    sample.cursor = constraint.advance(sample.cursor, token)
                    piece = ""
                    if len(sample.tokens) >= options.max_tokens:  # the budget keeps room for EOS: a safeguard
                        piece = sample.flush(token_bytes, final=True)
                        sample.tracker.finish = FINISH_LENGTH
                    elif constraint.boundary(sample.cursor):
                        piece = sample.flush(token_bytes)
                        marked.append(row)
                if piece:
                    yield index + first_index, piece
                if sample.tracker.finish is not None:
                    finished.append(row)
                    yield index + first_index, self._sample(sample.tracker, sample.tokens, sum(sample.log_probs))
            if marked:
                for row in marked:
                    sample = rows[active[row]]
                    saved = _select_rows(state, torch.tensor([row], dtype=torch.long, device=choice.device))
                    sample.mark = _Mark(len(sample.tokens), sample.cursor, saved)
            if rewound:
                where = torch.tensor(rewound, dtype=torch.long, device=choice.device)
                marks = [rows[active[row]].mark for row in rewound]
                state = _copy_rows(state, where, _cat_states([m.state for m in marks if m is not None]))
                choice = choice.index_copy(
                    0, where, torch.tensor([rows[active[row]].tokens[-1] for row in rewound], device=choice.device)
                )
                if recent is not None:
                    for row in rewound:
                        sample = rows[active[row]]
                        recent.reset_row(row, [*histories[active[row]], *sample.tokens[:-1]])
            if finished:
                keep = [row for row in range(len(active)) if row not in finished]
                active = [active[row] for row in keep]
                if not active:
                    return
                kept = torch.tensor(keep, dtype=torch.long, device=choice.device)
                choice = choice[kept]
                state = _select_rows(state, kept)
                if recent is not None:
                    recent.select(kept)
                if uniforms is not None:
                    uniforms.select(keep)

    def _sample(self, tracker: _TextTracker, tokens: list[int], log_prob: float) -> Sample:
        return Sample(
            text="".join(tracker.text_parts),
            tokens=list(tokens),
            log_prob=log_prob,
            finish_reason=tracker.finish or FINISH_LENGTH,
        )
