"""The quality suite: lstmgen's defaults against what users would pick instead, on six corpora.

One command runs the whole suite and writes its tables into docs/benchmarks.md (between the
``quality-table`` markers); cells already in benchmarks/results/quality.jsonl are skipped, so an
interrupted run continues where it stopped and a rerun costs nothing:

    python benchmarks/quality.py              # the same: sh benchmarks/quality_jobs.sh

It runs every contestant on every corpus for 5, 15 and 30 CPU-minutes, one thread per run, two
runs side by side (one per core of a 2-core machine), then ``--report``. The full suite is 57 cells
in 43 jobs: 810 CPU-minutes of training plus about 85 of preparation, scoring and the references'
validation (measured per corpus, one thread), so about 900 CPU-minutes, 7.5 hours on two cores.
When ``torch.cuda.is_available()`` it also fills a GPU column: WikiText-2 at 10 and 30 GPU-minutes
(the GPU runs go one at a time, beside the CPU runs when the machine has a core to spare, else after
them); without CUDA it says so and skips it. Other uses:

    python benchmarks/quality.py --report                     # only rewrite the tables
    python benchmarks/quality.py --corpora wikitext-2 --budgets 5
    python benchmarks/quality.py --budgets 0.05 --max-chars 100000 --work /tmp/quality-smoke  # smoke run
    python benchmarks/quality.py --job shakespeare gpt 5      # one job (what the suite starts)

A smoke run (``--max-chars``: each corpus cut to its first N characters, its test and validation
files to N/10) writes its records and tables under --work, never into the real results or docs.

Corpora (/work/shared/corpora, or --corpora-dir / $LSTMGEN_CORPORA): tiny Shakespeare, Pride and
Prejudice, WikiText-2 (trained on train.txt, scored on test.txt; valid.txt is there for the
references' own model selection), the Python stdlib, the Tang poems (simplified; blank-line
documents, ``--documents blank-line``) and the synthetic long-range memory corpus of docs/cells.md
(compare_cells.py's generator, 3M characters, seed 12345). Except for WikiText-2 the held-out text
is lstmgen's own split: the last 10 % of the corpus, cut at the first line that starts at or after
90 % of its bytes (``Split.of``).

Contestants (every one trains on the same text for the same budget on the same threads):

* ``lstmgen`` — exactly what a user types: ``lstmgen train CORPUS --max-time Bm --threads 1``
  (plus ``--documents blank-line`` for the Tang poems). Its --max-time counts the whole training
  loop: validation, checkpoints and bundles (training the tokenizer and encoding the corpus come
  before it). Kept runnable by name, not in the default list: ``lstmgen-char`` / ``lstmgen-subword``
  (``--model-type char`` / ``unigram``).
* ``sgd-lstm`` — the classic PyTorch word-language-model example's loop on lstmgen's tokens:
  embedding → 2-layer nn.LSTM → tied linear decoder at lstmgen's default size for the corpus,
  uniform(−0.1, 0.1) init, plain SGD at lr 20 divided by 4 whenever an epoch does not improve the
  validation loss, clipping 0.25, batch 20 × bptt 35, dropout 0.2.
* ``gpt`` — a small GPT in nanoGPT's style (pre-LayerNorm, causal attention with heads of 32
  dimensions, GELU MLP, learned positions, tied head), 4 layers as wide as brings its parameter
  count closest to lstmgen's default model's, lstmgen's tokenizer, AdamW (lr 1e-3, betas 0.9/0.99,
  weight decay 0.1), 100 warm-up steps, cosine to lr/10 over the budget, clipping 1.0, no dropout,
  batch 16 × context 128 (nanoGPT's CPU recipe). One run per budget, so its schedule ends with it.
  On a GPU: nanoGPT's shakespeare-char recipe instead (6 layers, heads of 64 dimensions, batch
  64 × context 256, dropout 0.2), again as wide as lstmgen's default model for the GPU.
* ``word-lstm`` (WikiText-2 only) — pytorch/examples' word_language_model itself: the closed
  vocabulary of the 33,278 words of train.txt, ``<eos>`` after every line, embedding 200 = hidden
  200, 2 layers, dropout 0.2, tied weights (the example's defaults, ``python main.py --tied``), the
  same SGD recipe as sgd-lstm, trained per word. Why 200: on a CPU the 33,278 × 200 output layer
  dominates, and the example's 2×650 "medium" model (dropout 0.5) runs 2.8× fewer words per second
  (225 against 640 words/s on one thread of the 2-core machine, measured under load): in 30
  CPU-minutes it would read about a fifth of an epoch, against about half for 200. The GPU column
  uses the 650 model, which a GPU runs for many epochs in its budget.

sgd-lstm and word-lstm anneal on the validation text (valid.txt for WikiText-2, else the held-out
text, which lstmgen's own trainer validates on too), read as 10 streams as the example does, with
their clock stopped. Their schedule does not depend on the budget, so one run serves every budget:
it is scored at each budget on the way (clock stopped). The references' clocks count training steps
only (not data preparation or scoring), which favours them slightly over lstmgen.

Scores, the same for every contestant: the held-out text is read as ONE stream from its first
character to its last with the recurrent state (for the GPT: a sliding context, each position
predicted with at least half a context of history) carried through; the summed negative
log-likelihood (nats) over the number of characters gives nats/char, bits/char and bits/byte. A
token stream begins with lstmgen's start ids and encodes blank-line documents as ``lstmgen eval``
does for such a model, for every contestant alike. WikiText-2 also gets the per-word test
perplexity exp(summed NLL / words), the end of each line counted as a word as the literature does
(test.txt: 245,569 words): for the word-level model that is its own per-word loss; for a subword
model the summed NLL of the whole test text is the same quantity (the text is a function of its
word sequence: a space before each word and " \\n" at each line end), so the figures compare
directly. The memory corpus also gets recall: for every held-out line the 16 versions of it that
differ only in the recalled key are scored from the state the true text left (whatever the
tokenizer makes of them); the model recalls when the true key's version is the most likely, and
the recall bits are −log2 of its share of the 16 (0 when sure, 4 at chance). Reported for gaps
under 64 and 64–319 characters.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_cells  # noqa: E402  (the memory corpus: generator, gap bins, exact entropy rate)
from docsection import write_section  # noqa: E402

import lstmgen  # noqa: E402
from lstmgen.evaluation import encode_text_stream, total_nll  # noqa: E402
from lstmgen.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality.jsonl"
DOC = ROOT / "docs" / "benchmarks.md"
SECTION = "quality-table"  # docs/benchmarks.md: <!-- quality-table:start --> … <!-- quality-table:end -->
WORK = Path("/tmp/lstmgen-quality")
CPU_BUDGETS = (5.0, 15.0, 30.0)
GPU_BUDGETS = (10.0, 30.0)

LABELS = {
    "lstmgen": "lstmgen defaults",
    "lstmgen-char": "lstmgen `--model-type char`",
    "lstmgen-subword": "lstmgen `--model-type unigram`",
    "sgd-lstm": "classic SGD LSTM (word-language-model loop, lstmgen's tokens)",
    "gpt": "small GPT (nanoGPT recipe)",
    "word-lstm": "word-level classic LSTM (word-language-model example, 33,278 words)",
}
LSTMGEN_VARIANTS = {
    "lstmgen": [],
    "lstmgen-char": ["--model-type", "char"],
    "lstmgen-subword": ["--model-type", "unigram"],
}
DEFAULT_CONTESTANTS = ("lstmgen", "sgd-lstm", "gpt", "word-lstm")
CONTESTANTS = (*LSTMGEN_VARIANTS, "sgd-lstm", "gpt", "word-lstm")
#: Budget-independent schedules: one run is scored at every budget on the way.
ONE_RUN_FOR_ALL_BUDGETS = ("sgd-lstm", "word-lstm")

#: WikiText-2's test set in words, one `<eos>` per line (pytorch/examples' data.py; SOURCES.md).
WIKITEXT_TEST_WORDS = 245_569
WIKITEXT_VOCABULARY = 33_278
EOS_WORD = "<eos>"
MEMORY_CHARS, MEMORY_SEED = 3_000_000, 12345  # compare_cells.py's memory corpus
SHORT_GAP = 64  # recall is reported for gaps < 64 (within one BPTT window of 64) and 64–319


# ---------------------------------------------------------------------------------------------
# Corpora.


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """One corpus of the suite: where its text is and how it is held out and scored."""

    name: str
    train: str  # a path under the corpora directory (or absolute); "" for the generated memory corpus
    test: str | None = None  # None: lstmgen's own split of `train`
    valid: str | None = None
    documents: str = "file"
    word_level: bool = False  # per-word perplexity, and the word-level contestant
    memory: bool = False  # the synthetic memory corpus: recall by gap
    gpu: bool = False  # the GPU column

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)


SUITE = (
    CorpusSpec("shakespeare", "tinyshakespeare.txt"),
    CorpusSpec("pride-and-prejudice", "pride-and-prejudice.txt"),
    CorpusSpec(
        "wikitext-2",
        "wikitext-2/train.txt",
        test="wikitext-2/test.txt",
        valid="wikitext-2/valid.txt",
        word_level=True,
        gpu=True,
    ),
    CorpusSpec("python-stdlib", "python-stdlib.txt"),
    CorpusSpec("tang", "tang-poems.simplified.txt", documents="blank-line"),
    CorpusSpec("memory", "", memory=True),
)
TITLES = {
    "shakespeare": "tiny Shakespeare (1.1 MB)",
    "pride-and-prejudice": "Pride and Prejudice (0.7 MB, prose)",
    "wikitext-2": "WikiText-2 (10.8 MB train, scored on test.txt)",
    "python-stdlib": "Python stdlib (2.9 MB, code)",
    "tang": "Tang poems (4.3 MB, Chinese, blank-line documents)",
    "memory": "long-range memory corpus (3.0 MB, docs/cells.md)",
}


def corpora_dir() -> Path:
    """Where the corpora are: $LSTMGEN_CORPORA, else ../shared/corpora beside the checkout, else corpora/."""
    if os.environ.get("LSTMGEN_CORPORA"):
        return Path(os.environ["LSTMGEN_CORPORA"])
    shared = ROOT.parent / "shared" / "corpora"
    return shared if shared.exists() else ROOT / "corpora"


@dataclasses.dataclass(frozen=True)
class CorpusFiles:
    """The files a run reads (the originals, or a generated / cut copy under the work directory)."""

    train: Path
    test: Path | None
    valid: Path | None


def read_lines(path: Path) -> list[str]:
    """The file's lines with their newlines, split at "\\n" only (as lstmgen reads a corpus)."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def first_chars(lines: Iterable[str], limit: int) -> str:
    """The first whole lines of at most `limit` characters (at least one line)."""
    kept: list[str] = []
    size = 0
    for line in lines:
        if kept and size + len(line) > limit:
            break
        kept.append(line)
        size += len(line)
    return "".join(kept)


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so parallel jobs never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def corpus_files(spec: CorpusSpec, work: Path, source: Path, max_chars: int | None) -> CorpusFiles:
    """The suite's files for `spec`: generated (memory) or cut (--max-chars) copies go under `work`."""
    base = work_dir(work, spec, max_chars) / "text"
    if spec.memory:
        path = base / "memory.txt"
        if not path.exists():
            chars = max_chars or MEMORY_CHARS
            text, _ = compare_cells.memory_text(int(chars / (compare_cells.mean_gap() + 4)), seed=MEMORY_SEED)
            write_atomic(path, text)
        return CorpusFiles(path, None, None)
    originals = [source / name if name else None for name in (spec.train, spec.test, spec.valid)]
    if max_chars is None:
        return CorpusFiles(*originals)  # type: ignore[arg-type]
    cut = []
    for original, limit in zip(originals, (max_chars, max_chars // 10, max_chars // 10), strict=True):
        if original is None:
            cut.append(None)
            continue
        path = base / original.name
        if not path.exists():
            write_atomic(path, first_chars(read_lines(original), limit))
        cut.append(path)
    return CorpusFiles(*cut)  # type: ignore[arg-type]


def work_dir(work: Path, spec: CorpusSpec, max_chars: int | None) -> Path:
    return work / (spec.name if max_chars is None else f"{spec.name}-first{max_chars}")


@dataclasses.dataclass
class Split:
    """The corpus cut the way lstmgen cuts it: train text and held-out text."""

    train_text: str
    val_text: str

    @classmethod
    def of(cls, corpus: Path, val_fraction: float = 0.1) -> Split:
        lines = read_lines(corpus)
        total = sum(len(line.encode("utf-8")) for line in lines)
        split_at = int(round(total * (1.0 - val_fraction)))
        offset = 0
        for index, line in enumerate(lines):
            if offset >= split_at:
                return cls("".join(lines[:index]), "".join(lines[index:]))
            offset += len(line.encode("utf-8"))
        raise SystemExit(f"{corpus}: too small to split")


@dataclasses.dataclass
class Texts:
    """What the contestants train on, select with and are scored on."""

    train: str
    test: str
    valid: str | None  # None: the held-out text serves for selection (as lstmgen's trainer validates on it)

    @classmethod
    def of(cls, files: CorpusFiles) -> Texts:
        if files.test is None:
            split = Split.of(files.train)
            return cls(split.train_text, split.val_text, None)
        valid = files.valid.read_text(encoding="utf-8") if files.valid else None
        return cls(files.train.read_text(encoding="utf-8"), files.test.read_text(encoding="utf-8"), valid)

    @property
    def selection(self) -> str:
        return self.valid if self.valid is not None else self.test


# ---------------------------------------------------------------------------------------------
# Scores.


def word_count(text: str) -> int:
    """Words as the word-level literature counts them: `line.split()` plus one `<eos>` per line."""
    return sum(len(line.split()) + 1 for line in text.splitlines())


def per_word_perplexity(nll_nats: float, words: int) -> float:
    """exp(summed NLL in nats / number of words): any model's NLL of the whole text, per word."""
    return math.exp(nll_nats / words)


def rates(nll: float, num_bytes: int, num_chars: int, words: int | None) -> dict[str, float]:
    """nats/char, bits/char and bits/byte of a summed NLL (nats), and the per-word perplexity when `words`."""
    result = {
        "nll_nats": nll,
        "nats_per_char": nll / num_chars,
        "bits_per_char": nll / num_chars / math.log(2),
        "bits_per_byte": nll / num_bytes / math.log(2),
        "val_chars": num_chars,
    }
    if words:
        result.update({"test_words": words, "word_perplexity": per_word_perplexity(nll, words)})
    return result


def score(
    model_nll: Callable[[np.ndarray], float],
    tokenizer: Tokenizer,
    val_text: str,
    documents: str = "file",
    words: int | None = None,
) -> dict[str, float]:
    """The held-out text's summed NLL per character (and per word), read as ONE stream.

    The stream is what `lstmgen eval` reads for a model trained with `documents`: the start ids,
    then the text's ids, blank-line runs as one end-of-text id for blank-line documents.
    """
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, val_text.splitlines(keepends=True), documents)
    result = rates(model_nll(tokens), num_bytes, num_chars, words)
    result["val_tokens"] = int(len(tokens) - 1)
    return result


def count_test_words(spec: CorpusSpec, texts: Texts, max_chars: int | None) -> int | None:
    """The test text's word count for word-level corpora; the whole WikiText-2 test set must have the standard count."""
    if not spec.word_level:
        return None
    words = word_count(texts.test)
    if spec.name == "wikitext-2" and max_chars is None and words != WIKITEXT_TEST_WORDS:
        raise SystemExit(
            f"wikitext-2 test.txt has {words:,} words with <eos>, not the standard {WIKITEXT_TEST_WORDS:,}"
        )
    return words


class WordVocabulary:
    """The closed vocabulary of pytorch/examples' word_language_model: the training text's words and `<eos>`.

    Ids follow first appearance, as the example's Dictionary assigns them (it also adds the words
    of valid.txt and test.txt; WikiText-2's have none that train.txt lacks, and `encode` refuses
    any such word rather than scoring it as something else).
    """

    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {word: i for i, word in enumerate(self.words)}
        self.eos_id = self.index[EOS_WORD]

    @classmethod
    def of_text(cls, text: str) -> WordVocabulary:
        seen: dict[str, None] = {}
        for line in text.splitlines():
            for word in line.split() + [EOS_WORD]:
                seen.setdefault(word, None)
        return cls(list(seen))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> np.ndarray:
        """The ids of every line's words and its `<eos>`."""
        ids = []
        for number, line in enumerate(text.splitlines(), 1):
            for word in line.split() + [EOS_WORD]:
                try:
                    ids.append(self.index[word])
                except KeyError:
                    raise SystemExit(f"line {number}: {word!r} is not in the closed vocabulary") from None
        return np.array(ids, dtype=np.int64)


def word_score(model: nn.Module, vocabulary: WordVocabulary, text: str, device: str) -> dict[str, float]:
    """The word-level model's summed NLL of every word of `text` (one stream from an `<eos>`), per char and per word.

    Each line of WikiText is " " + " ".join(words) + " \\n", so the word sequence spells the
    text exactly and its NLL is a code length of the text: bits per character compare with the
    subword models'.
    """
    ids = vocabulary.encode(text)
    tokens = np.concatenate([[vocabulary.eos_id], ids])
    nll, count = total_nll(model, tokens, num_streams=1, device=device)
    assert count == len(ids)
    result = rates(nll, len(text.encode("utf-8")), len(text), len(ids))
    result["val_tokens"] = len(ids)
    return result


# -- the memory corpus: recall -------------------------------------------------------------------


def memory_lines(text: str) -> list[tuple[str, int]]:
    """(key, gap) of every line `K, G spaces, ':', K, newline` of a memory-corpus text."""
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        key, gap = line[:1], len(line) - 3
        if gap < 0 or key not in compare_cells.KEYS or line != key + " " * gap + ":" + key:
            raise SystemExit(f"line {number} of the memory text is not `K<spaces>:K`: {line[:40]!r}")
        records.append((key, gap))
    return records


class StreamReader(Protocol):
    """Reads a token stream with a model, and scores continuations from where it stands."""

    def read(self, ids: Sequence[int]) -> None: ...

    def branch(self, continuations: Sequence[Sequence[int]]) -> np.ndarray: ...


class RecurrentReader:
    """A recurrent model (forward(x, state) -> logits, state; state tensors of shape (layers, batch, hidden)) read with its state carried."""

    def __init__(self, model: nn.Module, device: str = "cpu", chunk: int = 256) -> None:
        self.model, self.device, self.chunk = model.eval(), device, chunk
        self.state: Any = None
        self.last: torch.Tensor | None = None  # log-probabilities of the next token

    @torch.inference_mode()
    def read(self, ids: Sequence[int]) -> None:
        for begin in range(0, len(ids), self.chunk):
            x = torch.tensor([list(ids[begin : begin + self.chunk])], device=self.device)
            logits, self.state = self.model(x, self.state)
            self.last = torch.log_softmax(logits[0, -1].double(), dim=-1)

    @torch.inference_mode()
    def branch(self, continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """log P(each continuation | the text read so far), in nats; the state is left as it was."""
        assert self.last is not None, "read the start ids first"
        result = np.zeros(len(continuations))
        for length, members in _by_length(continuations).items():
            ids = torch.tensor([list(continuations[i]) for i in members], device=self.device)
            total = self.last[ids[:, 0]]
            if length > 1:
                state = tuple(s.expand(-1, len(members), -1).contiguous() for s in self.state)
                logits, _ = self.model(ids[:, :-1], state)
                total = total + torch.log_softmax(logits.double(), -1).gather(2, ids[:, 1:, None])[..., 0].sum(1)
            result[members] = total.cpu().numpy()
        return result


def _by_length(continuations: Sequence[Sequence[int]]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for index, ids in enumerate(continuations):
        if not ids:
            raise ValueError("an empty continuation")
        groups.setdefault(len(ids), []).append(index)
    return groups


def recall_scores(
    reader: StreamReader, encode: Callable[[list[str]], list[list[int]]], start_ids: Sequence[int], text: str
) -> dict[str, Any]:
    """Recall on a memory-corpus text: for each line, the 16 versions that differ in the recalled key, scored in context.

    The reader reads the true text (start ids, then line after line, state carried); at each line
    the versions' token ids share a prefix (up to the token holding the recalled key), which is
    read, and their differing rests are scored from there. The model recalls when the true key's
    version is the most likely; its recall bits are −log2 of that version's share of the 16.
    """
    keys = compare_cells.KEYS
    reader.read(list(start_ids))
    gaps, correct, bits = [], [], []
    for (key, gap), line in zip(memory_lines(text), text.splitlines(keepends=True), strict=True):
        versions = encode([line[: gap + 2] + k + line[gap + 3 :] for k in keys])
        truth = keys.index(key)
        common = 0
        shortest = min(len(ids) for ids in versions)
        while common < shortest - 1 and all(ids[common] == versions[0][common] for ids in versions):
            common += 1
        reader.read(versions[truth][:common])
        log_probs = reader.branch([ids[common:] for ids in versions])
        reader.read(versions[truth][common:])
        shares = log_probs - np.logaddexp.reduce(log_probs)
        gaps.append(gap)
        correct.append(int(np.argmax(log_probs)) == truth)
        bits.append(-shares[truth] / math.log(2))
    return recall_summary(np.array(gaps), np.array(correct), np.array(bits))


def recall_summary(gaps: np.ndarray, correct: np.ndarray, bits: np.ndarray) -> dict[str, Any]:
    """Accuracy and bits overall, under 64 / 64–319 characters of gap, and by compare_cells' gap bins."""

    def part(mask: np.ndarray) -> dict[str, Any]:
        return {
            "lines": int(mask.sum()),
            "accuracy": float(correct[mask].mean()) if mask.any() else None,
            "bits": float(bits[mask].mean()) if mask.any() else None,
        }

    short, long = part(gaps < SHORT_GAP), part(gaps >= SHORT_GAP)
    return {
        "recall_accuracy": float(correct.mean()),
        "recall_bits": float(bits.mean()),
        "recall_lines": int(len(gaps)),
        "recall_short": short,
        "recall_long": long,
        "recall_by_gap": [
            {"gap": [low, high - 1], **part((gaps >= low) & (gaps < high))} for low, high in compare_cells.GAP_BINS
        ],
    }


def memory_extras(text: str) -> dict[str, float]:
    """The exact optimum for the memory corpus, per character (the source's rate, and on this sample)."""
    optimal = 0.0
    for _, gap in memory_lines(text):
        optimal += math.log2(len(compare_cells.KEYS)) + sum(compare_cells.position_bits(gap))
    return {
        "optimal_bits_per_char": compare_cells.optimal_bits_per_char(),
        "optimal_bits_per_char_sample": optimal / len(text),
    }


# ---------------------------------------------------------------------------------------------
# lstmgen: the command a user types.


def lstmgen_command(variant: str, corpus: Path, budget_min: float, threads: int | None, documents: str) -> list[str]:
    """`lstmgen train CORPUS --max-time Bm [--threads N] [--documents blank-line] [variant options]`."""
    command = ["lstmgen", "train", str(corpus), "--max-time", f"{budget_min:g}m"]
    if threads is not None:
        command += ["--threads", str(threads)]
    if documents != "file":
        command += ["--documents", documents]
    return command + LSTMGEN_VARIANTS[variant]


def run_lstmgen(
    variant: str,
    spec: CorpusSpec,
    files: CorpusFiles,
    texts: Texts,
    budget_min: float,
    device: str,
    threads: int,
    out_dir: Path,
    words: int | None,
) -> dict:
    output = out_dir / f"{variant}-{device}-{budget_min:g}m.lstmgen"
    # The CPU column runs with --threads 1 (CUDA hidden by the suite); the GPU column as a GPU user types it.
    command = lstmgen_command(variant, files.train, budget_min, threads if device == "cpu" else None, spec.documents)
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", *command[:1], *command[1:], "-o", str(output), "--overwrite"],
        check=True,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - started
    lm = lstmgen.load(str(output), device=device, threads=threads if device == "cpu" else None)
    if lm.documents != spec.documents:
        raise SystemExit(f"{output}: trained on {lm.documents} documents, the suite scores {spec.documents} documents")
    model = lm.model
    result = score(
        lambda tokens: total_nll(model, tokens, num_streams=1, device=device)[0],
        lm.tokenizer,
        texts.test,
        spec.documents,
        words,
    )
    if spec.memory:
        start = encode_text_stream(lm.tokenizer, [], spec.documents)[0].tolist()
        result.update(recall_scores(RecurrentReader(model, device), lm.tokenizer.encode_batch, start, texts.test))
    training = lm.meta.get("training") or {}
    result.update(
        {
            "command": " ".join(
                lstmgen_command(
                    variant, Path(files.train.name), budget_min, threads if device == "cpu" else None, spec.documents
                )
            ),
            "parameters": model.num_parameters(),
            "vocab_size": lm.tokenizer.vocab_size,
            "wall_seconds": round(wall, 1),
            "model": lm.meta.get("model"),
            "steps": training.get("steps"),
            "tokens_seen": training.get("tokens_seen"),
            "tokens_per_second": (training.get("tokens_seen") or 0)
            / max(training.get("elapsed_seconds") or 1e-9, 1e-9),
            "trainer_best_val_bits_per_char": training.get("best_val_bits_per_char"),
        }
    )
    return result


def prepare(spec: CorpusSpec, files: CorpusFiles, out_dir: Path, device: str, threads: int) -> tuple[dict, Path]:
    """The tokenizer and model size `lstmgen train CORPUS` picks (via `lstmgen tokenize` and `--dry-run`), for the references."""
    env = {**os.environ, "NO_COLOR": "1"}
    tok_dir = out_dir / "tokenizer"
    if not (tok_dir / "tokens.json").exists():
        shutil.rmtree(tok_dir, ignore_errors=True)  # a half-made one from an interrupted run
        scratch = out_dir / f".tokenizer.{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "lstmgen",
                "-q",
                "tokenize",
                str(files.train),
                "-o",
                str(scratch),
                "--documents",
                spec.documents,
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        os.replace(scratch, tok_dir)
    config_path = out_dir / f"model-{device}.json"
    if not config_path.exists():
        dry = subprocess.run(
            [
                sys.executable,
                "-m",
                "lstmgen",
                "train",
                str(files.train),
                "--tokenizer",
                str(tok_dir),
                "--dry-run",
                "--documents",
                spec.documents,
                "--device",
                device,
                "--threads",
                str(threads),
                "-o",
                str(out_dir / "dry-run.lstmgen"),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        write_atomic(config_path, json.dumps(json.loads(dry.stdout)["model"]))
    return json.loads(config_path.read_text()), tok_dir / "tokenizer.model"


# ---------------------------------------------------------------------------------------------
# The classic word-language-model loop (SGD): sgd-lstm on lstmgen's tokens, word-lstm on words.


class ClassicLSTM(nn.Module):
    """pytorch/examples' RNNModel (LSTM): embedding → dropout → nn.LSTM → dropout → linear decoder, tied when sizes allow."""

    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        if embedding == hidden:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if embedding != hidden:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        output, state = self.rnn(self.drop(self.encoder(tokens)), state)
        return self.decoder(self.drop(output)), state


def batchify(tokens: np.ndarray, batch: int) -> torch.Tensor:
    """The example's batchify: `batch` contiguous columns (here rows), the remainder dropped."""
    usable = len(tokens) // batch * batch
    return torch.from_numpy(np.asarray(tokens[:usable], dtype=np.int64)).view(batch, -1)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def classic_sgd_run(
    model: nn.Module,
    train_ids: np.ndarray,
    select_ids: np.ndarray,
    budgets: Sequence[float],
    device: str,
    scorer: Callable[[nn.Module], dict],
) -> list[dict]:
    """The example's loop for the longest budget, scored at every budget on the way (clock stopped).

    SGD at lr 20, clipping 0.25, batch 20 × bptt 35, a fresh state each epoch; after each epoch the
    validation loss (`select_ids` as 10 streams, the example's eval batch) divides lr by 4 when it
    did not improve.
    """
    model.to(device)
    data = batchify(train_ids, 20).to(device)
    bptt, lr, clip = 35, 20.0, 0.25
    results, pending = [], sorted(budgets)
    trained, steps, seen, epochs, best = 0.0, 0, 0, 0, math.inf
    while pending:
        model.train()
        state = None
        for start in range(0, data.shape[1] - 1, bptt):
            if trained >= pending[0] * 60:
                model.eval()
                result = scorer(model)
                result.update(
                    {
                        "budget_min": pending.pop(0),
                        "steps": steps,
                        "tokens_seen": seen,
                        "tokens_per_second": seen / trained,
                        "epochs": epochs + start / data.shape[1],
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "lr": lr,
                    }
                )
                results.append(result)
                model.train()
                if not pending:
                    return results
            began = time.monotonic()
            length = min(bptt, data.shape[1] - 1 - start)
            x, y = data[:, start : start + length], data[:, start + 1 : start + 1 + length]
            state = None if state is None else tuple(s.detach() for s in state)
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            synchronize(device)
            trained += time.monotonic() - began
            steps += 1
            seen += x.numel()
        epochs += 1
        nll, count = total_nll(model, select_ids, num_streams=10, device=device)  # clock stopped
        if nll / count < best:
            best = nll / count
        else:
            lr /= 4.0
    return results


def run_sgd_lstm(
    spec: CorpusSpec,
    texts: Texts,
    model_cfg: dict,
    tokenizer: Tokenizer,
    budgets: Sequence[float],
    device: str,
    seed: int,
    words: int | None,
) -> list[dict]:
    torch.manual_seed(seed)
    train_tokens, _, _ = encode_text_stream(tokenizer, texts.train.splitlines(keepends=True), spec.documents)
    select_tokens, _, _ = encode_text_stream(tokenizer, texts.selection.splitlines(keepends=True), spec.documents)
    model = ClassicLSTM(
        model_cfg["vocab_size"], model_cfg["embedding_size"], model_cfg["hidden_size"], model_cfg["num_layers"], 0.2
    )

    def scorer(trained: nn.Module) -> dict:
        result = score(
            lambda tokens: total_nll(trained, tokens, num_streams=1, device=device)[0],
            tokenizer,
            texts.test,
            spec.documents,
            words,
        )
        if spec.memory:
            start = encode_text_stream(tokenizer, [], spec.documents)[0].tolist()
            result.update(recall_scores(RecurrentReader(trained, device), tokenizer.encode_batch, start, texts.test))
        return result

    results = classic_sgd_run(model, train_tokens, select_tokens, budgets, device, scorer)
    for result in results:
        result.update({"model": {**model_cfg, "dropout": 0.2}})
    return results


#: The word-level model per device: the example's defaults on a CPU, its "medium" tied model on a GPU.
WORD_SIZES = {"cpu": {"size": 200, "layers": 2, "dropout": 0.2}, "cuda": {"size": 650, "layers": 2, "dropout": 0.5}}


def run_word_lstm(
    texts: Texts,
    train_text_for_vocabulary: str,
    budgets: Sequence[float],
    device: str,
    seed: int,
    max_chars: int | None,
) -> list[dict]:
    torch.manual_seed(seed)
    vocabulary = WordVocabulary.of_text(train_text_for_vocabulary)
    if max_chars is None and len(vocabulary) != WIKITEXT_VOCABULARY:
        raise SystemExit(
            f"the closed vocabulary has {len(vocabulary):,} words, not WikiText-2's {WIKITEXT_VOCABULARY:,}"
        )
    size = WORD_SIZES["cuda" if device.startswith("cuda") else "cpu"]
    model = ClassicLSTM(len(vocabulary), size["size"], size["size"], size["layers"], size["dropout"])
    results = classic_sgd_run(
        model,
        vocabulary.encode(texts.train),
        vocabulary.encode(texts.selection),
        budgets,
        device,
        lambda trained: word_score(trained, vocabulary, texts.test, device),
    )
    for result in results:
        result.update(
            {
                "vocab_size": len(vocabulary),
                "model": {
                    "vocab_size": len(vocabulary),
                    "embedding_size": size["size"],
                    "hidden_size": size["size"],
                    "num_layers": size["layers"],
                    "dropout": size["dropout"],
                    "tie_weights": True,
                    "cell": "lstm",
                },
            }
        )
    return results


# ---------------------------------------------------------------------------------------------
# A small GPT (nanoGPT's architecture and recipe).


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )
        self.heads, self.dropout = heads, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block's output and its keys and values (after `past`'s, which the queries also attend to)."""
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        if past is None:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
            )
        else:
            k = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
            v = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
            before = past[0].shape[2]
            mask = (
                torch.arange(before + t, device=x.device)[None, :] <= before + torch.arange(t, device=x.device)[:, None]
            )
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.mlp(self.ln2(x)), (k, v)


class SmallGPT(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, context: int, dropout: float, head_dim: int = 32) -> None:
        super().__init__()
        self.context = context
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, width // head_dim, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(
                    p, std=0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                )
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_cached(tokens)[0]

    def forward_cached(self, tokens: torch.Tensor, past: list | None = None) -> tuple[torch.Tensor, list]:
        """Logits of `tokens` placed after the positions `past` (each block's keys and values) holds, and the new cache."""
        offset = past[0][0].shape[2] if past else 0
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        x = self.drop(self.tok(tokens) + self.pos(positions))
        cache = []
        for index, block in enumerate(self.blocks):
            x, kv = block(x, past[index] if past else None)
            cache.append(kv)
        return self.head(self.ln(x)), cache


def gpt_parameters(vocab: int, width: int, layers: int, context: int) -> int:
    return vocab * width + context * width + layers * (12 * width * width + 13 * width) + 2 * width


def gpt_width(target: int, vocab: int, layers: int, context: int, step: int = 32) -> int:
    """The width (a multiple of the head size) whose parameter count is closest to the target."""
    return min(range(step, 2049, step), key=lambda w: abs(gpt_parameters(vocab, w, layers, context) - target))


@torch.inference_mode()
def gpt_nll(model: SmallGPT, tokens: np.ndarray, device: str = "cpu") -> float:
    """Each position predicted with at least half a context of history (stride = context / 2)."""
    model.eval()
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64)).to(device)
    context, stride, total, done = model.context, model.context // 2, 0.0, 1
    while done < len(ids):
        end = min(len(ids), done + stride)
        begin = max(0, end - context)
        logits = model(ids[begin : end - 1].unsqueeze(0))[0]
        targets = ids[begin + 1 : end]
        keep = end - done
        total += float(F.cross_entropy(logits[-keep:].float(), targets[-keep:], reduction="sum"))
        done = end
    return total


class WindowReader:
    """The GPT reading a token stream: each continuation is scored after the last tokens of the history that fit the context."""

    def __init__(self, model: SmallGPT, device: str = "cpu") -> None:
        self.model, self.device = model.eval(), device
        self.history: list[int] = []

    def read(self, ids: Sequence[int]) -> None:
        self.history.extend(int(i) for i in ids)

    @torch.inference_mode()
    def branch(self, continuations: Sequence[Sequence[int]]) -> np.ndarray:
        result = np.zeros(len(continuations))
        for length, members in _by_length(continuations).items():
            window = torch.tensor([self.history[-(self.model.context - length + 1) :]], device=self.device)
            logits, cache = self.model.forward_cached(window)
            ids = torch.tensor([list(continuations[i]) for i in members], device=self.device)
            total = torch.log_softmax(logits[0, -1].double(), -1)[ids[:, 0]]
            if length > 1:
                rest, _ = self.model.forward_cached(ids[:, :-1], cache)
                total = total + torch.log_softmax(rest.double(), -1).gather(2, ids[:, 1:, None])[..., 0].sum(1)
            result[members] = total.cpu().numpy()
        return result


#: nanoGPT's recipes: its CPU one (small batches, no dropout) and, on a GPU, its shakespeare-char config.
GPT_RECIPES = {
    "cpu": {"layers": 4, "head_dim": 32, "context": 128, "batch": 16, "dropout": 0.0},
    "cuda": {"layers": 6, "head_dim": 64, "context": 256, "batch": 64, "dropout": 0.2},
}


def run_gpt(
    spec: CorpusSpec,
    texts: Texts,
    model_cfg: dict,
    tokenizer: Tokenizer,
    budget_min: float,
    device: str,
    seed: int,
    words: int | None,
) -> dict:
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    recipe = GPT_RECIPES["cuda" if device.startswith("cuda") else "cpu"]
    vocab, layers, context, batch = model_cfg["vocab_size"], recipe["layers"], recipe["context"], recipe["batch"]
    lstm_params = sum(
        p.numel()
        for p in ClassicLSTM(
            vocab, model_cfg["embedding_size"], model_cfg["hidden_size"], model_cfg["num_layers"], 0.0
        ).parameters()
    )
    width = gpt_width(lstm_params, vocab, layers, context, recipe["head_dim"])
    model = SmallGPT(vocab, width, layers, context, recipe["dropout"], recipe["head_dim"]).to(device)
    train_tokens, _, _ = encode_text_stream(tokenizer, texts.train.splitlines(keepends=True), spec.documents)
    data = torch.from_numpy(train_tokens.astype(np.int64))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    peak = 1e-3
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=peak, betas=(0.9, 0.99)
    )
    budget, trained, steps = budget_min * 60, 0.0, 0
    while trained < budget:
        began = time.monotonic()
        progress = trained / budget
        lr = peak * min(1.0, (steps + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = generator.integers(0, len(data) - context - 1, batch)
        x = torch.stack([data[s : s + context] for s in starts]).to(device)
        y = torch.stack([data[s + 1 : s + 1 + context] for s in starts]).to(device)
        model.train()
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        synchronize(device)
        trained += time.monotonic() - began
        steps += 1
    result = score(lambda tokens: gpt_nll(model, tokens, device), tokenizer, texts.test, spec.documents, words)
    if spec.memory:
        start = encode_text_stream(tokenizer, [], spec.documents)[0].tolist()
        result.update(recall_scores(WindowReader(model, device), tokenizer.encode_batch, start, texts.test))
    result.update(
        {
            "budget_min": budget_min,
            "steps": steps,
            "tokens_seen": steps * batch * context,
            "tokens_per_second": steps * batch * context / trained,
            "parameters": sum(p.numel() for p in model.parameters()),
            "width": width,
            "layers": layers,
            "context": context,
            "batch": batch,
            "dropout": recipe["dropout"],
            "vocab_size": vocab,
        }
    )
    return result


# ---------------------------------------------------------------------------------------------
# Results, and which cells are left to run.


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def cell_key(record: dict) -> tuple[str, str, float, str]:
    """(corpus, contestant, budget, device): one cell of the tables (records from before the GPU column are CPU runs)."""
    return record["corpus"], record["contestant"], float(record["budget_min"]), record.get("device", "cpu")


@dataclasses.dataclass(frozen=True)
class Job:
    """One process of the suite: a contestant on a corpus for some budgets (several only where one run serves them all)."""

    corpus: str
    contestant: str
    budgets: tuple[float, ...]
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.corpus} {self.contestant} {','.join(f'{b:g}' for b in self.budgets)}m{'' if self.device == 'cpu' else ' ' + self.device}"

    @property
    def minutes(self) -> float:
        """Training minutes: a job of several budgets is one run scored on the way, so its longest budget."""
        return max(self.budgets)


def applies(contestant: str, spec: CorpusSpec) -> bool:
    """The word-level model needs a word-level corpus; everything else runs everywhere."""
    return spec.word_level or contestant != "word-lstm"


def plan_jobs(
    specs: Sequence[CorpusSpec],
    contestants: Sequence[str],
    budgets: Sequence[float],
    gpu_budgets: Sequence[float],
    devices: Sequence[str],
    done: set[tuple[str, str, float, str]],
) -> list[Job]:
    """The jobs that fill the missing cells, longest first (so two lanes finish close together)."""
    jobs = []
    for device in devices:
        for spec in specs:
            if device != "cpu" and not spec.gpu:
                continue
            for contestant in contestants:
                if not applies(contestant, spec):
                    continue
                todo = tuple(
                    float(b)
                    for b in (budgets if device == "cpu" else gpu_budgets)
                    if (spec.name, contestant, float(b), device) not in done
                )
                if not todo:
                    continue
                if contestant in ONE_RUN_FOR_ALL_BUDGETS:
                    jobs.append(Job(spec.name, contestant, todo, device))
                else:
                    jobs.extend(Job(spec.name, contestant, (budget,), device) for budget in todo)
    return sorted(jobs, key=lambda job: -job.minutes)


def git_commit() -> str | None:
    """The checkout's commit (with "+dirty" for uncommitted changes), so a record says which lstmgen made it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine(device: str = "cpu") -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") and torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


# ---------------------------------------------------------------------------------------------
# Running: one job, or the whole suite.


def find_spec(args: argparse.Namespace, name: str) -> CorpusSpec:
    for spec in specs_of(args):
        if spec.name == name:
            return spec
    raise SystemExit(f"unknown corpus {name!r} (known: {', '.join(s.name for s in specs_of(args))})")


def specs_of(args: argparse.Namespace) -> list[CorpusSpec]:
    """The suite's corpora, or the one given with --corpus/--name."""
    if args.corpus:
        if not args.name:
            raise SystemExit("--corpus needs --name")
        return [CorpusSpec(args.name, str(Path(args.corpus).resolve()), documents=args.documents)]
    return list(SUITE)


def run_job(args: argparse.Namespace, corpus: str, contestant: str, budgets: list[float], device: str) -> None:
    """Train one contestant on one corpus for the budgets and append a record per budget."""
    spec = find_spec(args, corpus)
    if contestant not in CONTESTANTS or not applies(contestant, spec):
        raise SystemExit(f"contestant {contestant!r} does not run on {corpus}")
    torch.set_num_threads(args.threads)
    out_dir = work_dir(args.work, spec, args.max_chars)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = corpus_files(spec, args.work, Path(args.corpora_dir), args.max_chars)
    texts = Texts.of(files)
    words = count_test_words(spec, texts, args.max_chars)
    base = {
        "corpus": spec.name,
        "device": device,
        "threads": args.threads if device == "cpu" else None,
        "seed": args.seed,
        "machine": machine(device),
        "max_chars": args.max_chars,
        "lstmgen_version": lstmgen.__version__,
        "commit": git_commit(),
    }
    if spec.memory:
        base.update(memory_extras(texts.test))

    def record(result: dict) -> None:
        entry = {**base, "contestant": contestant, **result, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        append_result(args.results, entry)
        print(json.dumps(entry), flush=True)

    if contestant in LSTMGEN_VARIANTS:
        for budget in budgets:
            result = run_lstmgen(contestant, spec, files, texts, budget, device, args.threads, out_dir, words)
            record({"budget_min": budget, **result, "seed": None})
        return
    if contestant == "word-lstm":
        full_train = (
            files.train.read_text(encoding="utf-8")
            if args.max_chars is None
            else (Path(args.corpora_dir) / spec.train).read_text(encoding="utf-8")
        )  # the closed vocabulary is the whole train.txt's
        for result in run_word_lstm(texts, full_train, budgets, device, args.seed, args.max_chars):
            record(result)
        return
    model_cfg, tokenizer_path = prepare(spec, files, out_dir, device, args.threads)
    tokenizer = Tokenizer.load(tokenizer_path)
    if contestant == "sgd-lstm":
        for result in run_sgd_lstm(spec, texts, model_cfg, tokenizer, budgets, device, args.seed, words):
            record(result)
    elif contestant == "gpt":
        for budget in budgets:
            record(run_gpt(spec, texts, model_cfg, tokenizer, budget, device, args.seed, words))


def child_command(args: argparse.Namespace, *extra: str) -> list[str]:
    """This script with the options a job or preparation process needs."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--work",
        str(args.work),
        "--results",
        str(args.results),
        "--corpora-dir",
        str(args.corpora_dir),
        "--threads",
        str(args.threads),
        "--seed",
        str(args.seed),
    ]
    if args.max_chars is not None:
        command += ["--max-chars", str(args.max_chars)]
    if args.corpus:
        command += ["--corpus", str(args.corpus), "--name", args.name, "--documents", args.documents]
    return command + list(extra)


def child_env(device: str, threads: int) -> dict[str, str]:
    """CPU runs see no GPU (so `lstmgen train` picks the CPU, as for a CPU-only user) and their threads' worth of OpenMP."""
    env = {**os.environ, "NO_COLOR": "1"}
    if device == "cpu":
        env.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads)})
    return env


def run_suite(args: argparse.Namespace) -> int:
    """Fill every missing cell, two CPU jobs at a time (GPU jobs one at a time), then write the tables."""
    specs = [spec for spec in specs_of(args) if not args.corpora or spec.name in args.corpora]
    unknown = set(args.corpora or []) - {s.name for s in specs}
    if unknown:
        raise SystemExit(f"unknown corpora: {', '.join(sorted(unknown))}")
    devices = ["cpu"]
    if not args.no_gpu and torch.cuda.is_available():
        devices.append("cuda")
    elif any(spec.gpu for spec in specs):
        print(
            "note: no CUDA device here (torch.cuda.is_available() is False): the GPU column "
            f"(WikiText-2 at {', '.join(f'{b:g}' for b in args.gpu_budgets)} GPU-minutes) is skipped",
            file=sys.stderr,
            flush=True,
        )
    done = set() if args.force else {cell_key(r) for r in load_results(args.results)}
    jobs = plan_jobs(specs, args.contestants, args.budgets, args.gpu_budgets, devices, done)
    cpu_jobs = [job for job in jobs if job.device == "cpu"]
    gpu_jobs = [job for job in jobs if job.device != "cpu"]
    training = sum(job.minutes for job in cpu_jobs)
    print(
        f"{len(jobs)} jobs to run ({len(done)} cells already done): {training:g} CPU-minutes of training"
        f"{f' and {sum(j.minutes for j in gpu_jobs):g} GPU-minutes' if gpu_jobs else ''}, plus preparation and scoring; "
        f"{args.jobs} CPU jobs at a time, one thread each",
        file=sys.stderr,
        flush=True,
    )
    logs = args.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    failures: list[str] = []
    started = time.monotonic()

    def launch(label: str, command: list[str], device: str) -> bool:
        log = logs / (label.replace(" ", "_").replace(",", "_") + ".log")
        with lock:
            print(f"[{(time.monotonic() - started) / 60:6.1f} min] start  {label}", file=sys.stderr, flush=True)
        began = time.monotonic()
        with open(log, "w", encoding="utf-8") as handle:
            code = subprocess.run(
                command, stdout=handle, stderr=subprocess.STDOUT, env=child_env(device, args.threads)
            ).returncode
        with lock:
            status = "done " if code == 0 else f"FAILED (exit {code}, log {log})"
            print(
                f"[{(time.monotonic() - started) / 60:6.1f} min] {status} {label} ({(time.monotonic() - began) / 60:.1f} min)",
                file=sys.stderr,
                flush=True,
            )
            if code != 0:
                failures.append(f"{label}: {log}")
        return code == 0

    # The references' tokenizer and model size, per corpus and device, before their jobs start.
    preparations = sorted({(job.corpus, job.device) for job in jobs if job.contestant in ("sgd-lstm", "gpt")})
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(
            pool.map(
                lambda item: launch(
                    f"prepare {item[0]} {item[1]}",
                    child_command(args, "--prepare", item[0], "--device", item[1]),
                    item[1],
                ),
                preparations,
            )
        )

    def run_lane(lane: list[Job], width: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(max(1, width)) as pool:
            list(
                pool.map(
                    lambda job: launch(
                        job.label,
                        child_command(
                            args,
                            "--job",
                            job.corpus,
                            job.contestant,
                            ",".join(f"{b:g}" for b in job.budgets),
                            "--device",
                            job.device,
                        ),
                        job.device,
                    ),
                    lane,
                )
            )

    gpu_beside = (os.cpu_count() or 1) > args.jobs  # a core to spare drives the GPU while the CPU jobs run
    gpu_lane = threading.Thread(target=run_lane, args=(gpu_jobs, 1)) if gpu_jobs and gpu_beside else None
    if gpu_lane:
        gpu_lane.start()
    run_lane(cpu_jobs, args.jobs)
    if gpu_lane:
        gpu_lane.join()
    elif gpu_jobs:
        run_lane(gpu_jobs, 1)
    print(
        f"suite: {len(jobs) - len(failures)} of {len(jobs)} jobs done in {(time.monotonic() - started) / 60:.1f} min wall",
        file=sys.stderr,
    )
    if not args.no_report:
        report(args.results, args.doc, *table_budgets(args))
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# The tables.


def report(
    results: Path,
    doc: Path,
    budgets: Sequence[float],
    gpu_budgets: Sequence[float],
    contestants: Sequence[str] = DEFAULT_CONTESTANTS,
) -> str:
    """One table per corpus of the suite (and per other corpus with records) into `doc`'s quality section."""
    table = render(load_results(results), SUITE, budgets, gpu_budgets, contestants)
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOC, doc)  # a smoke run's copy of the real document
    write_section(doc, SECTION, table)
    print(table)
    print(f"wrote {doc}", file=sys.stderr)
    return table


def render(
    records: Sequence[dict],
    specs: Sequence[CorpusSpec],
    budgets: Sequence[float],
    gpu_budgets: Sequence[float],
    contestants: Sequence[str] = DEFAULT_CONTESTANTS,
) -> str:
    """Contestants × budgets per corpus, "not run" where a cell has no record; corpora beyond `specs` get a table when they have records."""
    latest: dict[tuple, dict] = {}
    for r in records:
        latest[cell_key(r)] = r  # the newest record of a cell wins
    names = [spec.name for spec in specs]
    known = {spec.name: spec for spec in SUITE}
    extra = [
        known.get(name, CorpusSpec(name, "")) for name in dict.fromkeys(key[0] for key in latest) if name not in names
    ]
    lines: list[str] = []
    for spec in [*specs, *extra]:
        lines += render_corpus(spec, latest, budgets, gpu_budgets, contestants)
    return "\n".join(lines).rstrip() + "\n"


def render_corpus(
    spec: CorpusSpec,
    latest: dict[tuple, dict],
    budgets: Sequence[float],
    gpu_budgets: Sequence[float],
    contestants: Sequence[str],
) -> list[str]:
    mine = {key: r for key, r in latest.items() if key[0] == spec.name}
    gpu = [float(b) for b in gpu_budgets] if spec.gpu and any(key[3] != "cpu" for key in mine) else []
    columns = [(float(b), "cpu") for b in budgets] + [(b, "cuda") for b in gpu]
    rows = [c for c in contestants if applies(c, spec)] + [
        c for c in dict.fromkeys(key[1] for key in mine) if c not in contestants
    ]
    if spec.word_level:
        what = "per-word test perplexity (bits per character)"
    elif spec.memory:
        what = "held-out bits per character; recall accuracy for gaps under 64 / 64–319 characters (chance 6 %)"
    else:
        what = "held-out bits per character (nats per character)"
    lines = [
        f"**{spec.title}** — {what}, one stream, after each budget:",
        "",
        "| contestant | parameters | "
        + " | ".join(f"{b:g} {'CPU' if d == 'cpu' else 'GPU'}-min" for b, d in columns)
        + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for contestant in rows:
        cells, params = [], {}
        for budget, device in columns:
            r = mine.get((spec.name, contestant, budget, device))
            if r is None:
                cells.append("not run")
                continue
            params[r["parameters"]] = None
            cells.append(format_cell(spec, r))
        size = " / ".join(f"{p / 1e6:.2f}M" for p in params) or "—"
        lines.append(f"| {LABELS.get(contestant, contestant)} | {size} | " + " | ".join(cells) + " |")
    shown = [r for key, r in mine.items() if (key[2], key[3]) in columns and key[1] in rows]
    machines = sorted({r["machine"] for r in shown})
    threads = {r.get("threads") for r in shown if r.get("device", "cpu") == "cpu"}
    cut = sorted({r["max_chars"] for r in shown if r.get("max_chars")})
    notes = []
    if machines:
        notes.append(
            "Measured on " + "; ".join(machines) + (" (CPU runs on one thread each)." if threads == {1} else ".")
        )
    if cut:
        notes.append(
            f"Smoke run: the corpus cut to its first {', '.join(f'{n:,}' for n in cut)} characters (test and validation files to a tenth)."
        )
    if spec.gpu and not gpu:
        notes.append(
            f"GPU column ({', '.join(f'{b:g}' for b in gpu_budgets)} GPU-minutes): not run — no CUDA device where the suite ran."
        )
    if spec.memory:
        optimum = next(
            (r["optimal_bits_per_char"] for r in mine.values() if "optimal_bits_per_char" in r),
            compare_cells.optimal_bits_per_char(),
        )
        notes.append(
            f"Optimum {optimum:.4f} bits/char (the source's exact entropy rate); a model that never recalls pays "
            f"+{4 / (compare_cells.mean_gap() + 4):.3f}."
        )
    return lines + ([""] + notes if notes else []) + [""]


def format_cell(spec: CorpusSpec, r: dict) -> str:
    if spec.word_level and r.get("word_perplexity") is not None:
        return f"{r['word_perplexity']:.1f} ({r['bits_per_char']:.3f})"
    if spec.memory and r.get("recall_short") is not None:
        short, long = r["recall_short"]["accuracy"], r["recall_long"]["accuracy"]
        percent = lambda value: "—" if value is None else f"{100 * value:.0f} %"  # noqa: E731
        return f"{r['bits_per_char']:.3f}; {percent(short)} / {percent(long)}"
    return f"{r['bits_per_char']:.3f} ({r['nats_per_char']:.3f})"


# ---------------------------------------------------------------------------------------------


def table_budgets(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    """The tables' columns: the suite's budgets and any others asked for (a smoke run's tables: only its own)."""
    if args.max_chars is not None:
        return args.budgets, args.gpu_budgets
    return sorted({*CPU_BUDGETS, *args.budgets}), sorted({*GPU_BUDGETS, *args.gpu_budgets})


def floats(text: str) -> list[float]:
    return [float(b) for b in text.split(",") if b]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpora", type=lambda s: s.split(","), help="only these suite corpora (comma-separated names)"
    )
    parser.add_argument(
        "--budgets", type=floats, default=list(CPU_BUDGETS), help="CPU-minutes, comma-separated (default 5,15,30)"
    )
    parser.add_argument(
        "--gpu-budgets", type=floats, default=list(GPU_BUDGETS), help="GPU-minutes of the GPU column (default 10,30)"
    )
    parser.add_argument(
        "--contestants",
        type=lambda s: s.split(","),
        default=list(DEFAULT_CONTESTANTS),
        help=f"comma-separated, of {', '.join(CONTESTANTS)} (default: {','.join(DEFAULT_CONTESTANTS)})",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="CPU jobs at a time (default 2: one per core of a 2-core machine)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads per CPU job (default 1)")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the references (lstmgen runs with its own default)"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU column even where CUDA is available")
    parser.add_argument(
        "--max-chars", type=int, help="smoke runs: cut each corpus to its first N characters (test/valid: N/10)"
    )
    parser.add_argument(
        "--corpora-dir", type=Path, default=corpora_dir(), help="where the corpora are (default: %(default)s)"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="bundles, tokenizers and logs (default: %(default)s)")
    parser.add_argument(
        "--results",
        type=Path,
        help=f"JSON-lines records (default: {RESULTS.relative_to(ROOT)}; with --max-chars: WORK/quality.jsonl)",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        help="where the tables go (default: docs/benchmarks.md; with --max-chars: WORK/benchmarks.md)",
    )
    parser.add_argument("--force", action="store_true", help="rerun cells that already have a record")
    parser.add_argument("--report", action="store_true", help="only write the tables from the records")
    parser.add_argument("--no-report", action="store_true", help="run, but leave the tables alone")
    parser.add_argument(
        "--corpus", help="an extra corpus file instead of the suite (held out by lstmgen's split; needs --name)"
    )
    parser.add_argument("--name", help="the --corpus's name in the tables")
    parser.add_argument("--documents", default="file", choices=["file", "blank-line"], help="the --corpus's documents")
    parser.add_argument(
        "--job", nargs=3, metavar=("CORPUS", "CONTESTANT", "BUDGETS"), help="run one job in this process"
    )
    parser.add_argument(
        "--prepare", metavar="CORPUS", help="make the references' tokenizer and model size for a corpus"
    )
    parser.add_argument("--device", default="cpu", help="the device of --job / --prepare (cpu or cuda)")
    args = parser.parse_args(argv)
    smoke = args.max_chars is not None
    args.results = args.results or (args.work / "quality.jsonl" if smoke else RESULTS)
    args.doc = args.doc or (args.work / "benchmarks.md" if smoke else DOC)
    for contestant in args.contestants:
        if contestant not in CONTESTANTS:
            parser.error(f"unknown contestant {contestant!r}")
    if args.report:
        report(args.results, args.doc, *table_budgets(args))
        return 0
    if args.prepare:
        spec = find_spec(args, args.prepare)
        out_dir = work_dir(args.work, spec, args.max_chars)
        out_dir.mkdir(parents=True, exist_ok=True)
        prepare(
            spec,
            corpus_files(spec, args.work, Path(args.corpora_dir), args.max_chars),
            out_dir,
            args.device,
            args.threads,
        )
        return 0
    if args.job:
        corpus, contestant, budgets = args.job
        run_job(args, corpus, contestant, floats(budgets), args.device)
        return 0
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
