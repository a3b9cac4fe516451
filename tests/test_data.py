"""Reading corpora, encoding them to memory-mapped token files, and training batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lstmgen.config import TokenizerConfig
from lstmgen.data import CorpusReader, StreamBatcher, TokenizedCorpus, reusable_encoding, split_streams, tokenize_corpus
from lstmgen.errors import LstmgenError


def test_reader_streams_lines_and_hashes(tmp_path: Path) -> None:
    import hashlib

    text = "first line\nsecond\r\nno newline at end"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8", newline="")
    reader = CorpusReader(path)
    assert "".join(reader.lines()) == text
    assert reader.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_reader_splits_a_huge_line(tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    text = "ab" * 300_000 + "\n"
    path.write_text(text)
    lines = list(CorpusReader(path).lines())
    assert "".join(lines) == text
    assert max(len(line) for line in lines) <= 1 << 16


def test_reader_reports_invalid_utf8_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello world " * 100_000 + b"\xff\xfe tail")
    with pytest.raises(LstmgenError, match=r"not valid UTF-8 \(byte offset 1200000\)"):
        list(CorpusReader(path).lines())


def test_reader_replace_mode(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff ok\n")
    assert "".join(CorpusReader(path, errors="replace").lines()) == "ok \ufffd ok\n"


def test_multibyte_character_across_read_chunks(tmp_path: Path) -> None:
    path = tmp_path / "cjk.txt"
    text = "a" + "中" * 700_000  # 3-byte characters straddle the 1 MiB read boundary
    path.write_text(text)
    assert "".join(CorpusReader(path).lines()) == text


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\xff\xfeh\x00i\x00"), "UTF-16"),
        (lambda p: p.write_bytes(b"PK\x03\x04rest"), "zip archive"),
        (lambda p: p.write_bytes(b"text\x00with nul"), "binary"),
    ],
)
def test_bad_corpus_paths(tmp_path: Path, setup, message: str) -> None:
    path = tmp_path / "corpus.txt"
    setup(path)
    with pytest.raises(LstmgenError, match=message):
        list(CorpusReader(path).lines())


def test_tokenize_corpus_writes_a_consistent_directory(tmp_path: Path, small_corpus: Path, tokenizer) -> None:
    corpus = tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path / "tok", 0.1)
    meta = json.loads((tmp_path / "tok" / "tokens.json").read_text())
    tokens = corpus.tokens()
    assert meta["dtype"] == "uint16" and tokens.dtype == np.uint16
    assert len(tokens) == meta["num_tokens"] == (tmp_path / "tok" / "tokens.bin").stat().st_size // 2
    assert tokens[-1] == 2  # each document ends with the end-of-text id
    from lstmgen.tokenizer import Tokenizer

    tok = Tokenizer.load(tmp_path / "tok" / "tokenizer.model")
    text = small_corpus.read_text()
    assert tok.decode(tokens[:-1].tolist()) == text
    split = meta["split"]
    assert tok.decode(tokens[split["index"] : -1].tolist()) == text[split["train_chars"] :]
    assert 0.08 < split["val_bytes"] / meta["total_bytes"] < 0.12
    assert meta["corpus_sha256"] == meta["files"][0]["sha256"]


def test_reusable_encoding_detects_changes(tmp_path: Path, small_corpus: Path) -> None:
    config = TokenizerConfig(vocab_size=400)
    corpus_file = tmp_path / "c.txt"
    corpus_file.write_bytes(small_corpus.read_bytes())
    tokenize_corpus([corpus_file], config, tmp_path / "tok", 0.1)
    assert reusable_encoding(tmp_path / "tok", [corpus_file], config, 0.1) is not None
    assert reusable_encoding(tmp_path / "tok", [corpus_file], TokenizerConfig(vocab_size=500), 0.1) is None
    assert reusable_encoding(tmp_path / "tok", [corpus_file], config, 0.2) is None
    corpus_file.write_bytes(small_corpus.read_bytes().replace(b"e", b"E", 1))
    assert reusable_encoding(tmp_path / "tok", [corpus_file], config, 0.1) is None


def test_truncated_tokens_file_is_detected(tmp_path: Path, small_corpus: Path) -> None:
    tokenize_corpus([small_corpus], TokenizerConfig(vocab_size=400), tmp_path / "tok", 0.1)
    path = tmp_path / "tok" / "tokens.bin"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LstmgenError, match="incomplete"):
        TokenizedCorpus.open(tmp_path / "tok")


def test_multiple_files_are_separate_documents(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("alpha beta gamma\n" * 200)
    b.write_text("delta epsilon\n" * 200)
    corpus = tokenize_corpus([a, b], TokenizerConfig(), tmp_path / "tok", 0.1)
    tokens = corpus.tokens().tolist()
    assert tokens.count(2) == 2
    assert len(corpus.meta["files"]) == 2


def test_stream_batcher_windows_are_contiguous() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    batcher = StreamBatcher(tokens, num_streams=4, seq_len=10, seed=0)
    first, second = batcher.batch(0, 0), batcher.batch(0, 1)
    assert first.inputs.shape == (4, 10) and len(first.resets) == 0
    assert (first.targets[:, :-1] == first.inputs[:, 1:]).all()
    assert (second.inputs[:, 0] == first.inputs[:, -1] + 1).all()  # the next window continues each stream
    assert batcher.windows_per_epoch(0) == 999 // 4 // 10


def test_stream_batcher_epochs_rotate_and_cover_the_corpus() -> None:
    """Each epoch reads every stream's share once, from an offset that differs between epochs."""
    tokens = np.arange(5000, dtype=np.uint16)
    a, b = StreamBatcher(tokens, 4, 16, seed=3), StreamBatcher(tokens, 4, 16, seed=3)
    assert [a.phase(e) for e in range(5)] == [b.phase(e) for e in range(5)]
    assert len({a.phase(e) for e in range(1, 6)}) > 1 and all(0 <= a.phase(e) < a.stream_length() for e in range(6))
    assert np.array_equal(a.batch(3, 2).inputs, b.batch(3, 2).inputs)
    read = np.concatenate([a.batch(2, w).inputs.ravel() for w in range(a.windows_per_epoch())])
    assert len(np.unique(read)) == len(read) == a.windows_per_epoch() * 4 * 16  # no token twice in an epoch


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stream_batcher_reads_each_token_again_about_an_epoch_later(seed: int) -> None:
    """No text comes back soon after it was read: at an epoch boundary the model would meet text it has
    just trained on, and the training loss dropped there (by 0.3 nats/token on WikiText-2)."""
    tokens = np.arange(6000, dtype=np.int64)
    batcher = StreamBatcher(tokens, 4, 16, seed=seed)
    windows = batcher.windows_per_epoch()
    last_read = np.full(len(tokens), -1)
    gaps = []
    for epoch in range(6):
        for window in range(windows):
            clock = epoch * windows + window
            read = batcher.batch(epoch, window).inputs.ravel()
            if epoch > 0 and window > 0:
                seen = last_read[read] >= 0
                gaps.append(int((clock - last_read[read][seen]).min()))
            last_read[read] = clock
    assert min(gaps) >= windows - 2, (min(gaps), windows)


def test_corpus_smaller_than_a_batch_is_refused() -> None:
    with pytest.raises(LstmgenError, match="shorter than one batch"):
        StreamBatcher(np.arange(50, dtype=np.uint16), num_streams=8, seq_len=32, seed=0)


@pytest.mark.parametrize("n, k", [(10, 3), (3, 10), (100, 1), (7, 7)])
def test_split_streams_covers_everything(n: int, k: int) -> None:
    parts = split_streams(n, k)
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


# -- messages that say the real cause (issue 19) -----------------------------------------------------


def _tokenize(path: Path, tmp_path: Path) -> None:
    tokenize_corpus([path], TokenizerConfig(vocab_size=300), tmp_path / "tok", 0.1)


def test_a_single_line_corpus_is_refused_for_what_it_is(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("word " * 24_000)  # 120 kB without a line break
    with pytest.raises(LstmgenError, match="^the corpus is one single line, and the validation split starts at a line; break the text"):
        _tokenize(path, tmp_path)


def test_bare_carriage_returns_in_the_tail_are_named(tmp_path: Path) -> None:
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"line one\r\n" * 9000 + b"line two\r" * 2000)  # CRLF, then old Mac line endings
    with pytest.raises(LstmgenError, match=r"no line starts in the last 10% .* bare carriage return \(CR\).* convert the line endings"):
        _tokenize(path, tmp_path)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_text_in_another_encoding(tmp_path: Path, encoding: str) -> None:
    from lstmgen.data import check_corpus_file

    path = tmp_path / "u16.txt"
    path.write_bytes(("hello world\nthis is text\n" * 200).encode(encoding))
    name = encoding.upper().replace("UTF-16-", "UTF-16")
    with pytest.raises(LstmgenError, match=f"looks like {name} text without a byte-order mark; convert it to UTF-8 first \\(iconv -f {name}"):
        check_corpus_file(path)


def test_a_corpus_appended_to_while_it_is_read_is_read_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "growing.txt"
    path.write_text("first line\n" * 1000)
    reader = CorpusReader(path)
    with open(path, "a") as handle:
        handle.write("appended while tokenizing\n" * 500)
    text = "".join(reader.lines())
    assert text == "first line\n" * 1000 and reader.bytes_read == reader.size == 11_000
    shrinking = CorpusReader(path)
    path.write_text("short\n")
    with pytest.raises(LstmgenError, match="changed while it was read"):
        "".join(shrinking.lines())
