"""Corpora on disk: validated streaming reads, tokenized arrays, and training batches.

A tokenized corpus is a directory holding `tokenizer.model`, `tokens.bin` (a flat array of token
ids, uint16 when the vocabulary fits, else uint32) and `tokens.json` (its sidecar). Training
memory-maps `tokens.bin`, so resident memory does not grow with the corpus.

The token stream is `doc1 EOS doc2 EOS ...`: each corpus file is a document and the end-of-text id
follows it, so a model learns where documents end and what follows an end.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import DOCUMENTS, RunOptions, TokenizerConfig, TrainConfig
from .errors import LstmgenError, option_mark
from .fsutil import atomic_write_text, atomic_writer
from .options import ref

TOKENS_FORMAT = "lstmgen-tokens"
TOKENS_VERSION = 1
READ_CHUNK_BYTES = 1 << 20
MAX_LINE_CHARS = 1 << 16
#: tokens.json is a few kB; refuse anything absurdly larger instead of reading it.
TOKENS_JSON_LIMIT = 64 << 20
ENCODE_BATCH_CHARS = 1 << 20

ProgressCallback = Callable[[int, int], None]
#: How a message tells the reader to replace invalid UTF-8 (a keyword in Python, a flag on the command line).
ERRORS_REPLACE = option_mark("errors='replace'", "--errors replace")


# -- reading corpora ------------------------------------------------------------------------------


def check_corpus_file(path: Path) -> int:
    """Refuse a corpus path that cannot be a text corpus; return its size in bytes."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise LstmgenError(f"corpus file {path} does not exist; check the path") from None
    except OSError as error:
        raise LstmgenError(f"cannot read corpus {path}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise LstmgenError(f"corpus {path} is a directory; pass the text files in it (e.g. {path}/*.txt)")
    if not stat.S_ISREG(info.st_mode):
        raise LstmgenError(f"corpus {path} is not a regular file; pass a text file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as error:
        raise LstmgenError(f"cannot read corpus {path}: {error.strerror or error}; check its permissions") from None
    if info.st_size == 0 or not head:
        raise LstmgenError(f"corpus {path} is empty; give a file with text in it")
    if path.suffix == ".lstmgen" or head.startswith(b"PK\x03\x04"):
        raise LstmgenError(
            f"{path} is a model bundle or zip archive, not a text corpus; to continue training from a bundle use "
            f"`lstmgen train CORPUS.txt --init-from {path}`"
        )
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LstmgenError(
            f"corpus {path} is UTF-16 text; convert it to UTF-8 first (iconv -f UTF-16 -t UTF-8 {path} > out.txt)"
        )
    encoding = _utf16_without_bom(head)
    if encoding is not None:
        raise LstmgenError(
            f"corpus {path} looks like {encoding} text without a byte-order mark; convert it to UTF-8 first "
            f"(iconv -f {encoding} -t UTF-8 {path} > out.txt)"
        )
    if b"\x00" in head and not _utf8_prefix(head):
        # An image, archive or executable: saying "convert it to UTF-8" would send the user the wrong way.
        raise LstmgenError(
            f"corpus {path} looks like a binary file (NUL bytes and invalid UTF-8 near its start), not text; pass a UTF-8 text file"
        )
    return info.st_size


def _utf16_without_bom(head: bytes) -> str | None:
    """ "UTF-16LE" or "UTF-16BE" when `head` reads as ASCII-range text in UTF-16 (a NUL byte beside nearly every
    character, always on the same side), else None: such a file is text in the wrong encoding, not a binary file."""
    pairs = len(head) // 2
    if pairs < 2:
        return None
    even, odd = head[0 : 2 * pairs : 2], head[1 : 2 * pairs : 2]
    for text, zeros, name in ((even, odd, "UTF-16LE"), (odd, even, "UTF-16BE")):
        if zeros.count(0) >= 0.9 * pairs and sum(32 <= b < 127 or b in (9, 10, 13) for b in text) >= 0.9 * pairs:
            return name
    return None


def _utf8_prefix(head: bytes) -> bool:
    """Whether `head` is valid UTF-8, allowing a character cut at its end."""
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start > len(head) - 4
    return True


class CorpusReader:
    """Stream a UTF-8 corpus as lines (newline kept), hashing the bytes as they are read.

    Lines longer than MAX_LINE_CHARS come in pieces so that a single 50 MB line stays cheap.
    """

    def __init__(self, path: Path, errors: str = "strict") -> None:
        if errors not in ("strict", "replace"):
            raise LstmgenError(f"{ref(RunOptions, 'errors')} must be strict or replace, not {errors!r}")
        self.path = Path(path)
        self.errors = errors
        self.size = check_corpus_file(self.path)
        self.sha256: str | None = None
        self.bytes_read = 0

    def lines(self) -> Iterator[str]:
        """The file's lines as it was when the reader was made: its first `size` bytes (text appended while it is
        read is left for the next run; a file that shrinks meanwhile is refused)."""
        digest = hashlib.sha256()
        decoder = codecs.getincrementaldecoder("utf-8")(errors=self.errors)
        pending = ""
        offset = 0
        try:
            handle = open(self.path, "rb")
        except OSError as error:
            raise LstmgenError(f"cannot read corpus {self.path}: {error.strerror or error}") from None
        with handle:
            while True:
                try:
                    chunk = handle.read(min(READ_CHUNK_BYTES, self.size - offset))
                except OSError as error:
                    raise LstmgenError(f"cannot read corpus {self.path}: {error.strerror or error}") from None
                if not chunk and offset < self.size:
                    raise LstmgenError(
                        f"corpus {self.path} changed while it was read ({self.size:,} bytes when it was opened, "
                        f"{offset:,} now); run again once nothing writes to it"
                    )
                digest.update(chunk)
                buffered = len(decoder.getstate()[0])
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as error:
                    position = offset - buffered + error.start
                    raise LstmgenError(
                        f"corpus {self.path} is not valid UTF-8 (byte offset {position}); convert it to UTF-8 "
                        f"or pass {ERRORS_REPLACE}"
                    ) from None
                offset += len(chunk)
                self.bytes_read = offset
                if "\x00" in text and self.errors == "strict":
                    raise LstmgenError(
                        f"corpus {self.path} looks like a binary file (it contains NUL bytes); pass a text file"
                    )
                pending += text
                lines = pending.split("\n")
                pending = lines.pop()
                for line in lines:
                    if len(line) < MAX_LINE_CHARS:  # the common case, without a generator per line
                        yield line + "\n"
                    else:
                        yield from _split_long(line + "\n")
                if len(pending) > MAX_LINE_CHARS:
                    cut = len(pending) - len(pending) % MAX_LINE_CHARS
                    yield from _split_long(pending[:cut])
                    pending = pending[cut:]
                if not chunk:
                    break
        if pending:
            yield from _split_long(pending)
        self.sha256 = digest.hexdigest()


def _split_long(text: str) -> Iterator[str]:
    for start in range(0, len(text), MAX_LINE_CHARS):
        yield text[start : start + MAX_LINE_CHARS]


def sample_lines(paths: Sequence[Path], max_bytes: int, errors: str = "strict", seed: int = 0) -> list[str]:
    """Lines for tokenizer training: all of them, or an even random share of about `max_bytes`."""
    readers = [CorpusReader(p, errors) for p in paths]
    total = sum(r.size for r in readers)
    keep = min(1.0, max_bytes / max(total, 1))
    rng = random.Random(seed)
    sample: list[str] = []
    for reader in readers:
        for line in reader.lines():
            if keep >= 1.0 or rng.random() < keep:
                sample.append(line)
    if not any(line.strip("\n") for line in sample):
        raise LstmgenError("the corpus holds no text (only newlines); give a corpus with text in it")
    return sample


# -- tokenized corpora ------------------------------------------------------------------------------


@dataclass
class TokenizedCorpus:
    """A directory with tokenizer.model, tokens.bin and tokens.json."""

    directory: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_path(self) -> Path:
        return self.directory / "tokens.bin"

    @property
    def meta_path(self) -> Path:
        return self.directory / "tokens.json"

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / "tokenizer.model"

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def split(self) -> int:
        """Index of the first validation target token."""
        return int(self.meta["split"]["index"])

    def tokens(self) -> np.ndarray:
        """The whole token array, memory-mapped read-only."""
        if self.num_tokens == 0:
            return np.zeros(0, dtype=self.meta["dtype"])
        return np.memmap(self.tokens_path, dtype=self.meta["dtype"], mode="r", shape=(self.num_tokens,))

    @classmethod
    def open(cls, directory: Path) -> TokenizedCorpus:
        directory = Path(directory)
        meta_path = directory / "tokens.json"
        if not directory.is_dir():
            raise LstmgenError(
                f"tokenized corpus {directory} is not a directory; create it with `lstmgen tokenize CORPUS -o {directory}`"
            )
        try:
            meta = json.loads(_read_regular_file(meta_path, TOKENS_JSON_LIMIT).decode("utf-8"))
        except FileNotFoundError:
            raise LstmgenError(
                f"{directory} holds no tokens.json; create it with `lstmgen tokenize CORPUS -o {directory}`"
            ) from None
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            raise LstmgenError(f"{meta_path} is damaged; recreate it with `lstmgen tokenize`") from None
        corpus = cls(directory, meta)
        corpus._validate()
        return corpus

    def _validate(self) -> None:
        meta = self.meta
        try:
            ok = meta["format"] == TOKENS_FORMAT and meta["version"] == TOKENS_VERSION
            dtype = np.dtype(meta["dtype"])
            numbers = (
                meta["num_tokens"],
                meta["vocab_size"],
                meta["split"]["index"],
                meta["split"]["val_bytes"],
                meta["split"]["val_chars"],
            )
            ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)
            # Values the CLI and the trainer read without further checks (a hand-edited file must not crash them).
            ok = ok and isinstance(meta.get("tokenizer", {}), dict) and isinstance(meta.get("files", []), list)
            ok = ok and all(isinstance(f, dict) for f in meta.get("files", []))
            expected = int(meta["num_tokens"]) * dtype.itemsize
            split = int(meta["split"]["index"])
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
            ok = False
        if not ok:
            raise LstmgenError(
                f"{self.meta_path} is not an lstmgen tokens file of version {TOKENS_VERSION}; recreate it with `lstmgen tokenize`"
            )
        if dtype not in (np.dtype("uint16"), np.dtype("uint32")) or not 0 < split <= int(meta["num_tokens"]):
            raise LstmgenError(f"{self.meta_path} is inconsistent; recreate it with `lstmgen tokenize`")
        for path in (self.tokens_path, self.tokenizer_path):
            with contextlib.suppress(OSError):
                if not stat.S_ISREG(path.stat().st_mode):  # a FIFO here would block the reader forever
                    raise LstmgenError(
                        f"{path} is not a regular file; recreate {self.directory} with `lstmgen tokenize`"
                    )
        try:
            actual = self.tokens_path.stat().st_size
        except OSError:
            actual = -1
        if actual != expected:
            raise LstmgenError(
                f"{self.tokens_path} is incomplete ({actual} bytes, expected {expected}); recreate it with `lstmgen tokenize`"
            )


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; a FIFO or device is refused, never waited on."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise ValueError(f"{path} is not a regular file of at most {limit} bytes")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(info.st_size + 1)
    finally:
        os.close(fd)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("uint16") if vocab_size <= 1 << 16 else np.dtype("uint32")


def encode_corpus(
    paths: Sequence[Path],
    tokenizer: Any,
    directory: Path,
    val_fraction: float,
    tokenizer_settings: dict[str, Any],
    errors: str = "strict",
    on_progress: ProgressCallback | None = None,
    documents: str = "file",
) -> TokenizedCorpus:
    """Encode corpus files into `directory`, streaming: memory stays bounded for any corpus size.

    The stream is `doc1 EOS doc2 EOS ...`. With documents="file" each file is one document; with
    "blank-line" a run of blank (whitespace-only) lines also ends one, and the EOS id replaces
    the run, so decoding a document's tokens gives its text exactly, without the separator.
    Files are written atomically; tokens.json is written last, so a directory whose sidecar
    matches its tokens.bin is always complete.
    """
    if documents not in DOCUMENTS:
        raise LstmgenError(
            f"{ref(TokenizerConfig, 'documents')} must be one of {', '.join(DOCUMENTS)}, not {documents!r}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    readers = [CorpusReader(p, errors) for p in paths]
    total_bytes = sum(r.size for r in readers)
    encoder = _CorpusEncoder(
        tokenizer, split_at_byte=int(round(total_bytes * (1.0 - val_fraction))), blank_lines=documents == "blank-line"
    )
    with atomic_writer(directory / "tokens.bin") as handle:
        files = [
            encoder.encode_file(handle, reader, lambda done: on_progress(done, total_bytes) if on_progress else None)
            for reader in readers
        ]
        # Checked before tokens.bin is renamed into place: a refused corpus leaves an earlier encoding intact.
        encoder.check_split(val_fraction)
        # The old sidecar must never describe the new tokens.bin (tokens.json is written last).
        remove_quietly(directory / "tokens.json")
    tokenizer.save(directory / "tokenizer.model")
    split = encoder.split
    assert split is not None
    meta = {
        "format": TOKENS_FORMAT,
        "version": TOKENS_VERSION,
        "vocab_size": tokenizer.vocab_size,
        "dtype": encoder.dtype.name,
        "num_tokens": encoder.num_tokens,
        "tokens_sha256": encoder.digest.hexdigest(),
        "corpus_sha256": corpus_digest([f["sha256"] for f in files]),
        "files": files,
        "total_bytes": encoder.bytes_done,
        "total_chars": encoder.chars_done,
        "split": {
            "val_fraction": val_fraction,
            "index": split["index"],
            "train_bytes": split["bytes"],
            "train_chars": split["chars"],
            "val_bytes": encoder.bytes_done - split["bytes"],
            "val_chars": encoder.chars_done - split["chars"],
        },
        "tokenizer": tokenizer_settings,
        "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
    }
    atomic_write_text(directory / "tokens.json", json.dumps(meta, indent=2) + "\n")
    return TokenizedCorpus(directory, meta)


class _CorpusEncoder:
    """Writes the ids of corpus files to tokens.bin as they are read, counting tokens, bytes and characters.

    The validation split starts at the first line that begins at or after `split_at_byte`. Lines are
    encoded in batches of about ENCODE_BATCH_CHARS (through the word cache or SentencePiece's arrays
    where the tokenizer has them); the batch holding the split point is encoded line by line, so
    that the split falls between two lines' ids.
    """

    def __init__(self, tokenizer: Any, split_at_byte: int, blank_lines: bool) -> None:
        self.tokenizer = tokenizer
        self.split_at_byte = split_at_byte
        self.blank_lines = blank_lines
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.fast_encode = _array_encoder(tokenizer, self.dtype)
        self.eos = np.array([tokenizer.eos_id], dtype=self.dtype)
        self.num_tokens = self.bytes_done = self.chars_done = 0
        self.split: dict[str, int] | None = None
        self.digest = hashlib.sha256()
        #: For the message when no line starts in the held-out tail: line breaks seen, and bare CRs after the split point.
        self.line_breaks = 0
        self.carriage_returns_in_tail = False

    def encode_file(self, handle: Any, reader: CorpusReader, progress: Callable[[int], None]) -> dict[str, Any]:
        """Encode one file (a document, then EOS; blank-line runs also end documents); its record for tokens.json."""
        tokens_before, chars, batch_chars = self.num_tokens, 0, 0
        batch: list[str] = []
        separators: list[list[int] | None] | None = [] if self.blank_lines else None
        at_line_start, in_document = True, False
        for line in reader.lines():
            if separators is not None:
                # documents="blank-line": a run of blank lines ends a document; one EOS stands for it.
                if at_line_start and line.endswith("\n") and line.isspace():
                    separators.append([self.tokenizer.eos_id] if in_document else [])
                    in_document = False
                else:
                    separators.append(None)
                    at_line_start, in_document = line.endswith("\n"), True
            batch.append(line)
            batch_chars += len(line)
            if batch_chars >= ENCODE_BATCH_CHARS:
                chars += self._encode_batch(handle, batch, separators)
                batch, batch_chars, separators = [], 0, [] if self.blank_lines else None
                progress(self.bytes_done)
        chars += self._encode_batch(handle, batch, separators)
        if in_document or not self.blank_lines:
            self._write(handle, self.eos)
        progress(self.bytes_done)
        return {
            "path": str(reader.path),
            "sha256": reader.sha256,
            "bytes": reader.size,
            "chars": chars,
            "tokens": self.num_tokens - tokens_before,
        }

    def _write(self, handle: Any, array: np.ndarray) -> None:
        data = array.tobytes()
        handle.write(data)
        self.digest.update(data)
        self.num_tokens += len(array)

    def _encode_batch(self, handle: Any, batch: list[str], separators: list[list[int] | None] | None) -> int:
        """Encode a batch of lines and write their ids; returns its characters.

        separators[i], when given and not None, replaces line i's ids (a document separator)."""
        sizes = [len(line.encode("utf-8", errors="surrogatepass")) for line in batch]
        self.line_breaks += sum(line.endswith("\n") for line in batch)
        if self.bytes_done + sum(sizes) > self.split_at_byte:
            self.carriage_returns_in_tail = self.carriage_returns_in_tail or any("\r" in line for line in batch)
        if self.fast_encode is not None and (
            self.split is not None or self.bytes_done + sum(sizes) <= self.split_at_byte
        ):
            self._write(handle, _encode_runs(self.fast_encode, self.dtype, batch, separators))
        else:
            encoded = self._line_ids(batch, separators)
            if self.split is None:
                self._note_split(batch, sizes, encoded)
            count = sum(len(ids) for ids in encoded)
            self._write(handle, np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=count))
        batch_chars = sum(map(len, batch))
        self.bytes_done += sum(sizes)
        self.chars_done += batch_chars
        return batch_chars

    def _line_ids(self, batch: list[str], separators: list[list[int] | None] | None) -> list[list[int]]:
        if separators is None:
            return self.tokenizer.encode_batch(batch)
        texts = iter(self.tokenizer.encode_batch([line for line, ids in zip(batch, separators) if ids is None]))
        return [next(texts) if ids is None else ids for ids in separators]

    def _note_split(self, batch: list[str], sizes: list[int], encoded: list[list[int]]) -> None:
        """The validation split starts at the first line of the batch that begins at or after split_at_byte."""
        offset, tokens, chars = self.bytes_done, self.num_tokens, self.chars_done
        for line, size, ids in zip(batch, sizes, encoded):
            if offset >= self.split_at_byte:
                self.split = {"index": tokens, "bytes": offset, "chars": chars}
                return
            offset += size
            tokens += len(ids)
            chars += len(line)

    def check_split(self, val_fraction: float) -> None:
        """Refuse a corpus whose split is impossible, saying why: too little text, or no line starting in the tail."""
        more = f"give more text or a larger {ref(TrainConfig, 'val_fraction')}"
        if self.split is None and self.num_tokens > 16:
            share = f"{val_fraction:.0%}"
            if self.carriage_returns_in_tail:
                raise LstmgenError(
                    f"no line starts in the last {share} of the corpus, where the validation split begins: its lines there end with a "
                    "bare carriage return (CR), which is not a line break here; convert the line endings (e.g. "
                    "`perl -pe 's/\\r\\n?/\\n/g' in.txt > out.txt`), or give a larger "
                    + ref(TrainConfig, "val_fraction")
                )
            if not self.line_breaks:
                raise LstmgenError(
                    "the corpus is one single line, and the validation split starts at a line; break the text into lines "
                    f"(the last {share} must hold at least one line start)"
                )
            raise LstmgenError(
                f"no line starts in the last {share} of the corpus, where the validation split begins (its last line is too "
                f"long); break that line into lines, or give a larger {ref(TrainConfig, 'val_fraction')}"
            )
        if self.split is None or self.split["index"] < 2 or self.split["index"] >= self.num_tokens - 1:
            raise LstmgenError(
                f"the corpus is too small to hold out a validation split ({self.num_tokens} tokens); {more}"
            )


def _array_encoder(tokenizer: Any, dtype: np.dtype) -> Callable[[list[str]], np.ndarray] | None:
    """texts -> their concatenated ids as one array: the word cache where provably exact, else SentencePiece's
    arrays; None for a tokenizer without either (then ids come line by line)."""
    words = tokenizer.word_encoder(dtype) if hasattr(tokenizer, "word_encoder") else None
    if words is not None:
        return words.encode
    if hasattr(tokenizer, "encode_array"):
        return lambda texts: tokenizer.encode_array(texts, dtype)
    return None


def _encode_runs(
    encode: Callable[[list[str]], np.ndarray],
    dtype: np.dtype,
    batch: list[str],
    separators: list[list[int] | None] | None,
) -> np.ndarray:
    """The ids of a batch; separator lines (blank-line documents) get their given ids instead."""
    if separators is None:
        return encode(batch)
    parts: list[np.ndarray] = []
    run: list[str] = []
    for line, ids in zip(batch, separators):
        if ids is None:
            run.append(line)
            continue
        if run:
            parts.append(encode(run))
            run = []
        parts.append(np.asarray(ids, dtype=dtype))
    if run:
        parts.append(encode(run))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def corpus_digest(file_digests: Sequence[str]) -> str:
    """One sha256 for an ordered list of corpus files."""
    if len(file_digests) == 1:
        return file_digests[0]
    return hashlib.sha256("\n".join(file_digests).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- fresh starts ----------------------------------------------------------------------------------


def start_ids(tokenizer: Any, documents: str = "file") -> list[int]:
    """What a fresh state reads before any text: the start id, then end-of-text for blank-line documents.

    Models trained on blank-line documents see the end-of-text id before every document, so a
    sample, an evaluation and a training restart all begin with it too.
    """
    return [int(tokenizer.bos_id), int(tokenizer.eos_id)] if documents == "blank-line" else [int(tokenizer.bos_id)]


class FreshStarts:
    """Where text may be read from a fresh state: paragraph and document starts, found in token ids.

    Sampling always starts from a fresh state, and so does every stream of `eval --streams N`. A
    model learns to start well only if training starts it fresh too, where text naturally begins:
    at the first token of a paragraph (after a blank line) or of a document (after the end-of-text
    id). A fresh start reads `start_ids()` with a zero state; position p is a fresh-start position
    when tokens[p] is the first target read after them. For documents="blank-line" corpora the start
    ids end with the end-of-text id, as the sampler reads them, so p is the end-of-text id itself.

    Newlines are pieces of their own (never merged with other text), so line and paragraph starts
    are visible in the ids: a newline, at most MAX_BLANK_PIECES whitespace-only pieces, a newline.
    """

    MAX_BLANK_PIECES = 3
    #: Tokens of context a position needs behind it to be judged.
    LOOKBACK = MAX_BLANK_PIECES + 2

    def __init__(self, tokenizer: Any, documents: str = "file") -> None:
        pieces = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
        self.documents = documents
        self.start_id = int(tokenizer.bos_id)
        self.eos_id = int(tokenizer.eos_id)
        self.newline = np.array([piece == b"\n" for piece in pieces], dtype=bool)
        self.blank = np.array([_is_blank_piece(piece) for piece in pieces], dtype=bool)
        self.end = np.zeros(len(pieces), dtype=bool)
        self.end[self.eos_id] = True

    def start_ids(self) -> list[int]:
        return [self.start_id, self.eos_id] if self.documents == "blank-line" else [self.start_id]

    def mask(self, tokens: np.ndarray, kind: str = "paragraph") -> np.ndarray:
        """True (over the last axis of `tokens`) where a fresh start may put its first target.

        kind "paragraph": paragraph and document starts; "line": every line start as well. The
        first positions of each row lack the context to be judged and may be missed.
        """
        tokens = np.asarray(tokens)
        newline, end = self.newline[tokens], self.end[tokens]
        content = _line_has_text(newline | end, self.blank[tokens])
        if self.documents == "blank-line":
            return (end | (content & _shifted(newline, 1))) if kind == "line" else end & _has_before(end.shape, 1)
        after = (
            _shifted(end, 1) | _shifted(newline, 1)
            if kind == "line"
            else _shifted(end, 1) | (_shifted(newline, 1) & self._after_blank(newline, tokens))
        )
        return content & after

    def _after_blank(self, newline: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """True at p when the line before the one ending at p-1 ended at p-2-k, with k blank pieces between."""
        blank = self.blank[tokens]
        found = np.zeros(tokens.shape, dtype=bool)
        only_blank = np.ones(tokens.shape, dtype=bool)
        for k in range(self.MAX_BLANK_PIECES + 1):
            found |= only_blank & _shifted(newline, 2 + k)
            only_blank &= _shifted(blank, 2 + k)
        return found

    def positions(self, tokens: np.ndarray, kind: str = "paragraph", chunk: int = 1 << 22) -> np.ndarray:
        """Indices of the fresh-start positions of a 1-D token array (read in chunks: memory-mapped arrays stay cheap)."""
        found = []
        for begin in range(0, len(tokens), chunk):
            low = max(0, begin - self.LOOKBACK)
            window = np.asarray(tokens[low : begin + chunk])
            hits = np.flatnonzero(self.mask(window, kind)) + low
            found.append(hits[hits >= begin])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def density(self, tokens: np.ndarray, kind: str = "paragraph", sample: int = 1 << 16, pieces: int = 64) -> float:
        """Fresh-start positions per token, counted on up to `pieces` evenly spread samples of the array."""
        if len(tokens) <= sample * pieces:
            return len(self.positions(tokens, kind)) / max(1, len(tokens))
        count = 0
        for begin in np.linspace(0, len(tokens) - sample, pieces).astype(np.int64):
            count += len(self.positions(np.asarray(tokens[begin : begin + sample]), kind))
        return count / (sample * pieces)


def _is_blank_piece(piece: bytes) -> bool:
    try:
        text = piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and text.isspace() and "\n" not in text


def _line_has_text(line_end: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """True at i when a piece other than whitespace comes at or after i before the line ends (or the row does)."""
    width = line_end.shape[-1]
    index = np.broadcast_to(np.arange(width), line_end.shape)
    never = np.full(line_end.shape, width)
    next_end = np.flip(np.minimum.accumulate(np.flip(np.where(line_end, index, never), -1), axis=-1), -1)
    next_text = np.flip(np.minimum.accumulate(np.flip(np.where(~line_end & ~blank, index, never), -1), axis=-1), -1)
    return (next_text < next_end) | ((next_text == width) & (next_end == width) & ~line_end & ~blank)


def _shifted(flags: np.ndarray, by: int) -> np.ndarray:
    """flags moved `by` positions along the last axis (result[..., i] = flags[..., i - by]; False where i < by)."""
    result = np.zeros(flags.shape, dtype=bool)
    if by < flags.shape[-1]:
        result[..., by:] = flags[..., : flags.shape[-1] - by]
    return result


def _has_before(shape: tuple[int, ...], by: int) -> np.ndarray:
    result = np.zeros(shape, dtype=bool)
    result[..., by:] = True
    return result


# -- training batches ---------------------------------------------------------------------------


@dataclass
class Batch:
    """One training window: inputs and targets (streams, seq_len) as int64, and its fresh starts.

    `resets` holds (stream row, input position) pairs, sorted by position: that row's state is
    zeroed before the position is read, and its input there is the start id (the last start id:
    the end-of-text id before a blank-line document is a target, not an input).
    """

    inputs: np.ndarray
    targets: np.ndarray
    resets: np.ndarray


class StreamBatcher:
    """Truncated-BPTT windows over `num_streams` contiguous streams of a token array.

    Window k of epoch e gives stream b the inputs tokens[start_b + kT : start_b + (k+1)T] and the
    targets one token later; the state is carried from window to window, so the model learns from
    context longer than a window. Each epoch shifts all streams on by one window plus a random part
    of one (from the seed and the epoch), so window cuts and stream starts differ between epochs,
    every token comes back about one epoch after it was last read (a larger rotation re-read the text
    read just before the boundary, and the training loss fell there by up to 0.3 nats/token), and a
    run stays reproducible and resumable from (epoch, window) alone.

    With `fresh_starts`, a stream also restarts from a fresh state at a paragraph or document start
    now and then: on average every `reset_every` tokens, at random starts drawn from (seed, epoch,
    window). A model that is only ever read from a long-running state learns to depend on it
    (measured: from a fresh state it predicted thousands of tokens badly, and it broke down when an
    epoch boundary reset every stream at once); restarts teach it to begin text well, without
    giving up the carried context in between.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        num_streams: int,
        seq_len: int,
        seed: int,
        streams: slice | None = None,
        fresh_starts: FreshStarts | None = None,
        reset_every: int = 0,
    ) -> None:
        self.tokens = tokens
        self.num_streams = num_streams
        self.seq_len = seq_len
        self.seed = seed
        self.streams = streams or slice(0, num_streams)
        self.fresh_starts = fresh_starts if reset_every else None
        if self.windows_per_epoch(0) < 1:
            raise LstmgenError(
                f"the training split ({len(tokens)} tokens) is shorter than one batch of {num_streams} streams × "
                f"{seq_len + 1} tokens; give more text or lower {ref(TrainConfig, 'batch_size')} / {ref(TrainConfig, 'seq_len')}"
            )
        self.reset_kind = "paragraph"
        self.reset_probability = 0.0
        if self.fresh_starts is not None:
            density = self.fresh_starts.density(tokens, "paragraph")
            if density == 0.0:  # no blank lines or documents: restart at line starts
                self.reset_kind, density = "line", self.fresh_starts.density(tokens, "line")
            self.reset_probability = min(1.0, 1.0 / (reset_every * density)) if density > 0 else 0.0

    def phase(self, epoch: int) -> int:
        """How far epoch `epoch` shifts the streams: 0 for the first, then one window and a random
        part of one more per epoch, so consecutive epochs differ by 1 to 2 windows, always forward."""
        if epoch == 0:
            return 0
        jitter = random.Random(f"{self.seed}:{epoch}").randrange(self.seq_len)
        return (epoch * self.seq_len + jitter) % self.stream_length()

    def stream_length(self, epoch: int = 0) -> int:
        return (len(self.tokens) - 1) // self.num_streams

    def windows_per_epoch(self, epoch: int = 0) -> int:
        return self.stream_length(epoch) // self.seq_len

    def batch(self, epoch: int, window: int) -> Batch:
        """The window's inputs, targets and fresh starts for this process's streams."""
        length = self.stream_length(epoch)
        rows = np.arange(self.num_streams)[self.streams]
        starts = self.phase(epoch) + rows * length + window * self.seq_len
        lookback = FreshStarts.LOOKBACK if self.fresh_starts is not None else 0
        index = (starts[:, None] + np.arange(-lookback, self.seq_len + 1)[None, :]) % len(self.tokens)
        values = np.asarray(self.tokens[index], dtype=np.int64)
        inputs, targets = values[:, lookback:-1].copy(), values[:, lookback + 1 :]
        resets = self._resets(epoch, window, values)
        if len(resets):
            inputs[resets[:, 0], resets[:, 1]] = self.fresh_starts.start_ids()[0]  # type: ignore[union-attr]
        return Batch(inputs, targets, resets)

    def _resets(self, epoch: int, window: int, values: np.ndarray) -> np.ndarray:
        """(row, input position) of the restarts in this window, sorted by position."""
        if self.fresh_starts is None or self.reset_probability <= 0.0:
            return np.zeros((0, 2), dtype=np.int64)
        lookback = FreshStarts.LOOKBACK
        # Targets sit one after the inputs: a start at target j restarts the input at j.
        candidates = self.fresh_starts.mask(values, self.reset_kind)[:, lookback + 1 :]
        draws = np.random.default_rng([self.seed, epoch, window]).random((self.num_streams, self.seq_len))[self.streams]
        rows, positions = np.nonzero(candidates & (draws < self.reset_probability))
        order = np.argsort(positions, kind="stable")
        return np.stack([rows[order], positions[order]], axis=1).astype(np.int64)


def split_streams(num_tokens: int, num_streams: int) -> list[tuple[int, int]]:
    """Cut [0, num_tokens) into up to `num_streams` contiguous, nearly equal parts."""
    num_streams = max(1, min(num_streams, num_tokens))
    base, extra = divmod(num_tokens, num_streams)
    bounds = []
    start = 0
    for index in range(num_streams):
        end = start + base + (1 if index < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# -- tokenize: train a tokenizer and encode, or reuse an up-to-date encoding ----------------------------


def tokenize_corpus(
    paths: Sequence[Path],
    config: Any,
    directory: Path,
    val_fraction: float,
    errors: str = "strict",
    on_progress: ProgressCallback | None = None,
    tokenizer: Any = None,
) -> TokenizedCorpus:
    """Train a tokenizer on `paths` (unless one is given) and encode them into `directory`."""
    from .config import to_dict
    from .tokenizer import train_tokenizer

    paths = [Path(p) for p in paths]
    if not paths:
        raise LstmgenError("give at least one corpus file")
    for path in paths:
        check_corpus_file(path)
    if tokenizer is None:
        tokenizer = train_tokenizer(sample_lines(paths, config.max_training_bytes, errors), config)
    settings = to_dict(config)
    settings["errors"] = errors
    created = not os.path.lexists(directory)
    try:
        return encode_corpus(
            paths,
            tokenizer,
            directory,
            val_fraction,
            settings,
            errors=errors,
            on_progress=on_progress,
            documents=getattr(config, "documents", "file"),
        )
    except BaseException:
        if created:  # a failed run leaves no half-made directory behind
            shutil.rmtree(directory, ignore_errors=True)
        raise


def reusable_encoding(
    directory: Path, paths: Sequence[Path], config: Any, val_fraction: float, errors: str = "strict"
) -> TokenizedCorpus | None:
    """The encoding in `directory` if it was made from these exact files and settings, else None."""
    from .config import to_dict

    try:
        corpus = TokenizedCorpus.open(directory)
    except LstmgenError:
        return None
    settings = to_dict(config)
    settings["errors"] = errors
    meta = corpus.meta
    stored = {"documents": "file", **(meta.get("tokenizer") or {})}  # encodings made before the setting existed
    if stored != settings or meta["split"].get("val_fraction") != val_fraction:
        return None
    files = meta.get("files", [])
    if len(files) != len(paths):
        return None
    for record, path in zip(files, paths):
        try:
            if record.get("bytes") != Path(path).stat().st_size or record.get("sha256") != file_sha256(Path(path)):
                return None
        except OSError:
            return None
    return corpus


def tokenize_files(
    corpus: Sequence[Path | str],
    output: Path | str | None = None,
    *,
    on_progress: ProgressCallback | None = None,
    val_fraction: float | None = None,
    errors: str | None = None,
    **tokenizer_options: Any,
) -> dict[str, Any]:
    """`lstmgen tokenize`: train a tokenizer on the corpus files and encode them into `output` (default FIRST-CORPUS-NAME.tok).

    Keyword arguments: the TokenizerConfig fields, `val_fraction` and `errors`, as `lstmgen.train` takes them.
    Returns the summary `tokenize --json` prints."""
    import time

    from .fsutil import check_output_directory, declare_input
    from .tokenizer import train_tokenizer

    paths = [Path(p) for p in corpus]
    config = TokenizerConfig(**tokenizer_options)
    config.validate()
    settings = TrainConfig(val_fraction=val_fraction if val_fraction is not None else TrainConfig.val_fraction)
    settings.validate()
    run = RunOptions(errors=errors or "strict")
    run.validate()
    directory = Path(output) if output is not None else Path(paths[0].stem + ".tok")
    for path in paths:
        check_corpus_file(path)
        declare_input(path, "a corpus file")
    check_output_directory(
        directory, "tokenized corpus", members=("tokens.bin", "tokens.json", "tokenizer.model"), marker="tokens.json"
    )
    started = time.perf_counter()
    tokenizer = train_tokenizer(sample_lines(paths, config.max_training_bytes, run.errors), config)
    trained = time.perf_counter()
    meta = tokenize_corpus(
        paths, config, directory, settings.val_fraction, errors=run.errors, on_progress=on_progress, tokenizer=tokenizer
    ).meta
    encoded = time.perf_counter()
    return {
        "directory": str(directory),
        "vocab_size": meta["vocab_size"],
        "tokens": meta["num_tokens"],
        "chars": meta["total_chars"],
        "bytes": meta["total_bytes"],
        "chars_per_token": meta["total_chars"] / max(1, meta["num_tokens"]),
        "train_tokens": meta["split"]["index"],
        "val_tokens": meta["num_tokens"] - meta["split"]["index"],
        "corpus_sha256": meta["corpus_sha256"],
        "seconds": {"tokenizer_training": round(trained - started, 3), "encoding": round(encoded - trained, 3)},
        "encode_mb_per_second": round(meta["total_bytes"] / 1e6 / max(encoded - trained, 1e-9), 2),
    }
