"""A lossless SentencePiece tokenizer: `decode(encode(s)) == s` for every Unicode string.

SentencePiece normalises text, drops newlines and collapses spaces by default. lstmgen trains it
with identity normalisation, no dummy prefix, no whitespace cleanup, byte fallback (so characters
never seen in training become UTF-8 byte pieces) and a dedicated newline piece. The one thing
SentencePiece cannot represent is its own whitespace meta character U+2581 ("▁"), which it
decodes as a space; this wrapper encodes that character as its three UTF-8 byte pieces instead.

Decoding does not go through SentencePiece: every id maps to a fixed byte string, and text is
those bytes decoded as UTF-8 (invalid sequences become U+FFFD). That makes streaming decode,
byte by byte, provably identical to decoding the whole sequence.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from .config import TokenizerConfig
from .errors import LstmgenError
from .options import ref

log = logging.getLogger("lstmgen")

META = "\u2581"
NEWLINE_PIECE = "\n"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_BYTE_PIECES = 256
#: unk, bos, eos and the newline piece.
NUM_SPECIAL_PIECES = 4
MAX_TRAINING_LINE_CHARS = 4096
#: Longest whitespace-delimited word the word cache of `WordEncoder` holds (longer ones go to SentencePiece).
MAX_CACHED_WORD_CHARS = 40
#: The word cache is cleared when it holds this many words (bounded memory, about 100 MB at most).
MAX_CACHED_WORDS = 1 << 19
_PROBE = "  lstmgen\tprobe\r\n\n x"


class Tokenizer:
    """Encode text to token ids and back, exactly."""

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_proto)
        except Exception:
            raise LstmgenError(
                "the tokenizer model is not a valid SentencePiece model; retrain it with `lstmgen tokenize`"
            ) from None
        self.vocab_size = int(self._sp.get_piece_size())
        self._token_bytes = self._build_byte_table()
        # Characters SentencePiece cannot round-trip are split off and encoded as byte pieces:
        # always its meta character, and the space too when the corpus had none (then "▁" is no
        # piece and SentencePiece would fall back to the bytes of "▁", decoding as "▁").
        escaped = [META] if self._sp.piece_to_id(META) != self._sp.unk_id() else [META, " "]
        self._escapes = {char: [self._byte_id(b) for b in char.encode("utf-8")] for char in escaped}
        self._escape_pattern = re.compile("(" + "|".join(map(re.escape, escaped)) + ")")
        self._check_lossless()
        try:
            self.model_type = _model_type(self.model_proto)
        except ValueError:  # the word encoder is then off; encoding itself does not need it
            self.model_type = 0

    @classmethod
    def load(cls, path: Path) -> Tokenizer:
        try:
            data = Path(path).read_bytes()
        except OSError as error:
            raise LstmgenError(f"cannot read tokenizer {path}: {error.strerror or error}") from None
        return cls(data)

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no start or end marker is added."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many strings at once (SentencePiece spreads the work over threads)."""
        segments: list[str] = []
        layouts: list[list[str]] = []
        for text in texts:
            # re.split with a group alternates text segments and escaped characters.
            parts = self._escape_pattern.split(text)
            segments.extend(parts[0::2])
            layouts.append(parts)
        try:
            encoded = self._sp.encode(segments) if segments else []
        except TypeError:  # SentencePiece cannot take lone surrogates (undecodable bytes)
            raise LstmgenError(
                "the text holds invalid Unicode (lone surrogates from undecodable bytes); pass valid UTF-8 text"
            ) from None
        result: list[list[int]] = []
        position = 0
        for parts in layouts:
            ids: list[int] = []
            for index, part in enumerate(parts):
                if index % 2:
                    ids.extend(self._escapes[part])
                else:
                    ids.extend(encoded[position])
                    position += 1
            result.append(ids)
        return result

    def encode_array(self, texts: Sequence[str], dtype: np.dtype) -> np.ndarray:
        """The ids of all `texts` concatenated, as `dtype`: `encode_batch` without Python lists of ints."""
        if not texts:
            return np.zeros(0, dtype=dtype)
        joined = "".join(texts)
        if any(char in joined for char in self._escapes):
            return np.fromiter(itertools.chain.from_iterable(self.encode_batch(texts)), dtype=dtype)
        try:
            arrays = self._sp.encode(list(texts), out_type="numpy")
        except TypeError:
            raise LstmgenError(
                "the text holds invalid Unicode (lone surrogates from undecodable bytes); pass valid UTF-8 text"
            ) from None
        return np.concatenate(arrays).astype(dtype, copy=False)

    def word_encoder(self, dtype: np.dtype) -> WordEncoder | None:
        """A fast encoder giving the ids of `encode` (see WordEncoder), or None where that is not provable."""
        return WordEncoder.create(self, np.dtype(dtype))

    # -- decoding -----------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token contributes to the decoded text."""
        return self._token_bytes[token_id]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        table = self._token_bytes
        ids = list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join(table[i] for i in ids)
        except (IndexError, TypeError):
            raise LstmgenError(f"token ids must be integers from 0 to {self.vocab_size - 1}") from None

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        """The start id: fed first with a zero state; the model reads it as a zero input vector."""
        return BOS_ID

    @property
    def special_ids(self) -> list[int]:
        """Ids that never stand for text (unknown, begin, end)."""
        return [i for i in range(self.vocab_size) if self._sp.is_control(i) or self._sp.is_unknown(i)]

    def save(self, path: Path) -> None:
        from .fsutil import atomic_write_bytes

        atomic_write_bytes(Path(path), self.model_proto)

    # -- internals ----------------------------------------------------------------------------

    def _byte_id(self, value: int) -> int:
        token_id = self._sp.piece_to_id(f"<0x{value:02X}>")
        if not self._sp.is_byte(token_id):
            raise LstmgenError(
                "the tokenizer has no byte-fallback pieces, so it is not lossless; retrain it with `lstmgen tokenize`"
            )
        return token_id

    def _build_byte_table(self) -> list[bytes]:
        sp = self._sp
        table: list[bytes] = []
        for token_id in range(self.vocab_size):
            if sp.is_byte(token_id):
                table.append(bytes([int(sp.id_to_piece(token_id)[3:5], 16)]))
            elif sp.is_control(token_id) or sp.is_unknown(token_id):
                table.append(b"")
            else:
                table.append(sp.id_to_piece(token_id).replace(META, " ").encode("utf-8"))
        return table

    def _check_lossless(self) -> None:
        for value in range(NUM_BYTE_PIECES):
            self._byte_id(value)
        if self.decode(self.encode(_PROBE)) != _PROBE:
            raise LstmgenError(
                "the tokenizer normalises text (it was not trained by lstmgen), so it cannot round-trip text exactly; "
                "retrain it with `lstmgen tokenize`"
            )


#: A word: a run of spaces and the non-space characters after it, a run of spaces before a newline, or a newline.
_WORDS = re.compile(r" *[^ \n]+| +|\n")
_BPE, _CHAR = 2, 4


class WordEncoder:
    """Encode many texts to one id array by splicing cached ids of their words: `encode_batch`'s ids, faster.

    Why it is exact: SentencePiece encodes each text as one sentence. When no piece holds a
    non-space character followed by a space, nor a newline beside anything (checked on the
    vocabulary), no piece crosses a word boundary. BPE merges the highest-scored adjacent pair
    first (leftmost on ties), so the merges inside a word happen in the same order with or
    without context; char models map each character alone. A text holding a word that is not
    cached (escaped characters, long words) goes to `encode_batch` whole.

    Not for unigram models: their Viterbi adds float32 scores from the start of the text (and
    rebases them past 1e5), so a near tie inside a word can be decided differently in context.
    A word is provably safe only when its best segmentation beats the second best by more than
    that rounding error; checking that (n-best per new word, texts with unsafe words encoded
    whole) made encoding slower than SentencePiece alone, so unigram uses `encode_array`.
    """

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype) -> None:
        self._tokenizer = tokenizer
        self.dtype = np.dtype(dtype)
        self._escaped = tuple(tokenizer._escapes)
        self._cache: dict[str, bytes | None] = {}
        self._unsafe: set[str] = set()

    @classmethod
    def create(cls, tokenizer: Tokenizer, dtype: np.dtype) -> WordEncoder | None:
        """None when the model type or vocabulary gives no proof that words encode independently."""
        if tokenizer.model_type not in (_BPE, _CHAR) or not _words_are_separable(tokenizer._sp):
            return None
        return cls(tokenizer, dtype)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The ids of all `texts`, concatenated: equal to chaining `encode_batch(texts)`."""
        parts = [self._encode_group(group) for group in _newline_groups(texts)]
        return np.frombuffer(b"".join(parts), dtype=self.dtype)

    def _encode_group(self, texts: Sequence[str]) -> bytes:
        """Texts that all end in a newline but the last: their words never cross a text boundary."""
        words = _WORDS.findall("".join(texts))
        distinct = set(words)
        if len(self._cache) > MAX_CACHED_WORDS:
            self._cache.clear()
            self._unsafe.clear()
        missing = distinct.difference(self._cache)
        if missing:
            self._learn(list(missing))
        values: list[bytes | None] = list(map(self._cache.__getitem__, words))
        if not self._unsafe.isdisjoint(distinct):
            self._encode_unsafe_texts(words, values)
        return b"".join(cast(list[bytes], values))  # every None was replaced by its text's encoding

    def _learn(self, words: list[str]) -> None:
        for word, ids in zip(words, self._tokenizer.encode_batch(words)):
            if self._is_safe(word, ids):
                self._cache[word] = self._to_bytes(ids)
            else:
                self._cache[word] = None
                self._unsafe.add(word)

    def _is_safe(self, word: str, ids: list[int]) -> bool:
        """Whether `word` gets `ids` in any context (see the class docstring)."""
        return len(word) <= MAX_CACHED_WORD_CHARS and not any(char in word for char in self._escaped)

    def _encode_unsafe_texts(self, words: list[str], values: list[bytes | None]) -> None:
        """Replace the words of each text holding an unsafe word by that text's own encoding."""
        spans = []
        index = -1
        while True:
            try:
                index = values.index(None, index + 1)
            except ValueError:
                break
            start, end = index, index + 1
            while start > 0 and words[start - 1] != "\n":
                start -= 1
            while end < len(words) and words[end - 1] != "\n":
                end += 1
            spans.append((start, end))
            index = end - 1
        encoded = self._tokenizer.encode_batch(["".join(words[start:end]) for start, end in spans])
        for (start, end), ids in zip(spans, encoded):
            values[start:end] = [self._to_bytes(ids)] + [b""] * (end - start - 1)

    def _to_bytes(self, ids: list[int]) -> bytes:
        return np.asarray(ids, dtype=self.dtype).tobytes()


def _newline_groups(texts: Sequence[str]) -> Iterable[Sequence[str]]:
    """Consecutive runs of texts, each ending at a text with no final newline (or the last text)."""
    start = 0
    for index, text in enumerate(texts):
        if not text.endswith("\n"):
            yield texts[start : index + 1]
            start = index + 1
    if start < len(texts):
        yield texts[start:]


def _words_are_separable(sp) -> bool:
    """No piece crosses a word boundary: none holds a non-space then a space, or a newline beside anything."""
    crossing = re.compile(f"[^{META}]{META}")
    for token_id in range(sp.get_piece_size()):
        if sp.is_byte(token_id) or sp.is_control(token_id) or sp.is_unknown(token_id):
            continue
        piece = sp.id_to_piece(token_id)
        if crossing.search(piece) or ("\n" in piece and piece != NEWLINE_PIECE):
            return False
    return True


def _model_type(model_proto: bytes) -> int:
    """TrainerSpec.model_type of a serialized SentencePiece model (1 unigram, 2 bpe, 3 word, 4 char; 0 unreadable)."""
    specs = [value for number, value in _proto_fields(model_proto) if number == 2 and isinstance(value, bytes)]
    if not specs:
        return 0
    types = [value for number, value in _proto_fields(specs[-1]) if number == 3 and isinstance(value, int)]
    return types[-1] if types else 1  # proto default: unigram


def _proto_fields(data: bytes) -> Iterable[tuple[int, bytes | int | None]]:
    """(field number, value) pairs of a protobuf message, top level only; fixed-size values come as None."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        wire = key & 7
        value: bytes | int | None
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
        elif wire in (1, 5):
            value, position = None, position + (8 if wire == 1 else 4)
        else:
            raise ValueError("unsupported protobuf wire type")
        yield key >> 3, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if position >= len(data):
            raise ValueError("truncated protobuf varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


@dataclass
class CharacterStats:
    """Character frequencies of the text a tokenizer is trained on."""

    counts: Counter
    total: int

    @classmethod
    def of(cls, lines: Iterable[str]) -> CharacterStats:
        counts: Counter = Counter()
        for line in lines:
            counts.update(line)
        counts.pop("\n", None)
        counts.pop(META, None)
        return cls(counts, sum(counts.values()))

    def coverage(self) -> float:
        """1.0 for alphabets; slightly less for logographic scripts so rare characters fall back to bytes."""
        return 1.0 if len(self.counts) <= 1000 else 0.9995

    def required_characters(self, coverage: float) -> int:
        """How many characters SentencePiece keeps as pieces at `coverage` (mirrors its rule)."""
        if coverage >= 1.0:
            return len(self.counts)
        needed = self.total * coverage
        kept = 0
        running = 0
        for _, count in self.counts.most_common():
            if running >= needed:
                break
            running += count
            kept += 1
        return kept

    def minimum_vocab_size(self, coverage: float) -> int:
        return NUM_BYTE_PIECES + NUM_SPECIAL_PIECES + self.required_characters(coverage)


def default_vocab_size(stats: CharacterStats, coverage: float, model_type: str) -> int:
    """A vocabulary suited to the corpus: near character level for logographic scripts and
    small corpora, a few thousand subwords for large alphabetic corpora."""
    minimum = stats.minimum_vocab_size(coverage)
    if model_type == "char" or len(stats.counts) > 1000:
        return minimum
    extra = int(min(max(0.75 * math.sqrt(stats.total), 128), 16000))
    return int(math.ceil((minimum + extra) / 64) * 64)


def train_tokenizer(lines: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train a lossless tokenizer on `lines` (text lines with their newline characters)."""
    import sentencepiece as spm

    config.validate()
    sentences = [chunk for line in lines for chunk in _training_chunks(line)]
    stats = CharacterStats.of(sentences)
    if stats.total == 0:
        raise LstmgenError("the corpus holds no text to train a tokenizer on (only newlines); give a longer corpus")
    coverage = config.character_coverage if config.character_coverage is not None else stats.coverage()
    minimum = stats.minimum_vocab_size(coverage)
    vocab_size = (
        config.vocab_size if config.vocab_size is not None else default_vocab_size(stats, coverage, config.model_type)
    )
    if vocab_size < minimum:
        raise LstmgenError(
            f"{ref(TokenizerConfig, 'vocab_size')} {vocab_size} is too small for this corpus: it needs at least {minimum} "
            f"({NUM_BYTE_PIECES} byte pieces, {NUM_SPECIAL_PIECES} special pieces and "
            f"{minimum - NUM_BYTE_PIECES - NUM_SPECIAL_PIECES} characters); use {ref(TokenizerConfig, 'vocab_size')} {minimum} or more"
        )
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=config.model_type,
            character_coverage=coverage,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            byte_fallback=True,
            split_by_whitespace=True,
            split_digits=False,
            allow_whitespace_only_pieces=True,
            user_defined_symbols=[NEWLINE_PIECE],
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=-1,
            hard_vocab_limit=False,
            max_sentence_length=4 * MAX_TRAINING_LINE_CHARS + 16,
            input_sentence_size=0,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise LstmgenError(
            f"SentencePiece could not train a tokenizer on this corpus ({str(error).splitlines()[0][:200]}); try another {ref(TokenizerConfig, 'vocab_size')} or {ref(TokenizerConfig, 'model_type')}"
        ) from None
    tokenizer = Tokenizer(writer.getvalue())
    if tokenizer.vocab_size != vocab_size:
        log.warning(
            "the corpus supports only %d pieces with --model-type %s; using vocabulary size %d instead of %d",
            tokenizer.vocab_size,
            config.model_type,
            tokenizer.vocab_size,
            vocab_size,
        )
    return tokenizer


def _training_chunks(line: str) -> Iterable[str]:
    """SentencePiece skips over-long sentences, so split long lines (at a space where possible)."""
    while len(line) > MAX_TRAINING_LINE_CHARS:
        cut = line.rfind(" ", MAX_TRAINING_LINE_CHARS // 2, MAX_TRAINING_LINE_CHARS)
        cut = cut if cut > 0 else MAX_TRAINING_LINE_CHARS
        yield line[:cut]
        line = line[cut:]
    if line:
        yield line
