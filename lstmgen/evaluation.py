"""Evaluation: negative log-likelihood of text with the recurrent state carried through it.

Bits per byte and bits per character divide the total information by the size of the text, not
by the number of tokens, so models with different tokenizers compare fairly.
"""

from __future__ import annotations

import bz2
import itertools
import logging
import lzma
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import CorpusReader, FreshStarts, check_corpus_file, split_streams, start_ids
from .errors import LstmgenError, option_mark
from .model import LSTMLanguageModel
from .tokenizer import Tokenizer

log = logging.getLogger("lstmgen")

#: The most token positions one evaluation forward covers (all streams together).
MAX_WINDOW_TOKENS = 8192
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
    fresh_starts: FreshStarts | None = None,
) -> tuple[float, int]:
    """Sum of -log p(tokens[t] | tokens[:t]) over t ≥ 1, in nats, and how many terms it has.

    The sequence is cut into `num_streams` contiguous parts evaluated side by side; each part
    carries its state from start to end (one part means exact whole-sequence evaluation). With
    `fresh_starts`, each cut is moved to the next paragraph (else line) start and every part after
    the first reads the start id first, from a zero state: exactly how a sample begins. Without,
    parts begin anywhere, their first token read as input from a zero state (the previous part
    scored it). Every token after the first is scored once either way.
    """
    targets_total = len(tokens) - 1
    if targets_total <= 0:
        return 0.0, 0
    bounds, fresh = _stream_bounds(tokens, num_streams, fresh_starts)
    start_id = fresh_starts.start_id if fresh and fresh_starts is not None else None
    return parts_nll(model, tokens, bounds, start_id, seq_len, device, first_part_fresh=False)


@torch.inference_mode()
def parts_nll(
    model: LSTMLanguageModel,
    tokens: np.ndarray,
    bounds: Sequence[tuple[int, int]],
    start_id: int | None = None,
    seq_len: int = 256,
    device: torch.device | str = "cpu",
    first_part_fresh: bool = True,
) -> tuple[float, int]:
    """Summed NLL (nats) and target count of parts of `tokens` read side by side, each from a zero state.

    Part [start, end) reads the inputs tokens[start:end] and scores the targets one later. With
    `start_id`, a part reads the start id instead of tokens[start] (a fresh start: its first
    target is the first token of a paragraph); `first_part_fresh=False` keeps the first part's own
    first input (the text's start ids).
    """
    model.eval()
    bounds = [b for b in bounds if b[1] > b[0]]
    if not bounds:
        return 0.0, 0
    # Bound each forward's logits (streams × window × vocabulary floats) whatever the stream count.
    seq_len = max(1, min(seq_len, MAX_WINDOW_TOKENS // len(bounds)))
    starts = np.array([start for start, _ in bounds])
    lengths = np.array([end - start for start, end in bounds])
    last_input = len(tokens) - 2
    state = None
    total = 0.0
    device = torch.device(device)
    # Windows are cut from the token array as they are needed: memory does not grow with the text.
    for begin in range(0, int(lengths.max()), seq_len):
        offsets = begin + np.arange(min(seq_len, int(lengths.max()) - begin))
        index = np.minimum(starts[:, None] + offsets[None, :], last_input)
        inputs = np.asarray(tokens[index], dtype=np.int64)
        targets = np.asarray(tokens[index + 1], dtype=np.int64)
        if begin == 0 and start_id is not None:
            inputs[0 if first_part_fresh else 1 :, 0] = start_id
        targets[offsets[None, :] >= lengths[:, None]] = -100
        x = torch.from_numpy(inputs).to(device)
        y = torch.from_numpy(targets).to(device)
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100, reduction="sum"
        )
        total += float(loss)
    return total, int(lengths.sum())


def _stream_bounds(
    tokens: np.ndarray, num_streams: int, fresh_starts: FreshStarts | None
) -> tuple[list[tuple[int, int]], bool]:
    """Input ranges [start, end) of the parallel streams, and whether parts after the first start fresh.

    Input position i predicts token i + 1. A fresh part whose first target is p reads the start id
    at input p - 1 instead of the token there.
    """
    targets_total = len(tokens) - 1
    even = split_streams(targets_total, num_streams)
    if fresh_starts is None or len(even) == 1:
        return even, False
    wanted = [start + 1 for start, _ in even[1:]]  # first targets of the parts after the first
    paragraphs, lines = fresh_starts.positions(tokens, "paragraph"), None
    cuts = [1]
    for target, limit in zip(wanted, wanted[1:] + [targets_total + 1]):
        cut = _first_at_or_after(paragraphs, target, limit)
        if cut is None:
            lines = fresh_starts.positions(tokens, "line") if lines is None else lines
            cut = _first_at_or_after(lines, target, limit)
        cuts.append(cut if cut is not None else target)
    unique = sorted(set(cuts))
    bounds = [(first - 1, end - 1) for first, end in zip(unique, unique[1:] + [targets_total + 1])]
    return [b for b in bounds if b[1] > b[0]], True


def sample_bounds(
    tokens: np.ndarray, num_tokens: int, num_streams: int, fresh_starts: FreshStarts
) -> list[tuple[int, int]]:
    """Parts of about `num_tokens` targets in all, spread evenly over `tokens`, each starting fresh at a paragraph start.

    A fixed sample of a long held-out text: validating on the same sample every time makes the
    figures comparable between validations at a fraction of the cost of reading everything.
    """
    targets_total = len(tokens) - 1
    num_streams = max(1, min(num_streams, num_tokens))
    if 2 * num_tokens >= targets_total:
        return _stream_bounds(tokens, num_streams, fresh_starts)[0]
    length = num_tokens // num_streams
    paragraphs, lines = fresh_starts.positions(tokens, "paragraph"), None
    bounds = []
    for target in np.linspace(1, targets_total - length, num_streams).astype(np.int64).tolist():
        cut = _first_at_or_after(paragraphs, target, target + length)
        if cut is None:
            lines = fresh_starts.positions(tokens, "line") if lines is None else lines
            cut = _first_at_or_after(lines, target, target + length)
        first = cut if cut is not None else target
        bounds.append((first - 1, min(first - 1 + length, targets_total)))
    return bounds


def bounds_size(
    tokenizer: Tokenizer, tokens: np.ndarray, bounds: Sequence[tuple[int, int]], documents: str = "file"
) -> tuple[int, int]:
    """Bytes and characters of the text the targets of `bounds` spell (an end-of-text id of blank-line
    documents stands for the blank line it replaced)."""
    num_bytes = num_chars = 0
    for start, end in bounds:
        ids = np.asarray(tokens[start + 1 : end + 1])
        data = tokenizer.decode_bytes(ids.tolist())
        blank = int(np.count_nonzero(ids == tokenizer.eos_id)) if documents == "blank-line" else 0
        num_bytes += len(data) + blank
        num_chars += len(data.decode("utf-8", errors="replace")) + blank
    return num_bytes, num_chars


def _first_at_or_after(positions: np.ndarray, target: int, limit: int) -> int | None:
    index = int(np.searchsorted(positions, target))
    return int(positions[index]) if index < len(positions) and positions[index] < limit else None


def default_streams(num_tokens: int) -> int:
    return int(min(MAX_STREAMS, max(1, num_tokens // TOKENS_PER_STREAM)))


def encode_text_stream(
    tokenizer: Tokenizer, lines: Iterable[str], documents: str = "file"
) -> tuple[np.ndarray, int, int]:
    """The start ids + ids of the text, with its size in bytes and characters; reads in batches.

    The start ids are what a sample reads first (data.start_ids: the start id, then end-of-text for
    blank-line documents). With documents="blank-line" (a model trained that way) a run of blank
    lines ends a document and reads as one end-of-text id, exactly as training encoded its corpus
    (data.encode_corpus): read as text, those newlines are something the model never saw, and
    would be scored so.
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    chunks = [np.array(start_ids(tokenizer, documents), dtype=dtype)]
    end_of_text = np.array([tokenizer.eos_id], dtype=dtype)
    blank_lines = documents == "blank-line"
    at_line_start, in_document = True, False
    batch: list[str] = []
    size = 0
    num_bytes = 0
    num_chars = 0

    def flush() -> None:
        encoded = tokenizer.encode_batch(batch)
        count = sum(len(ids) for ids in encoded)
        chunks.append(np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=count))

    for line in lines:
        num_bytes += len(line.encode("utf-8", errors="surrogatepass"))
        num_chars += len(line)
        if blank_lines and at_line_start and line.endswith("\n") and line.isspace():
            if in_document:
                flush()
                batch, size = [], 0
                chunks.append(end_of_text)
            in_document = False
            continue
        at_line_start, in_document = line.endswith("\n"), True
        batch.append(line)
        size += len(line)
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
    fresh_starts: FreshStarts | None = None,
) -> dict[str, Any]:
    """`lstmgen eval`'s summary of `tokens` (the start ids, then the text's ids).

    With several streams, each begins at a paragraph start from a fresh state when `fresh_starts`
    is given (see `total_nll`).
    """
    streams = num_streams if num_streams is not None else default_streams(len(tokens))
    nll, count = total_nll(model, tokens, num_streams=streams, device=device, fresh_starts=fresh_starts)
    result = summarize(nll, count, num_bytes, num_chars)
    result["streams"] = streams
    return result


def evaluate_text(
    model: LSTMLanguageModel,
    tokenizer: Tokenizer,
    text: str,
    num_streams: int | None = None,
    device: torch.device | str = "cpu",
    documents: str = "file",
) -> dict[str, Any]:
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, text.splitlines(keepends=True), documents)
    return evaluate_tokens(model, tokens, num_bytes, num_chars, num_streams, device, FreshStarts(tokenizer, documents))


def evaluate_file(
    model: LSTMLanguageModel,
    tokenizer: Tokenizer,
    path: Path,
    num_streams: int | None = None,
    errors: str = "strict",
    device: torch.device | str = "cpu",
    documents: str = "file",
) -> dict[str, Any]:
    reader = CorpusReader(path, errors)
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, reader.lines(), documents)
    result = evaluate_tokens(
        model, tokens, num_bytes, num_chars, num_streams, device, FreshStarts(tokenizer, documents)
    )
    result["file"] = str(path)
    return result


# -- reference points: compressors and a unigram model ------------------------------------------------
#
# A bits-per-byte figure means little on its own. `lstmgen eval` puts next to it what general-purpose
# compressors at their best settings and a unigram model of the training tokens achieve on the same
# text, so "1.9 bits/byte" reads as "a third less than xz".

#: Compressor name → (label for tables, factory of a streaming compressor at its best setting).
COMPRESSORS: dict[str, tuple[str, Callable[[], Any]]] = {
    "gzip": ("gzip -9", lambda: zlib.compressobj(9, zlib.DEFLATED, 31)),  # wbits 31: the gzip container
    "bz2": ("bz2 -9", lambda: bz2.BZ2Compressor(9)),
    "xz": ("xz -9e", lambda: lzma.LZMACompressor(preset=9 | lzma.PRESET_EXTREME)),
}
_COMPRESS_CHUNK = 1 << 20


class CompressedSizes:
    """Feed text bytes in pieces; `sizes()` gives each compressor's output size in bytes."""

    def __init__(self) -> None:
        self._compressors = {name: factory() for name, (_, factory) in COMPRESSORS.items()}
        self._sizes = dict.fromkeys(COMPRESSORS, 0)
        self._pending: list[bytes] = []
        self._pending_size = 0

    def update(self, data: bytes) -> None:
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= _COMPRESS_CHUNK:
            self._flush()

    def _flush(self) -> None:
        data = b"".join(self._pending)
        self._pending, self._pending_size = [], 0
        if data:
            for name, compressor in self._compressors.items():
                self._sizes[name] += len(compressor.compress(data))

    def sizes(self) -> dict[str, int]:
        self._flush()
        for name, compressor in self._compressors.items():
            self._sizes[name] += len(compressor.flush())
        self._compressors = {}
        return dict(self._sizes)


def compressed_sizes(data: bytes) -> dict[str, int]:
    """Bytes of `data` after gzip -9, bz2 -9 and xz -9e."""
    sizes = CompressedSizes()
    sizes.update(data)
    return sizes.sizes()


def unigram_nll(tokens: np.ndarray, token_counts: Sequence[int]) -> float:
    """Nats of tokens[1:] under the add-one (Laplace) smoothed unigram model of `token_counts`.

    p(t) = (count(t) + 1) / (N + V) with N the training tokens and V the vocabulary: every token,
    seen in training or not, has probability > 0. tokens[0] is the start id (never predicted).
    """
    counts = np.asarray(token_counts, dtype=np.float64)
    log_probs = np.log(counts + 1.0) - math.log(float(counts.sum()) + len(counts))
    targets = np.asarray(tokens[1:], dtype=np.int64)
    return float(-log_probs[targets].sum()) if len(targets) else 0.0


def check_token_counts(token_counts: Any, vocab_size: int) -> str | None:
    """Why `token_counts` (a bundle's training.token_counts) cannot serve as a unigram model, or None."""
    if token_counts is None:
        return "the bundle has no training.token_counts (older bundles lack it), so there is no unigram baseline"
    if not isinstance(token_counts, list) or len(token_counts) != vocab_size:
        return "the bundle's training.token_counts does not have one count per token of the vocabulary; no unigram baseline"
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in token_counts):
        return "the bundle's training.token_counts holds values that are not counts; no unigram baseline"
    return None


def baseline_rates(bits: float, num_bytes: int, num_chars: int) -> dict[str, float]:
    return {
        "bits_per_byte": bits / num_bytes if num_bytes else float("nan"),
        "bits_per_char": bits / num_chars if num_chars else float("nan"),
    }


def baselines(
    tokens: np.ndarray, num_bytes: int, num_chars: int, sizes: dict[str, int] | None, token_counts: Any, vocab_size: int
) -> dict[str, Any]:
    """The `baselines` object of `lstmgen eval --json`: compressors and the unigram model.

    Each compressor: {"compressed_bytes", "bits_per_byte", "bits_per_char"}. "unigram":
    {"nll" (nats/token), "bits_per_token", "bits_per_byte", "bits_per_char"}, or null with the
    reason in "unigram_note" when the bundle carries no usable training.token_counts.
    """
    result: dict[str, Any] = {}
    for name, size in (sizes or {}).items():
        result[name] = {"compressed_bytes": size, **baseline_rates(8.0 * size, num_bytes, num_chars)}
    note = check_token_counts(token_counts, vocab_size)
    if note is None:
        nll = unigram_nll(tokens, token_counts)
        count = max(len(tokens) - 1, 0)
        per_token = nll / count if count else float("nan")
        result["unigram"] = {
            "nll": per_token,
            "bits_per_token": per_token / math.log(2) if count else float("nan"),
            **baseline_rates(nll / math.log(2), num_bytes, num_chars),
        }
    else:
        result["unigram"] = None
        result["unigram_note"] = note
    return result


def combine_baselines(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Baselines over several evaluated files together (total bits over total bytes and characters)."""
    num_bytes = sum(r["bytes"] for r in results)
    num_chars = sum(r["chars"] for r in results)
    combined: dict[str, Any] = {}
    for name in COMPRESSORS:
        if all(r.get("baselines", {}).get(name) for r in results):
            size = sum(r["baselines"][name]["compressed_bytes"] for r in results)
            combined[name] = {"compressed_bytes": size, **baseline_rates(8.0 * size, num_bytes, num_chars)}
    if all(r.get("baselines", {}).get("unigram") for r in results):
        bits = sum(r["baselines"]["unigram"]["bits_per_byte"] * r["bytes"] for r in results)
        tokens = sum(r["tokens"] for r in results)
        per_token = bits * math.log(2) / tokens if tokens else float("nan")
        combined["unigram"] = {
            "nll": per_token,
            "bits_per_token": bits / tokens if tokens else float("nan"),
            **baseline_rates(bits, num_bytes, num_chars),
        }
    else:
        combined["unigram"] = None
    return combined


# -- per-token surprisal -----------------------------------------------------------------------------


@dataclass
class TokenSurprisal:
    """For every predicted token tokens[1:]: its surprisal and the model's top alternatives.

    surprisal_bits[i] = -log2 p(tokens[i + 1] | tokens[: i + 1]); top_ids/top_probs (T-1, k) are
    the k most likely next tokens at that position, most likely first.
    """

    tokens: np.ndarray
    surprisal_bits: np.ndarray
    top_ids: np.ndarray
    top_probs: np.ndarray

    @property
    def nll(self) -> float:
        """Total nats (what `total_nll` gives for one stream)."""
        return float(self.surprisal_bits.sum()) * math.log(2)


@torch.inference_mode()
def token_surprisal(
    model: Any, tokens: np.ndarray, top_k: int = 5, seq_len: int = 256, device: torch.device | str = "cpu"
) -> TokenSurprisal:
    """Surprisal of every token of `tokens` ([start] + text ids) with the state carried through it.

    One stream from start to end, so the total equals exact whole-sequence evaluation. `model` is
    anything `total_nll` takes (the float model or the int8 one).
    """
    model.eval()
    device = torch.device(device)
    count = max(len(tokens) - 1, 0)
    k = max(0, top_k)
    surprisal = np.zeros(count, dtype=np.float64)
    top_ids = np.zeros((count, k), dtype=np.int64)
    top_probs = np.zeros((count, k), dtype=np.float64)
    ids = np.asarray(tokens, dtype=np.int64)
    state = None
    for begin in range(0, count, seq_len):
        end = min(begin + seq_len, count)
        x = torch.from_numpy(ids[begin:end]).to(device)[None]
        y = torch.from_numpy(ids[begin + 1 : end + 1]).to(device)
        logits, state = model(x, state)
        log_probs = torch.log_softmax(logits[0].float(), dim=-1)
        surprisal[begin:end] = (-log_probs.gather(1, y[:, None])[:, 0] / math.log(2)).double().cpu().numpy()
        if k:
            values, indices = log_probs.topk(min(k, log_probs.shape[-1]), dim=-1)
            top_ids[begin:end, : indices.shape[1]] = indices.cpu().numpy()
            top_probs[begin:end, : values.shape[1]] = values.exp().double().cpu().numpy()
    return TokenSurprisal(ids, surprisal, top_ids, top_probs)


class TextWithContext:
    """One pass over a text file: its token ids, its size, and its compressed sizes on the way."""

    def __init__(
        self, tokenizer: Tokenizer, path: Path, errors: str = "strict", compress: bool = True, documents: str = "file"
    ) -> None:
        reader = CorpusReader(path, errors)
        self.path = Path(path)
        self._sizes = CompressedSizes() if compress else None
        self.tokens, self.num_bytes, self.num_chars = encode_text_stream(
            tokenizer, self._tee(reader.lines()), documents
        )
        self.compressed = self._sizes.sizes() if self._sizes is not None else None

    def _tee(self, lines: Iterable[str]) -> Iterator[str]:
        for line in lines:
            if self._sizes is not None:
                self._sizes.update(line.encode("utf-8", errors="surrogatepass"))
            yield line


# -- evaluating files with a loaded model: what `lstmgen eval` reports -------------------------------

#: The most alternatives per token that per-token records, heatmaps and pages list.
MAX_TOP_K_ALTERNATIVES = 100
STREAMS_REF = option_mark("streams", "--streams")
TOP_K_REF = option_mark("top_k", "--top-k-alternatives")


@dataclass
class FileEvaluation:
    """One evaluated file: the summary `eval --json` prints and, when asked for, every token's surprisal."""

    path: Path
    result: dict[str, Any]
    surprisal: TokenSurprisal | None = None


def check_evaluation_options(streams: int | None, top_k: int) -> None:
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= 4096):
        raise LstmgenError(f"{STREAMS_REF} must be a whole number from 1 to 4096, not {streams}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K_ALTERNATIVES:
        raise LstmgenError(f"{TOP_K_REF} must be a whole number from 0 to {MAX_TOP_K_ALTERNATIVES}, not {top_k}")


def check_text_file(path: Path, command: str = "eval") -> None:
    """A text file to read (check_corpus_file), saying where a bundle goes when one is given as the text."""
    from .registry import looks_like_bundle

    if path.exists() and looks_like_bundle(path):
        raise LstmgenError(
            f"{path} is a model bundle or zip archive, not a text file; pass a model with -m: `lstmgen {command} -m {path} TEXT.txt`"
        )
    check_corpus_file(path)


def refuse_blank_text(path: Path, limit: int = 1 << 20) -> None:
    """A file of nothing but blank lines has no text to score: say so instead of computing a figure of nothing.

    Only files up to `limit` bytes are read for this (a larger one of white space alone is no one's held-out text)."""
    import os

    from .fsutil import read_head

    try:
        if os.stat(path).st_size > limit or read_head(path, limit).strip():
            return
    except (OSError, ValueError):
        return  # the reader reports it
    raise LstmgenError(
        f"{path} holds only blank lines and white space: there is no text to score; give a file with text"
    )


def evaluate_files(
    lm: Any,
    paths: Sequence[Path],
    streams: int | None = None,
    errors: str = "strict",
    with_baselines: bool = True,
    top_k: int | None = None,
) -> list[FileEvaluation]:
    """Evaluate `lm` (a LanguageModel) on each file, with the state carried through it.

    With `top_k` (alternatives per token) every token's surprisal is kept too, and the file is read
    as one stream. Baselines (compressors, the unigram model) come from the same pass over the text.
    """
    check_evaluation_options(streams, top_k or 0)
    for path in paths:
        check_text_file(path)
        refuse_blank_text(path)
    found = [_evaluate_file(lm, Path(path), streams, errors, with_baselines, top_k) for path in paths]
    for item in found:
        if not item.result["tokens"] or not math.isfinite(item.result["nll"]):
            raise LstmgenError(
                f"{item.path} has no text to score (nothing but blank lines, or nothing the model reads); give a file with text"
            )
        if lm.quantize is not None:
            ran = lm.quantize_ran("evaluation")
            item.result["quantize"] = ran or "none"
            if ran != lm.quantize:  # int8 measured slower here: float32 ran (one warning said so)
                item.result["quantize_requested"] = lm.quantize
    return found


def _evaluate_file(
    lm: Any, path: Path, streams: int | None, errors: str, with_baselines: bool, top_k: int | None
) -> FileEvaluation:
    text = TextWithContext(lm.tokenizer, path, errors=errors, compress=with_baselines, documents=lm.documents)
    surprisal = None
    if top_k is None:
        result = evaluate_tokens(
            lm.network, text.tokens, text.num_bytes, text.num_chars, streams, lm.device, lm.fresh_starts
        )
    else:
        surprisal = token_surprisal(lm.network, text.tokens, top_k=top_k, device=lm.device)
        result = summarize(surprisal.nll, len(text.tokens) - 1, text.num_bytes, text.num_chars)
        result["streams"] = 1
    result["file"] = str(path)
    if with_baselines:
        counts = (lm.meta.get("training") or {}).get("token_counts")
        result["baselines"] = baselines(
            text.tokens, text.num_bytes, text.num_chars, text.compressed, counts, lm.tokenizer.vocab_size
        )
        if result["baselines"].get("unigram_note"):
            log.info(f"note: {result['baselines']['unigram_note']}")
    return FileEvaluation(path, result, surprisal)


def combine(results: Sequence[dict[str, Any]], with_baselines: bool = False) -> dict[str, Any]:
    """The summary of several files read as one text (total information over total size)."""
    nll = sum(r["nll"] * r["tokens"] for r in results)
    total = summarize(
        nll, sum(r["tokens"] for r in results), sum(r["bytes"] for r in results), sum(r["chars"] for r in results)
    )
    if with_baselines:
        total["baselines"] = combine_baselines(results)
    return total


def token_text(tokenizer: Tokenizer, token_id: int) -> tuple[str, str | None]:
    """A token's text, and its bytes in hex when they are not whole UTF-8 characters on their own."""
    data = tokenizer.token_bytes(int(token_id))
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), data.hex()


def per_token_records(
    tokenizer: Tokenizer, surprisal: TokenSurprisal, file: str | None = None
) -> Iterator[dict[str, Any]]:
    """`eval --per-token`'s records: {[file,] index, id, text[, bytes], surprisal_bits, prob, alternatives: [{id, text, prob}]}."""
    texts: dict[int, tuple[str, str | None]] = {}

    def text_of(token_id: int) -> tuple[str, str | None]:
        if token_id not in texts:
            texts[token_id] = token_text(tokenizer, token_id)
        return texts[token_id]

    for index in range(len(surprisal.surprisal_bits)):
        token_id = int(surprisal.tokens[index + 1])
        text, raw = text_of(token_id)
        bits = float(surprisal.surprisal_bits[index])
        record: dict[str, Any] = {"file": file} if file is not None else {}
        record.update({"index": index, "id": token_id, "text": text})
        if raw is not None:
            record["bytes"] = raw
        record["surprisal_bits"] = round(bits, 4)
        record["prob"] = float(f"{2.0**-bits:.6g}")
        record["alternatives"] = [
            {"id": int(alt), "text": text_of(int(alt))[0], "prob": float(f"{prob:.6g}")}
            for alt, prob in zip(surprisal.top_ids[index], surprisal.top_probs[index])
        ]
        yield record


def heatmap_spans(tokenizer: Tokenizer, surprisal: TokenSurprisal) -> list[Any]:
    """The text as pieces (whole characters) with their surprisal and what the model expected instead, for heatmaps."""
    from .inspection import group_pieces
    from .visualize import Span

    spans = []
    for piece in group_pieces(tokenizer, surprisal.tokens.tolist(), start=1):
        bits = float(surprisal.surprisal_bits[piece.first - 1 : piece.last].sum())
        position = piece.first - 1
        actual = int(surprisal.tokens[piece.first])
        alternatives = [
            [token_text(tokenizer, int(alt))[0], round(float(prob), 5), int(alt) == actual]
            for alt, prob in zip(surprisal.top_ids[position], surprisal.top_probs[position])
        ]
        details: dict[str, Any] = {
            "bits": round(bits, 3),
            "p": float(f"{2.0**-bits:.4g}"),
            "alternatives": alternatives,
        }
        if piece.token_count > 1:
            details["tokens"] = piece.token_count
        spans.append(Span(piece.text, bits, details))
    return spans
