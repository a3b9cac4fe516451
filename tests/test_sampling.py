"""Generation: controls, exact streaming, reproducibility."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
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


# -- filters, draws and the repetition penalty, against plain reference implementations ------------------

import math  # noqa: E402

import torch  # noqa: E402

from lstmgen.sampling import _candidates, _choose, _RecentTokens, _Uniforms  # noqa: E402


def _reference_keep(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Which tokens survive temperature, top-k, top-p and min-p: full-vocabulary masks and a full sort."""
    logits = logits / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = torch.cumsum(probs, dim=-1) - probs >= options.top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), -math.inf)
    if options.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < probs.max(dim=-1, keepdim=True).values * options.min_p, -math.inf)
    return torch.isfinite(logits)


def _kept(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    values, ids = _candidates(logits / options.temperature, options)
    keep = torch.zeros_like(logits, dtype=torch.bool)
    if ids is None:
        return torch.isfinite(values)
    return keep.scatter_(1, ids, torch.isfinite(values))


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    vocab=st.integers(2, 700),
    rows=st.integers(1, 4),
    spread=st.sampled_from([0.1, 1.0, 4.0, 12.0]),
    temperature=st.sampled_from([0.3, 1.0, 2.5]),
    top_k=st.sampled_from([0, 1, 3, 40, 1000]),
    top_p=st.sampled_from([1.0, 0.999, 0.9, 0.5, 0.01]),
    min_p=st.sampled_from([0.0, 0.01, 0.2, 0.9]),
)
def test_filters_keep_exactly_the_reference_set(seed, vocab, rows, spread, temperature, top_k, top_p, min_p) -> None:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=generator) * spread
    logits[:, 0] = -math.inf  # a banned token is never kept
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    assert torch.equal(_kept(logits, options), _reference_keep(logits, options))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), top_k=st.sampled_from([0, 2, 5]), top_p=st.sampled_from([1.0, 0.7]), temperature=st.sampled_from([0.5, 1.0]))
def test_draws_stay_inside_the_kept_set(seed, top_k, top_p, temperature) -> None:
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(seed)) * 3
    logits[:, :2] = -math.inf
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    uniforms = _Uniforms(seed, 0, 8)
    keep = _reference_keep(logits, options)
    for _ in range(20):
        picks = _choose(logits, options, uniforms)
        assert keep.gather(1, picks[:, None]).all()


def test_draws_follow_the_distribution() -> None:
    """4,000 draws (one per sample generator) match softmax(logits / T) within 4.5 standard errors."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -math.inf, 1.5]])
    draws = 4000
    options = SamplingOptions(temperature=0.8, seed=11)
    picks = _choose(logits.expand(draws, -1).contiguous(), options, _Uniforms(11, 0, draws))
    expected = torch.softmax(logits[0] / 0.8, dim=0)
    counts = torch.bincount(picks, minlength=7).double() / draws
    assert counts[5] == 0
    tolerance = 4.5 * torch.sqrt(expected.double() * (1 - expected.double()) / draws) + 1e-9
    assert ((counts - expected.double()).abs() <= tolerance).all(), (counts, expected)


def test_top_p_widens_beyond_the_first_candidates() -> None:
    # A nearly flat distribution over 1,000 tokens: the nucleus (top_p 0.9) holds ~900 of them.
    logits = torch.randn(2, 1000, generator=torch.Generator().manual_seed(0)) * 0.01
    options = SamplingOptions(top_p=0.9)
    assert 880 <= int(_kept(logits, options)[0].sum()) <= 920
    assert torch.equal(_kept(logits, options), _reference_keep(logits, options))


def _reference_penalty(logits: torch.Tensor, history: list[list[int]], penalty: float, window: int) -> torch.Tensor:
    logits = logits.clone()
    for row, tokens in enumerate(history):
        recent = torch.tensor(sorted(set(tokens[-window:])), dtype=torch.long)
        if len(recent):
            values = logits[row, recent]
            logits[row, recent] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


@settings(max_examples=100, deadline=None)
@given(
    histories=st.lists(st.lists(st.integers(0, 29), max_size=12), min_size=1, max_size=3),
    pushes=st.lists(st.integers(0, 29), max_size=20),
    window=st.integers(1, 10),
    penalty=st.sampled_from([1.1, 2.0, 7.5]),
)
def test_repetition_penalty_matches_reference(histories, pushes, window, penalty) -> None:
    logits = torch.linspace(-3, 3, 30).repeat(len(histories), 1)
    recent = _RecentTokens(histories, window, 30, torch.device("cpu"))
    histories = [list(h) for h in histories]
    for token in [None, *pushes]:
        if token is not None:
            recent.push(torch.full((len(histories),), token))
            for h in histories:
                h.append(token)
        assert torch.equal(recent.penalize(logits, penalty), _reference_penalty(logits, histories, penalty, window))


def test_uniforms_do_not_depend_on_the_batch() -> None:
    together = _Uniforms(5, 0, 3)
    columns = [together.take()[:, 0] for _ in range(70)]
    together.select([2])
    later = [together.take()[0, 0] for _ in range(70)]
    alone = _Uniforms(5, 2, 1)
    sequence = [alone.take()[0, 0] for _ in range(140)]
    assert [c[2] for c in columns] + later == sequence


def test_repetition_penalty_discourages_repeats(lm) -> None:
    plain = lm.sample("", max_tokens=80, temperature=0)
    strict = lm.sample("", max_tokens=80, temperature=0, repetition_penalty=50.0, repetition_window=8)

    def repeats(tokens: list[int], window: int = 8) -> int:
        return sum(tokens[i] in tokens[max(0, i - window) : i] for i in range(len(tokens)))

    assert repeats(strict.tokens) < repeats(plain.tokens)


def test_greedy_ignores_the_seed(lm) -> None:
    assert lm.generate("KING", max_tokens=20, temperature=0, seed=1) == lm.generate("KING", max_tokens=20, temperature=0, seed=2)


@pytest.mark.parametrize("max_chars", [0, 1, 7])
def test_max_chars_counts_characters_not_tokens(lm, max_chars: int) -> None:
    sample = lm.sample("", max_tokens=200, max_chars=max_chars, seed=4)
    assert len(sample.text) == max_chars and sample.finish_reason == FINISH_LENGTH


def test_max_tokens_zero_generates_nothing(lm) -> None:
    sample = lm.sample("ROMEO:", max_tokens=0)
    assert (sample.text, sample.tokens, sample.finish_reason) == ("", [], FINISH_LENGTH)


def test_options_alias_and_unknown_names(lm) -> None:
    assert lm.generate("A", max_tokens=10, temp=0) == lm.generate("A", max_tokens=10, temperature=0)
    with pytest.raises(LstmgenError, match="unknown sampling option top_q"):
        lm.generate("A", top_q=0.5)


def test_many_samples_are_generated_in_bounded_batches(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-n 65536` once took 13 GB: samples now go through in batches of SAMPLES_PER_BATCH rows, with the same texts."""
    import lstmgen.sampling as sampling

    lm = lstmgen.load(tiny_bundle)
    whole = [s.text for s in lm.sample_many("KING", 10, max_tokens=12, seed=7)]
    rows: list[int] = []
    step = lm._sampler.stepper.step
    monkeypatch.setattr(lm._sampler.stepper, "step", lambda tokens, state: (rows.append(len(tokens)), step(tokens, state))[1])
    monkeypatch.setattr(sampling, "SAMPLES_PER_BATCH", 4)
    batched = [s.text for s in lm.sample_many("KING", 10, max_tokens=12, seed=7)]
    assert batched == whole
    assert rows and max(rows) <= 4
