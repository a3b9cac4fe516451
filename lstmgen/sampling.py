"""Generation: the prompt is read once, then the recurrent state steps one token at a time.

Each sample owns a random generator derived from (seed, sample index), so the same seed gives
the same text whether samples run in one batch or one at a time. Text is decoded incrementally
from each token's bytes, so streamed output equals decoding the whole sequence byte for byte.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .errors import LstmgenError
from .model import START_ID, LSTMLanguageModel, State
from .tokenizer import Tokenizer

FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_END = "end-of-text"


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
        def number(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not number(self.temperature) or self.temperature < 0 or self.temperature > 100:
            raise LstmgenError(f"--temp must be a number from 0 (greedy) to 100, not {self.temperature!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise LstmgenError(f"--top-k must be a whole number ≥ 0 (0 turns it off), not {self.top_k!r}")
        if not number(self.top_p) or not 0 < self.top_p <= 1:
            raise LstmgenError(f"--top-p must be in (0, 1] (1 turns it off), not {self.top_p!r}")
        if not number(self.min_p) or not 0 <= self.min_p < 1:
            raise LstmgenError(f"--min-p must be in [0, 1) (0 turns it off), not {self.min_p!r}")
        if not number(self.repetition_penalty) or not 1 <= self.repetition_penalty <= 100:
            raise LstmgenError(f"--repetition-penalty must be a number from 1 (off) to 100, not {self.repetition_penalty!r}")
        if not isinstance(self.repetition_window, int) or not 1 <= self.repetition_window <= 1 << 20:
            raise LstmgenError(f"--repetition-window must be a whole number from 1 to {1 << 20}, not {self.repetition_window!r}")
        if not isinstance(self.max_tokens, int) or not 0 <= self.max_tokens <= 10**9:
            raise LstmgenError(f"--max-tokens must be a whole number from 0 to 1000000000, not {self.max_tokens!r}")
        if self.max_chars is not None and (not isinstance(self.max_chars, int) or not 0 <= self.max_chars <= 10**12):
            raise LstmgenError(f"--max-chars must be a whole number ≥ 0, not {self.max_chars!r}")
        for stop in self.stop:
            if not isinstance(stop, str) or not stop:
                raise LstmgenError("--stop needs a non-empty string")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise LstmgenError(f"--seed must be a whole number from 0 to 2^63-1, not {self.seed!r}")


@dataclass
class Sample:
    """One finished sample."""

    text: str
    tokens: list[int]
    log_prob: float
    finish_reason: str


class FastStepper:
    """One-token LSTM steps with one fused matrix multiply per layer.

    nn.LSTM called on a single time step pays oneDNN's setup cost every call; a plain step
    (gates = [x, h] · [W_ih; W_hh]ᵀ + b) is several times faster at batch 1.
    """

    def __init__(self, model: LSTMLanguageModel) -> None:
        self.model = model
        self.layers = []
        rnn = model.rnn
        with torch.no_grad():
            for layer in range(model.config.num_layers):
                w_ih = getattr(rnn, f"weight_ih_l{layer}")
                w_hh = getattr(rnn, f"weight_hh_l{layer}")
                bias = getattr(rnn, f"bias_ih_l{layer}") + getattr(rnn, f"bias_hh_l{layer}")
                self.layers.append((torch.cat([w_ih, w_hh], dim=1).t().contiguous(), bias.contiguous()))
        self.hidden = model.config.hidden_size

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h_all, c_all = state
        x = self.model.embedding(tokens).masked_fill((tokens == START_ID).unsqueeze(-1), 0.0)
        new_h, new_c = [], []
        for layer, (weight, bias) in enumerate(self.layers):
            gates = torch.addmm(bias, torch.cat([x, h_all[layer]], dim=1), weight)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c_all[layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c)
            new_h.append(x)
            new_c.append(c)
        if self.model.projection is not None:
            x = self.model.projection(x)
        return self.model.head(x), (torch.stack(new_h), torch.stack(new_c))


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


def _generator(seed: int | None, index: int) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((seed * 1_000_003 + index) % (2**63))
    return generator


def _filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to a (batch, vocab) tensor of logits."""
    logits = logits / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    if options.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * options.min_p
        logits = logits.masked_fill(probs < threshold, -math.inf)
    return logits


def _penalize(logits: torch.Tensor, history: list[list[int]], options: SamplingOptions) -> torch.Tensor:
    """CTRL-style repetition penalty over each sample's most recent tokens."""
    if options.repetition_penalty == 1.0:
        return logits
    logits = logits.clone()
    for row, tokens in enumerate(history):
        recent = torch.tensor(sorted(set(tokens[-options.repetition_window :])), dtype=torch.long)
        if len(recent):
            values = logits[row, recent]
            logits[row, recent] = torch.where(values > 0, values / options.repetition_penalty, values * options.repetition_penalty)
    return logits


class Sampler:
    """Generate samples from a model, yielding text pieces as soon as they are final."""

    def __init__(self, model: LSTMLanguageModel, tokenizer: Tokenizer, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.stepper = FastStepper(model)
        vocab = tokenizer.vocab_size
        self.banned = torch.zeros(vocab, dtype=torch.bool)
        for token_id in tokenizer.special_ids:
            if token_id != tokenizer.eos_id:
                self.banned[token_id] = True

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)

    @torch.inference_mode()
    def stream(self, prompt: str, options: SamplingOptions, num_samples: int = 1, first_index: int = 0) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Yield (sample index, text piece) while generating and (index, Sample) when one ends."""
        options.validate()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise LstmgenError(f"--num-samples must be a whole number ≥ 1, not {num_samples!r}")
        ids = torch.tensor([self.prompt_ids(prompt)], dtype=torch.long, device=self.device)
        logits, state = self.model(ids)
        logits = logits[:, -1, :].float().expand(num_samples, -1)
        state = tuple(s.expand(-1, num_samples, -1).contiguous() for s in state)
        generators = [_generator(options.seed, first_index + i) for i in range(num_samples)]
        trackers = [_TextTracker(options.stop, options.max_chars) for _ in range(num_samples)]
        history: list[list[int]] = [self.tokenizer.encode(prompt)[-options.repetition_window :] for _ in range(num_samples)]
        generated: list[list[int]] = [[] for _ in range(num_samples)]
        log_probs = [0.0] * num_samples
        done = [False] * num_samples
        banned = self.banned.to(logits.device)
        for _ in range(options.max_tokens):
            if all(done):
                break
            logits = logits.masked_fill(banned, -math.inf)
            model_log_probs = torch.log_softmax(logits, dim=-1)
            choice = self._choose(logits, history, options, generators).cpu()
            chosen_log_probs = model_log_probs.gather(1, choice.to(logits.device)[:, None]).squeeze(1).tolist()
            for row in range(num_samples):
                if done[row]:
                    continue
                token = int(choice[row])
                log_probs[row] += chosen_log_probs[row]
                if token == self.tokenizer.eos_id:
                    trackers[row].finish = FINISH_END
                    piece = trackers[row].feed(b"", final=True)
                else:
                    generated[row].append(token)
                    history[row].append(token)
                    piece = trackers[row].feed(self.tokenizer.token_bytes(token))
                if piece:
                    yield row + first_index, piece
                if trackers[row].finish is not None:
                    done[row] = True
                    yield row + first_index, self._sample(trackers[row], generated[row], log_probs[row])
            if all(done):
                break
            logits, state = self.stepper.step(choice.to(self.device), state)
            logits = logits.float()
        for row in range(num_samples):
            if not done[row]:
                tail = trackers[row].feed(b"", final=True)
                if tail:
                    yield row + first_index, tail
                trackers[row].finish = trackers[row].finish or FINISH_LENGTH
                yield row + first_index, self._sample(trackers[row], generated[row], log_probs[row])

    def _choose(self, logits: torch.Tensor, history: list[list[int]], options: SamplingOptions, generators: list[torch.Generator]) -> torch.Tensor:
        logits = _penalize(logits, history, options)
        if options.temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(_filter_logits(logits, options), dim=-1).cpu().double()
        cumulative = torch.cumsum(probs, dim=-1)
        picks = []
        for row, generator in enumerate(generators):
            u = torch.rand((), generator=generator, dtype=torch.float64) * cumulative[row, -1]
            index = int(torch.searchsorted(cumulative[row], u, right=True))
            picks.append(min(index, probs.shape[-1] - 1))
        return torch.tensor(picks, dtype=torch.long)

    def _sample(self, tracker: _TextTracker, tokens: list[int], log_prob: float) -> Sample:
        return Sample(text="".join(tracker.text_parts), tokens=list(tokens), log_prob=log_prob, finish_reason=tracker.finish or FINISH_LENGTH)
