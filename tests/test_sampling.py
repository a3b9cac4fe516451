"""Generation: controls, exact streaming, reproducibility."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmgen
from lstmgen.errors import LstmgenError
from lstmgen.sampling import FINISH_LENGTH, FINISH_STOP, SamplingOptions, _TextTracker


@pytest.fixture(scope="module")
def lm(tiny_bundle: Path):
    return lstmgen.load(tiny_bundle)


def test_generate_returns_continuation_only(lm) -> None:
    text = lm.generate("ROMEO:", max_tokens=30, seed=1)
    assert isinstance(text, str) and text
    assert not text.startswith("ROMEO:")


def test_same_seed_same_text(lm) -> None:
    a = lm.generate("To be", max_tokens=40, seed=7, temperature=0.9, top_k=20)
    b = lm.generate("To be", max_tokens=40, seed=7, temperature=0.9, top_k=20)
    c = lm.generate("To be", max_tokens=40, seed=8, temperature=0.9, top_k=20)
    assert a == b
    assert a != c


def test_batch_equals_one_at_a_time(lm) -> None:
    batch = lm.sample_many("KING", 4, max_tokens=30, seed=11)
    single = [lm._sampler.stream("KING", SamplingOptions(max_tokens=30, seed=11), num_samples=1, first_index=i) for i in range(4)]
    texts = []
    for generator in single:
        texts.append(next(item for _, item in generator if not isinstance(item, str)).text)
    assert [s.text for s in batch] == texts


def test_stream_equals_full_decode(lm) -> None:
    for seed in range(5):
        pieces = list(lm.stream("", max_tokens=60, seed=seed))
        sample = lm.sample("", max_tokens=60, seed=seed)
        assert "".join(pieces) == sample.text == lm.tokenizer.decode(sample.tokens)


def test_greedy_is_deterministic_without_seed(lm) -> None:
    assert lm.generate("First", max_tokens=25, temperature=0) == lm.generate("First", max_tokens=25, temperature=0)


def test_max_tokens_and_finish_reason(lm) -> None:
    sample = lm.sample("", max_tokens=17, seed=3)
    assert len(sample.tokens) <= 17
    assert sample.finish_reason in (FINISH_LENGTH, "end-of-text")
    assert sample.log_prob < 0


def test_max_chars(lm) -> None:
    sample = lm.sample("", max_tokens=200, max_chars=10, seed=3)
    assert len(sample.text) == 10


def test_stop_string_is_not_printed(lm) -> None:
    base = lm.generate("", max_tokens=80, seed=5)
    stop = base[10:13]
    assert len(stop) == 3
    sample = lm.sample("", max_tokens=80, seed=5, stop=[stop])
    assert sample.finish_reason == FINISH_STOP
    assert sample.text == base[: base.index(stop)]
    assert "".join(lm.stream("", max_tokens=80, seed=5, stop=[stop])) == sample.text


def test_top_k_one_is_greedy(lm) -> None:
    assert lm.generate("A", max_tokens=20, top_k=1, seed=1) == lm.generate("A", max_tokens=20, temperature=0)


def test_generate_batch_one_text_per_prompt(lm) -> None:
    texts = lm.generate_batch(["A", "B", "C"], max_tokens=10, seed=2)
    assert len(texts) == 3


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 1.0},
        {"repetition_penalty": 0.5},
        {"max_tokens": -1},
        {"stop": [""]},
    ],
)
def test_invalid_options(lm, options) -> None:
    with pytest.raises(LstmgenError):
        lm.generate("x", **options)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=0, max_size=4), max_size=30),
    st.lists(st.text(alphabet="ab\n😀é", min_size=1, max_size=3), max_size=2),
)
def test_text_tracker_matches_full_decode(chunks: list[bytes], stops: list[str]) -> None:
    tracker = _TextTracker(stops, None)
    out = "".join(tracker.feed(chunk) for chunk in chunks if tracker.finish is None)
    if tracker.finish is None:
        out += tracker.feed(b"", final=True)
    full = b"".join(chunks).decode("utf-8", errors="replace")
    if stops:
        cut = min((full.find(s) for s in stops if s in full), default=-1)
        expected = full[:cut] if cut >= 0 else full
    else:
        expected = full
    assert out == expected
