"""The fast encoders (word cache, SentencePiece arrays) give exactly the ids of plain `encode`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmgen.config import TokenizerConfig
from lstmgen.data import CorpusReader, encode_corpus
from lstmgen.tokenizer import META, Tokenizer, train_tokenizer

from .conftest import SHAKESPEARE

ENGLISH = SHAKESPEARE.read_text().splitlines(keepends=True)[:1500]
NO_SPACES = ["床前明月光，疑是地上霜。\n", "举头望明月，低头思故乡。\n"] * 30
TOKENIZERS = {
    "unigram": (ENGLISH, TokenizerConfig(vocab_size=500)),
    "bpe": (ENGLISH, TokenizerConfig(model_type="bpe", vocab_size=500)),
    "char": (ENGLISH, TokenizerConfig(model_type="char")),
    "bpe-no-space-piece": (NO_SPACES, TokenizerConfig(model_type="bpe")),
    "unigram-no-space-piece": (NO_SPACES, TokenizerConfig()),
}
PIECES = [" ", "  ", "   ", "\t", "\n", "\r\n", META, "a", "the", " the", "thou", "Romeo", "中", "明月", "😀", "e\u0301", "\x00", "\x07", "ǂ"]
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
TEXTS = st.lists(st.one_of(TEXT, st.lists(st.sampled_from(PIECES), max_size=30).map("".join)), max_size=12)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    lines, config = TOKENIZERS[request.param]
    return train_tokenizer(lines, config)


def reference(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    return [i for text in texts for i in tokenizer.encode(text)]


def test_word_encoder_only_where_provable(tokenizer: Tokenizer) -> None:
    # Unigram Viterbi sums float32 scores over the whole text: no word cache for it.
    assert (tokenizer.word_encoder(np.dtype("uint16")) is None) == (tokenizer.model_type == 1)


@FAST
@given(TEXTS)
def test_encode_array_matches_encode(tokenizer: Tokenizer, texts: list[str]) -> None:
    assert tokenizer.encode_array(texts, np.dtype("uint32")).tolist() == reference(tokenizer, texts)


@FAST
@given(TEXTS)
def test_word_encoder_matches_encode(tokenizer: Tokenizer, texts: list[str]) -> None:
    words = tokenizer.word_encoder(np.dtype("uint16"))
    if words is None:
        return
    assert words.encode(texts).tolist() == reference(tokenizer, texts)
    # Again, now from the cache.
    assert words.encode(texts).tolist() == reference(tokenizer, texts)


@FAST
@given(st.lists(st.sampled_from(PIECES), max_size=200).map("".join))
def test_word_encoder_matches_encode_per_line(tokenizer: Tokenizer, text: str) -> None:
    words = tokenizer.word_encoder(np.dtype("uint16"))
    if words is None:
        return
    lines = text.splitlines(keepends=True)
    assert words.encode(lines).tolist() == reference(tokenizer, lines)


@pytest.mark.parametrize("documents", ["file", "blank-line"])
def test_encode_corpus_matches_line_by_line(tmp_path: Path, tokenizer: Tokenizer, documents: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import lstmgen.data as data

    monkeypatch.setattr(data, "ENCODE_BATCH_CHARS", 2000)  # many batches, the split inside one of them
    text = "".join(ENGLISH[:400]) + "\n\n  \n" + "".join(NO_SPACES[:10]) + f"a{META}b  c\n\n" + "".join(ENGLISH[400:600]) + "tail without newline"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    fast = encode_corpus([path], tokenizer, tmp_path / "fast", 0.1, {}, documents=documents)
    monkeypatch.setattr(data, "_array_encoder", lambda tokenizer, dtype: None)  # the line-by-line path
    slow = encode_corpus([path], tokenizer, tmp_path / "slow", 0.1, {}, documents=documents)
    assert (tmp_path / "fast" / "tokens.bin").read_bytes() == (tmp_path / "slow" / "tokens.bin").read_bytes()
    assert fast.meta == slow.meta
    if documents == "file":
        lines = list(CorpusReader(path).lines())
        assert fast.tokens().tolist() == reference(tokenizer, lines) + [tokenizer.eos_id]


def test_model_type_is_read_from_the_model() -> None:
    for name, expected in [("unigram", 1), ("bpe", 2), ("char", 4)]:
        lines, config = TOKENIZERS[name]
        assert train_tokenizer(lines[:300], config).model_type == expected
