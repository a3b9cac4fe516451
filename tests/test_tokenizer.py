"""The tokenizer round-trips any Unicode text exactly, and handles corpora of any script."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmgen.config import TokenizerConfig
from lstmgen.errors import LstmgenError
from lstmgen.tokenizer import META, Tokenizer, train_tokenizer

from .conftest import SHAKESPEARE, TANG

HARD_CASES = [
    "",
    " ",
    "   leading and trailing   ",
    "\n",
    "\n\n\n",
    "a\r\nb\r\n",
    "\r",
    "\t\tindented\n    four spaces\n",
    "runs  of   spaces    here",
    "emoji 😀👍🏽 and flags 🇫🇷",
    "combining e\u0301 a\u0308 vs é",
    "中文没有空格的句子。床前明月光，疑是地上霜。",
    "日本語とカタカナ、한국어",
    "never seen: ǂ ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    META,
    f"{META}{META} meta {META}x{META}",
    "▁ and ▁▁ and _ underscores",
    "\x00\x01\x7f control characters",
    "\ufeffbyte order mark",
    "<unk> <s> </s> <0x41> look like special pieces",
    "\u2028line separator\u2029paragraph",
    "\u00a0non-breaking\u3000ideographic space",
    "def f(x):\n\tif x:\n\t\treturn  x  # comment\n",
]


@pytest.fixture(scope="module")
def english() -> Tokenizer:
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)[:4000]
    return train_tokenizer(lines, TokenizerConfig(vocab_size=600))


@pytest.fixture(scope="module")
def chinese() -> Tokenizer:
    lines = TANG.read_text().splitlines(keepends=True)[:6000]
    return train_tokenizer(lines, TokenizerConfig())


@pytest.mark.parametrize("text", HARD_CASES)
def test_hard_cases_round_trip(english: Tokenizer, chinese: Tokenizer, text: str) -> None:
    for tokenizer in (english, chinese):
        assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_any_text_round_trips(english: Tokenizer, text: str) -> None:
    assert english.decode(english.encode(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\r\n", META, "a", "the", "中", "😀", "e\u0301"]), max_size=60).map("".join))
def test_whitespace_heavy_text_round_trips(chinese: Tokenizer, text: str) -> None:
    assert chinese.decode(chinese.encode(text)) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=8))
def test_batch_encoding_matches_single(english: Tokenizer, texts: list[str]) -> None:
    assert english.encode_batch(texts) == [english.encode(t) for t in texts]


def test_model_proto_round_trip(english: Tokenizer) -> None:
    again = Tokenizer(english.model_proto)
    text = "To be, or not to be:\n that is the question."
    assert again.encode(text) == english.encode(text)


def test_chinese_gets_character_pieces(chinese: Tokenizer) -> None:
    ids = chinese.encode("床前明月光")
    # Common characters are single pieces, not three UTF-8 byte pieces each.
    assert len(ids) <= 5


def test_code_indentation_is_kept(english: Tokenizer) -> None:
    code = "class A:\n    def f(self):\n        return {'a': [1, 2]}\n\n\n"
    assert english.decode(english.encode(code)) == code


def test_char_model_type() -> None:
    lines = ["hello world\n", "abc def\n"] * 20
    tokenizer = train_tokenizer(lines, TokenizerConfig(model_type="char"))
    assert tokenizer.decode(tokenizer.encode("hello\n  😀")) == "hello\n  😀"
    assert len(tokenizer.encode("hello")) == 5


def test_bpe_model_type() -> None:
    lines = SHAKESPEARE.read_text().splitlines(keepends=True)[:2000]
    tokenizer = train_tokenizer(lines, TokenizerConfig(model_type="bpe", vocab_size=500))
    text = "O Romeo, Romeo!\n  wherefore art thou Romeo?"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_vocab_too_small_is_a_clear_error() -> None:
    lines = ["hello world\n", "abc def\n"] * 5
    with pytest.raises(LstmgenError, match=r"^vocab_size 100 is too small.*at least 272"):
        train_tokenizer(lines, TokenizerConfig(vocab_size=100))


def test_vocab_too_large_is_adjusted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    lines = ["hello world\n", "abc def\n"] * 5
    tokenizer = train_tokenizer(lines, TokenizerConfig(vocab_size=5000))
    assert tokenizer.vocab_size < 5000
    assert any("using vocabulary size" in r.getMessage() for r in caplog.records)


def test_newline_only_corpus_is_refused() -> None:
    with pytest.raises(LstmgenError, match="no text"):
        train_tokenizer(["\n", "\n"], TokenizerConfig())


def test_not_a_sentencepiece_model_is_refused() -> None:
    with pytest.raises(LstmgenError, match="not a valid SentencePiece model"):
        Tokenizer(b"this is not a model")


def test_default_sentencepiece_model_is_refused_as_lossy(tmp_path) -> None:
    import io

    import sentencepiece as spm

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["hello world"] * 50), model_writer=writer, vocab_size=300, hard_vocab_limit=False, minloglevel=2,
                                   byte_fallback=True)
    with pytest.raises(LstmgenError, match="normalises text"):
        Tokenizer(writer.getvalue())


def test_corpus_without_spaces_still_round_trips_spaces() -> None:
    lines = ["床前明月光，疑是地上霜。\n", "举头望明月，低头思故乡。\n"] * 30
    tokenizer = train_tokenizer(lines, TokenizerConfig())
    for text in ["a b", "  两 个  空格 ", " ▁ mixed▁ "]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
