"""The Python API: `lstmgen.load(path)` returns a LanguageModel. The CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import Bundle, load_bundle
from .data import FreshStarts
from .errors import LstmgenError
from .evaluation import evaluate_file, evaluate_text
from .model import LSTMLanguageModel
from .sampling import Sample, Sampler, SamplingOptions, check_num_samples
from .tokenizer import Tokenizer


class LanguageModel:
    """A trained model with its tokenizer, ready to generate and evaluate text.

    `quantize="int8"` runs generation and evaluation with int8 weights and activations on the
    CPU (see lstmgen.quantization): several times faster at batch 1, at a small cost in bits per
    byte that `evaluate` measures.
    """

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu", quantize: str | None = None) -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.model: LSTMLanguageModel = bundle.build_model(self.device)  # type: ignore[assignment]
        self.tokenizer: Tokenizer = bundle.tokenizer
        settings = (bundle.meta.get("tokenizer") or {}).get("settings") or {}
        # A model trained on blank-line documents saw EOS before every document: prompts start one.
        self.documents: str = settings.get("documents", "file")
        self._sampler = Sampler(self.model, self.tokenizer, self.device, quantize=quantize, document_start=self.documents == "blank-line")
        self.quantize: str | None = self._sampler.quantize
        self._fresh_starts: FreshStarts | None = None

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", quantize: str | None = None) -> LanguageModel:
        from .quantization import check_quantize
        from .trainer import resolve_device

        resolved = resolve_device(device)
        check_quantize(quantize, resolved)
        return cls(load_bundle(Path(path)), device=resolved, quantize=quantize)

    @property
    def config(self) -> Any:
        return self.bundle.model_config

    @property
    def meta(self) -> dict[str, Any]:
        return self.bundle.meta

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    # -- generation -------------------------------------------------------------------------------
    #
    # Options (the CLI's sampling flags): max_tokens, max_chars, temperature (alias temp; 0 =
    # greedy), top_k, top_p, min_p, repetition_penalty, repetition_window, stop (a string or a list
    # of strings), seed. Sample i of a call draws from the generator of (seed, i), so results do
    # not depend on how samples are batched.

    def stream(self, prompt: str = "", **options: Any) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated."""
        for _, item in self._sampler.stream(prompt, _options(options)):
            if isinstance(item, str):
                yield item

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The continuation of `prompt` (without the prompt itself)."""
        return self.sample(prompt, **options).text

    def sample(self, prompt: str = "", **options: Any) -> Sample:
        """Like generate, with the tokens, log-probability and finish reason too."""
        return self.sample_many(prompt, 1, **options)[0]

    def sample_many(self, prompt: str = "", num_samples: int = 1, **options: Any) -> list[Sample]:
        """`num_samples` continuations of one prompt, generated as one batch."""
        check_num_samples(num_samples)
        return _collect(self._sampler.stream(prompt, _options(options), num_samples=num_samples), num_samples)

    def sample_batch(self, prompts: Sequence[str], **options: Any) -> list[Sample]:
        """One sample per prompt, all generated as ONE batch (prompts may differ in length).

        Each prompt is read with its own forward pass; the states are then stacked and stepped
        together. Prompt i draws from the generator of sample index i, so result i equals
        generating prompt i alone as sample i (and `generate_batch([p])[0] == generate(p)` for
        the same options and seed).
        """
        prompts = _prompt_list(prompts)
        return _collect(self._sampler.stream_batch(prompts, _options(options)), len(prompts))

    def generate_batch(self, prompts: Sequence[str], **options: Any) -> list[str]:
        """One continuation per prompt, generated as one batch (see `sample_batch`)."""
        return [s.text for s in self.sample_batch(prompts, **options)]

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, text: str, streams: int | None = None) -> dict[str, Any]:
        """Same keys as `lstmgen eval --json`: tokens, nll, perplexity, bits per byte/char..."""
        return evaluate_text(self._eval_model, self.tokenizer, text, num_streams=streams, device=self.device, documents=self.documents)

    def evaluate_file(self, path: str | Path, streams: int | None = None, errors: str = "strict") -> dict[str, Any]:
        return evaluate_file(self._eval_model, self.tokenizer, Path(path), num_streams=streams, errors=errors, device=self.device,
                             documents=self.documents)

    @property
    def fresh_starts(self) -> FreshStarts:
        """Where this model's text may begin from a fresh state (paragraph starts in its token ids)."""
        if self._fresh_starts is None:
            self._fresh_starts = FreshStarts(self.tokenizer, self.documents)
        return self._fresh_starts

    @property
    def _eval_model(self) -> Any:
        """The network evaluation runs: the float model, or the int8 one the sampler steps."""
        return self._sampler.stepper.int8 if self._sampler.stepper.int8 is not None else self.model


def _collect(stream: Iterator[Any], count: int) -> list[Sample]:
    results: dict[int, Sample] = {}
    for index, item in stream:
        if isinstance(item, Sample):
            results[index] = item
    return [results[i] for i in range(count)]


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise LstmgenError("generate_batch needs a non-empty list of prompt strings")
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise LstmgenError(f"every prompt must be a string, not {type(prompt).__name__}")
    return list(prompts)


def _options(options: dict[str, Any]) -> SamplingOptions:
    aliases = {"temp": "temperature"}
    fields = {aliases.get(k, k): v for k, v in options.items()}
    if "temp" in options and "temperature" in options:
        raise LstmgenError("give either temp or temperature, not both")
    if "stop" in fields:
        stop = fields["stop"]
        fields["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    try:
        return SamplingOptions(**fields)
    except TypeError:
        known = ", ".join(f for f in SamplingOptions.__dataclass_fields__)
        unknown = ", ".join(sorted(set(fields) - set(SamplingOptions.__dataclass_fields__)))
        raise LstmgenError(f"unknown sampling option {unknown}; the options are {known}") from None
