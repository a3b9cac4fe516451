"""The Python API: `lstmgen.load(path)` returns a LanguageModel. The CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import Bundle, load_bundle
from .errors import LstmgenError
from .evaluation import evaluate_file, evaluate_text
from .model import LSTMLanguageModel
from .sampling import Sample, Sampler, SamplingOptions
from .tokenizer import Tokenizer


class LanguageModel:
    """A trained model with its tokenizer, ready to generate and evaluate text."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.model: LSTMLanguageModel = bundle.build_model(self.device)  # type: ignore[assignment]
        self.tokenizer: Tokenizer = bundle.tokenizer
        self._sampler = Sampler(self.model, self.tokenizer, self.device)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> LanguageModel:
        from .trainer import resolve_device

        return cls(load_bundle(Path(path)), device=resolve_device(device))

    @property
    def config(self) -> Any:
        return self.bundle.model_config

    @property
    def meta(self) -> dict[str, Any]:
        return self.bundle.meta

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    # -- generation -------------------------------------------------------------------------------

    def stream(self, prompt: str = "", **options: Any) -> Iterator[str]:
        """Yield the continuation of `prompt` piece by piece as it is generated."""
        for index, item in self._sampler.stream(prompt, _options(options)):
            if isinstance(item, str):
                yield item

    def generate(self, prompt: str = "", **options: Any) -> str:
        """The continuation of `prompt` (without the prompt itself).

        Options: max_tokens, max_chars, temperature (0 = greedy), top_k, top_p, min_p,
        repetition_penalty, repetition_window, stop (list of strings), seed.
        """
        return self.sample(prompt, **options).text

    def sample(self, prompt: str = "", **options: Any) -> Sample:
        """Like generate, with the tokens, log-probability and finish reason too."""
        return self.sample_many(prompt, 1, **options)[0]

    def sample_many(self, prompt: str = "", num_samples: int = 1, **options: Any) -> list[Sample]:
        """`num_samples` continuations of one prompt, generated as one batch."""
        results: dict[int, Sample] = {}
        for index, item in self._sampler.stream(prompt, _options(options), num_samples=num_samples):
            if isinstance(item, Sample):
                results[index] = item
        return [results[i] for i in range(num_samples)]

    def generate_batch(self, prompts: Sequence[str], **options: Any) -> list[str]:
        """One continuation per prompt; prompt i uses the generator of sample index i."""
        texts = []
        for index, prompt in enumerate(prompts):
            for _, item in self._sampler.stream(prompt, _options(options), num_samples=1, first_index=index):
                if isinstance(item, Sample):
                    texts.append(item.text)
        return texts

    # -- evaluation -------------------------------------------------------------------------------

    def evaluate(self, text: str, streams: int | None = None) -> dict[str, Any]:
        """Same keys as `lstmgen eval --json`: tokens, nll, perplexity, bits per byte/char..."""
        return evaluate_text(self.model, self.tokenizer, text, num_streams=streams, device=self.device)

    def evaluate_file(self, path: str | Path, streams: int | None = None, errors: str = "strict") -> dict[str, Any]:
        return evaluate_file(self.model, self.tokenizer, Path(path), num_streams=streams, errors=errors, device=self.device)


def _options(options: dict[str, Any]) -> SamplingOptions:
    aliases = {"temp": "temperature"}
    fields = {aliases.get(k, k): v for k, v in options.items()}
    if "stop" in fields:
        stop = fields["stop"]
        fields["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    try:
        return SamplingOptions(**fields)
    except TypeError as error:
        raise LstmgenError(f"unknown sampling option: {error}") from None
