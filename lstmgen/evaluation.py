"""Evaluation: negative log-likelihood of text with the recurrent state carried through it.

Bits per byte and bits per character divide the total information by the size of the text, not
by the number of tokens, so models with different tokenizers compare fairly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import CorpusReader, split_streams
from .model import LSTMLanguageModel
from .tokenizer import Tokenizer

#: Files with more tokens than this are cut into parallel streams (one per this many tokens).
TOKENS_PER_STREAM = 200_000
MAX_STREAMS = 64


@torch.inference_mode()
def total_nll(
    model: LSTMLanguageModel,
    tokens: np.ndarray,
    num_streams: int = 1,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Sum of -log p(tokens[t] | tokens[:t]) over t ≥ 1, in nats, and how many terms it has.

    The sequence is cut into `num_streams` contiguous parts evaluated side by side; each part
    carries its state from start to end (one part means exact whole-sequence evaluation).
    """
    model.eval()
    targets_total = len(tokens) - 1
    if targets_total <= 0:
        return 0.0, 0
    parts = split_streams(targets_total, num_streams)
    length = max(end - start for start, end in parts)
    inputs = np.zeros((len(parts), length), dtype=np.int64)
    targets = np.full((len(parts), length), -100, dtype=np.int64)
    for row, (start, end) in enumerate(parts):
        inputs[row, : end - start] = tokens[start:end]
        targets[row, : end - start] = tokens[start + 1 : end + 1]
    state = None
    total = 0.0
    device = torch.device(device)
    for begin in range(0, length, seq_len):
        x = torch.from_numpy(inputs[:, begin : begin + seq_len]).to(device)
        y = torch.from_numpy(targets[:, begin : begin + seq_len]).to(device)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="sum")
        total += float(loss)
    return total, targets_total


def default_streams(num_tokens: int) -> int:
    return int(min(MAX_STREAMS, max(1, num_tokens // TOKENS_PER_STREAM)))


def encode_text_stream(tokenizer: Tokenizer, lines: Iterable[str]) -> tuple[np.ndarray, int, int]:
    """[BOS] + ids of the text, with its size in bytes and characters; reads in batches."""
    chunks = [np.array([tokenizer.bos_id], dtype=np.uint32)]
    batch: list[str] = []
    size = 0
    num_bytes = 0
    num_chars = 0

    def flush() -> None:
        for ids in tokenizer.encode_batch(batch):
            chunks.append(np.asarray(ids, dtype=np.uint32))

    for line in lines:
        batch.append(line)
        size += len(line)
        num_bytes += len(line.encode("utf-8", errors="surrogatepass"))
        num_chars += len(line)
        if size >= 1 << 20:
            flush()
            batch, size = [], 0
    flush()
    return np.concatenate(chunks), num_bytes, num_chars


def summarize(nll: float, count: int, num_bytes: int, num_chars: int) -> dict[str, Any]:
    """The numbers `lstmgen eval --json` prints (nats per token, bits per byte and per character)."""
    per_token = nll / count if count else float("nan")
    bits = nll / math.log(2)
    return {
        "tokens": count,
        "bytes": num_bytes,
        "chars": num_chars,
        "nll": per_token,
        "perplexity": math.exp(per_token) if count and per_token < 700 else float("inf") if count else float("nan"),
        "bits_per_token": per_token / math.log(2) if count else float("nan"),
        "bits_per_byte": bits / num_bytes if num_bytes else float("nan"),
        "bits_per_char": bits / num_chars if num_chars else float("nan"),
    }


def evaluate_tokens(
    model: LSTMLanguageModel,
    tokens: np.ndarray,
    num_bytes: int,
    num_chars: int,
    num_streams: int | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    streams = num_streams if num_streams is not None else default_streams(len(tokens))
    nll, count = total_nll(model, tokens, num_streams=streams, device=device)
    result = summarize(nll, count, num_bytes, num_chars)
    result["streams"] = streams
    return result


def evaluate_text(model: LSTMLanguageModel, tokenizer: Tokenizer, text: str, num_streams: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, text.splitlines(keepends=True))
    return evaluate_tokens(model, tokens, num_bytes, num_chars, num_streams, device)


def evaluate_file(model: LSTMLanguageModel, tokenizer: Tokenizer, path: Path, num_streams: int | None = None, errors: str = "strict", device: torch.device | str = "cpu") -> dict[str, Any]:
    reader = CorpusReader(path, errors)
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, reader.lines())
    result = evaluate_tokens(model, tokens, num_bytes, num_chars, num_streams, device)
    result["file"] = str(path)
    return result
