"""The Python API: `lstmgen.load(model)` returns a LanguageModel. The CLI is a thin layer over it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .bundle import Bundle, load_bundle
from .config import InferenceOptions, SamplingOptions
from .data import FreshStarts
from .errors import LstmgenError
from .evaluation import evaluate_file, evaluate_text
from .model import LSTMLanguageModel
from .options import declared_by_name
from .sampling import Sample, Sampler, check_num_samples
from .tokenizer import Tokenizer


class LanguageModel:
    """A trained model with its tokenizer, ready to generate and evaluate text.

    `quantize="int8"` runs generation and evaluation with int8 weights and activations on the
    CPU (see lstmgen.quantization), at a small cost in bits per byte that `evaluate` measures;
    where int8 times slower than float32 for a use, float32 runs, with one warning (`quantize_ran`).
    """

    def __init__(
        self, bundle: Bundle, device: str | torch.device = "cpu", quantize: str | None = None, source: str | None = None
    ) -> None:
        self.bundle = bundle
        #: Where the model came from (the bundle's path), for repr and messages.
        self.source = source
        self.device = torch.device(device)
        self.model: LSTMLanguageModel = bundle.build_model(self.device)  # type: ignore[assignment]
        self.tokenizer: Tokenizer = bundle.tokenizer
        settings = (bundle.meta.get("tokenizer") or {}).get("settings") or {}
        # A model trained on blank-line documents saw EOS before every document: prompts start one.
        self.documents: str = settings.get("documents", "file")
        self._sampler = Sampler(
            self.model, self.tokenizer, self.device, quantize=quantize, document_start=self.documents == "blank-line"
        )
        self.quantize: str | None = self._sampler.quantize
        self._fresh_starts: FreshStarts | None = None

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str = "cpu",
        quantize: str | None = None,
        threads: int | None = None,
    ) -> LanguageModel:
        """A bundle path or a model name, exactly as `-m` takes it (None: $LSTMGEN_MODEL, else the built-in default)."""
        import os

        from .device import check_inference, resolve_device, use_threads
        from .quantization import check_quantize
        from .registry import resolve_model

        check_inference(InferenceOptions(device=device, quantize=quantize or "none", threads=threads))
        resolved = resolve_device(device)
        check_quantize(quantize, resolved)
        use_threads(threads)
        path = resolve_model(str(model) if model is not None else None, os.environ)
        return cls(load_bundle(path), device=resolved, quantize=quantize, source=str(path))

    def __repr__(self) -> str:
        config = self.config
        quantized = f", {self.quantize}" if self.quantize else ""
        return (
            f"<LanguageModel {config.num_layers}×{config.hidden_size} {config.cell.upper()}, {self.num_parameters():,} parameters, "
            f"vocabulary {config.vocab_size}{quantized}, from {self.source or 'memory'}>"
        )

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
        """`num_samples` continuations of one prompt, generated side by side (in batches of bounded size)."""
        check_num_samples(num_samples)
        return _collect(self._sampler.stream(prompt, _options(options), num_samples=num_samples), num_samples)

    def stream_samples(
        self, prompt: str, options: SamplingOptions, num_samples: int = 1
    ) -> Iterator[tuple[int, str] | tuple[int, Sample]]:
        """Yield (sample index, text piece) as samples grow and (index, Sample) as each ends: what `lstmgen sample` prints."""
        return self._sampler.stream(prompt, options, num_samples=num_samples)

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
        return evaluate_text(
            self.network, self.tokenizer, text, num_streams=streams, device=self.device, documents=self.documents
        )

    def evaluate_file(self, path: str | Path, streams: int | None = None, errors: str = "strict") -> dict[str, Any]:
        return evaluate_file(
            self.network,
            self.tokenizer,
            Path(path),
            num_streams=streams,
            errors=errors,
            device=self.device,
            documents=self.documents,
        )

    @property
    def fresh_starts(self) -> FreshStarts:
        """Where this model's text may begin from a fresh state (paragraph starts in its token ids)."""
        if self._fresh_starts is None:
            self._fresh_starts = FreshStarts(self.tokenizer, self.documents)
        return self._fresh_starts

    @property
    def network(self) -> Any:
        """The network evaluation runs: the float model, or the int8 one the sampler steps (float32 where int8
        measures slower on this machine: see `quantize_ran`)."""
        return self._sampler.stepper.evaluation_network()

    def quantize_ran(self, use: str) -> str | None:
        """What `use` ("generation", "evaluation") ran: "int8", or None for float32 (also where int8 was asked for
        and measured slower here; not yet decided counts as int8)."""
        return "int8" if self.quantize is not None and self._sampler.stepper.runs_int8.get(use, True) else None


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
    known = declared_by_name(SamplingOptions)
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise LstmgenError(f"unknown sampling option {', '.join(unknown)}; the options are {', '.join(known)}")
    return SamplingOptions(**fields)
