"""Poems on demand (issue 17): constraints applied while sampling give only valid poems, reproducibly, and every
request that cannot be met is refused in one line before any generation."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

import lstmgen
from lstmgen.config import SamplingOptions
from lstmgen.constraints import TokenConstraint
from lstmgen.errors import LstmgenError
from lstmgen.poetry import (
    ChinesePoem,
    EnglishLines,
    check_chinese,
    check_english,
    chinese_rhymes,
    chinese_tones,
    end_words,
    reading,
)

from .conftest import ROOT, cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from tang_form import well_formed  # noqa: E402

ACROSTICS = {"wujue": "春花秋月", "qijue": "春眠不觉", "wulv": "一二三四五六七八", "qilv": "春眠不觉处处闻啼"}


@pytest.fixture(scope="module")
def tang():
    return lstmgen.load("tang")


@pytest.fixture(scope="module")
def shakespeare():
    return lstmgen.load("shakespeare")


def valid(text: str, form: str | None, acrostic: str, rhyme: bool, tones: bool) -> bool:
    return (
        check_chinese(text, form, acrostic)
        and well_formed(text)
        and (not rhyme or chinese_rhymes(text))
        and (not tones or chinese_tones(text))
    )


@pytest.mark.parametrize("form", list(ACROSTICS))
def test_every_form_acrostic_and_rhyme_combination_gives_only_valid_poems(tang, form: str) -> None:
    """Form × acrostic × rhyme (tones with both), 5 samples each, each its own seed ((seed, index))."""
    for acrostic in ("", ACROSTICS[form]):
        for rhyme in (False, True):
            tones = rhyme and bool(acrostic)
            samples = tang.sample_many(
                "", 5, form=form, acrostic=acrostic or None, rhyme=rhyme, tones=tones, temperature=0.9, seed=17
            )
            for sample in samples:
                assert sample.finish_reason == "end-of-text"
                assert valid(sample.text, form, acrostic, rhyme, tones), (form, acrostic, rhyme, tones, sample.text)
                assert "\ufffd" not in sample.text


def test_tones_alone_and_an_acrostic_without_a_form(tang) -> None:
    for sample in tang.sample_many("", 4, form="qilv", tones=True, temperature=1.0, seed=3):
        assert valid(sample.text, "qilv", "", False, True), sample.text
    # Without a form the acrostic sets the number of verses; the first verse picks 5 or 7 characters.
    for sample in tang.sample_many("", 4, acrostic="明月别枝惊鹊", rhyme=True, temperature=1.0, seed=4):
        assert check_chinese(sample.text, None, "明月别枝惊鹊") and chinese_rhymes(sample.text), sample.text
    for sample in tang.sample_many("", 3, acrostic="山水清", temperature=1.0, seed=5):  # an odd number of verses
        assert check_chinese(sample.text, None, "山水清"), sample.text


def test_constraints_compose_with_the_other_controls(tang) -> None:
    controls = [
        {"top_k": 5},
        {"top_p": 0.5},
        {"min_p": 0.2},
        {"repetition_penalty": 1.5, "repetition_window": 16},
        {"temperature": 0},
        {"temperature": 2.0},
    ]
    for extra in controls:
        options = {"temperature": 0.8, **extra}
        for sample in tang.sample_many("", 2, form="wujue", acrostic="风花雪月", rhyme=True, tones=True, seed=9, **options):
            assert valid(sample.text, "wujue", "风花雪月", True, True), (extra, sample.text)


def test_a_prompt_is_the_poems_beginning(tang) -> None:
    text = tang.generate("春晓\n春眠不觉晓，", form="wujue", rhyme=True, seed=2, temperature=0.8)
    assert valid("春晓\n春眠不觉晓，" + text, "wujue", "", True, False)
    batch = tang.generate_batch(["春晓\n", "秋思"], form="qijue", seed=2, temperature=0.8)
    assert check_chinese("春晓\n" + batch[0], "qijue") and check_chinese("秋思" + batch[1], "qijue")


def test_same_seed_same_poem_alone_or_in_a_batch(tang) -> None:
    options = {"form": "qijue", "acrostic": "春眠不觉", "rhyme": True, "tones": True, "temperature": 0.9}
    batch = tang.sample_many("", 4, seed=21, **options)
    for index in (0, 3):
        alone = tang._sampler.stream("", SamplingOptions(seed=21, **options), num_samples=1, first_index=index)
        assert next(item for _, item in alone if not isinstance(item, str)).text == batch[index].text
    assert tang.generate(seed=21, **options) == batch[0].text
    assert len({s.text for s in batch}) == 4


def test_backtracking_keeps_poems_valid_and_reproducible(tang, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a threshold no step meets, every sample spends its whole backtracking budget: still valid, still
    the same text whether drawn alone or in a batch, and the streamed pieces add up to the text."""
    import lstmgen.sampling as sampling

    monkeypatch.setattr(sampling, "BACKTRACK_BELOW", 1.0)
    options = {"form": "wujue", "rhyme": True, "temperature": 0.9, "repetition_penalty": 1.2}
    batch = tang.sample_many("", 3, seed=5, **options)
    for sample in batch:
        assert valid(sample.text, "wujue", "", True, False), sample.text
    alone = tang._sampler.stream("", SamplingOptions(seed=5, **options), num_samples=1, first_index=2)
    pieces = []
    for _, item in alone:
        if isinstance(item, str):
            pieces.append(item)
        else:
            assert item.text == batch[2].text == "".join(pieces)


def test_the_command_line_streams_reproducible_poems_as_text_and_jsonl() -> None:
    args = ("sample", "-m", "tang", "--form", "七言绝句", "--acrostic", "春眠不觉", "--rhyme", "--seed", "1", "-n", "2")
    text, jsonl = cli(*args), cli(*args, "--format", "jsonl")
    assert text.returncode == 0 and jsonl.returncode == 0, text.stderr + jsonl.stderr
    poems = text.stdout.strip("\n").split("\n\n")
    assert len(poems) == 2 and all(valid(p, "qijue", "春眠不觉", True, False) for p in poems)
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1] and all(r["finish_reason"] == "end-of-text" for r in records)
    assert [r["text"].strip("\n") for r in records] == poems  # the same seed, the same poems, in either format


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--form", "qijue", "--acrostic", "春眠不觉晓"), "--acrostic has 5 characters but a 七言绝句 has 4 verses"),
        (("--form", "wujue", "--acrostic", "春龘"), "龘 is not in the model's vocabulary"),
        (("--form", "wujue", "--acrostic", "ab"), "--acrostic must be Chinese characters"),
        (("--tones",), "--tones needs --form"),
        (("--rhyme",), "--rhyme needs --form or --acrostic"),
        (("--acrostic", "春眠", "--rhyme"), "--rhyme needs at least four verses"),
        (("--form", "qijue", "--rhyme-scheme", "ABAB"), "--rhyme-scheme is for English models"),
        (("--form", "sonnet"), "--form must be one of 五言绝句 (wujue)"),
        (("--form", "qijue", "--stop", "。"), "--stop could cut a poem short"),
        (("--form", "qijue", "--max-chars", "20"), "--max-chars could cut a poem short"),
        (("--form", "qilv", "--max-tokens", "40"), "--max-tokens 40 is too few for this poem: it needs at least 71"),
        (("--form", "wujue", "--prompt", "春晓\n春眠不觉晓晓"), "the prompt does not fit the poem asked for"),
        (("--rhyme-scheme", "ABCD"), "--rhyme-scheme must be capital letters"),
        (("-m", "shakespeare", "--form", "wujue"), "--form names Chinese forms"),
        (("-m", "shakespeare", "--tones", "--form", "wujue"), "--form names Chinese forms"),
        (("-m", "shakespeare", "--acrostic", "LOVE", "--rhyme-scheme", "AABBCC"), "--acrostic gives 4 lines but"),
        (("-m", "shakespeare", "--acrostic", "L0VE"), "takes letters or words"),
    ],
)
def test_requests_that_cannot_be_met_are_refused_before_generating(args: tuple[str, ...], message: str) -> None:
    model = () if "-m" in args else ("-m", "tang")
    result = cli("sample", *model, *args, "--seed", "1")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr, result.stderr


def test_python_errors_name_keywords(tang) -> None:
    with pytest.raises(LstmgenError, match="tones=True needs form"):
        tang.generate(tones=True)
    with pytest.raises(LstmgenError, match="acrostic has 9 characters but a 七言律诗 has 8 verses"):
        tang.generate(form="qilv", acrostic="一二三四五六七八九")


def test_a_missing_poetry_extra_is_one_line() -> None:
    code = (
        "import sys; sys.modules['pypinyin'] = None\n"
        "import lstmgen\n"
        "from lstmgen.errors import LstmgenError\n"
        "try:\n    lstmgen.load('tang').generate(form='wujue', rhyme=True)\n"
        "except LstmgenError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "rhyme=True needs the pypinyin package: pip install 'lstmgen[poetry]'" in done.stdout, done.stderr


# -- the mechanism, without a model: random walks over the allowed tokens -----------------------------------


def walk(constraint: TokenConstraint, prompt: str, budget: int, rng: random.Random) -> list[int]:
    """Pick uniformly among the allowed tokens until end-of-text: the mask must never be empty."""
    cursor, tokens = constraint.start(prompt), []
    assert constraint.remaining(cursor) <= budget
    while True:
        mask = constraint.mask(cursor, budget - len(tokens))
        allowed = mask.nonzero().flatten().tolist()
        assert allowed, f"dead end after {tokens}"
        token = rng.choice(allowed)
        if token == constraint.eos_id:
            assert constraint.finished(cursor)
            return tokens
        tokens.append(token)
        cursor = constraint.advance(cursor, token)


def test_byte_fallback_pieces_spell_whole_characters_that_fit(tokenizer) -> None:
    """An English tokenizer has no Han pieces: a Chinese poem must be spelled in byte pieces, each character
    whole (no U+FFFD) and fitting the form, rhyme and tones, even with a tight token budget."""
    rng = random.Random(0)
    machine = ChinesePoem(4, 5, "春", rhyme=True, tones=True)
    constraint = TokenConstraint(machine, tokenizer)
    assert machine.cost == 4  # characters cost up to 4 byte pieces each
    for budget in (400, constraint.remaining(constraint.start("")) + 2):
        for _ in range(3):
            tokens = walk(constraint, "", budget, rng)
            text = tokenizer.decode(tokens)
            assert len(tokens) < budget and "\ufffd" not in text
            assert valid(text, "wujue", "春", True, True), text


def test_multi_character_pieces_are_fed_whole(tokenizer) -> None:
    """A subword vocabulary (pieces like `▁the`): every allowed piece fits, acrostic words, letters and rhymes."""
    rng = random.Random(1)
    for units, scheme in ((["to", "be", "or"], ""), (list("LOVE"), "ABAB"), ([], "AABB")):
        count = len(units) or len(scheme)
        machine = EnglishLines(count, units, scheme, 40, end_words(tokenizer) if scheme else None)
        constraint = TokenConstraint(machine, tokenizer)
        assert constraint.multi, "the test tokenizer has multi-character pieces"
        for prompt in ("", "ROMEO:"):
            for _ in range(3):
                text = tokenizer.decode(walk(constraint, prompt, 400, rng))
                lines = text.split("\n")
                assert len(lines) == count + 1 + (1 if prompt else 0) and lines[-1] == "", text
                acrostic = " ".join(units) if any(len(u) > 1 for u in units) else "".join(units)
                assert check_english(text, acrostic, scheme, lead=bool(prompt)), text


def test_the_vectorised_masks_agree_with_the_machine(tang) -> None:
    """ChinesePoem.char_mask answers for every single-character piece what feed answers one by one."""
    rng = random.Random(2)
    constraint = tang._sampler.constraint(SamplingOptions(form="qilv", acrostic="春花", rhyme=True, tones=True))
    assert constraint is not None
    machine = constraint.machine
    cursor = constraint.start("")
    for _ in range(60):
        fast = machine.char_mask(cursor.state)
        slow = [machine.feed(cursor.state, c) is not None for c in constraint.single_chars]
        assert fast.tolist() == slow
        allowed = constraint.mask(cursor, 500).nonzero().flatten().tolist()
        token = rng.choice(allowed)
        if token == constraint.eos_id:
            break
        cursor = constraint.advance(cursor, token)


def test_rhyme_groups_and_tones_follow_the_documented_standard() -> None:
    # 中华新韵: 东/通 庚, 知/吃 支 (apical -i), 衣/鱼/儿 齐, 花 麻, 歌/波 波; tones 1-2 level, 3-4 oblique.
    group = {c: reading(c)[1] for c in "东通知吃衣鱼儿花歌波"}
    assert group["东"] == group["通"] and group["知"] == group["吃"] and group["衣"] == group["鱼"] == group["儿"]
    assert group["知"] != group["衣"] and group["歌"] == group["波"] and len(set(group.values())) == 5
    assert [reading(c)[0] for c in "天平好去白"] == [1, 1, 2, 2, 1]  # 白: an entering tone, level in Mandarin
    assert check_chinese("登鹳雀楼\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n", "wujue")
    assert chinese_tones("登鹳雀楼\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n")
    assert chinese_rhymes("登鹳雀楼\n白日依山尽，黄河入海流。\n欲穷千里目，更上一层楼。\n")
    assert check_english("Bright day\nNight may\n", "BN", "AA") and not check_english("Bright day\nNight sun\n", "", "AA")


def test_english_acrostics_and_rhymes_with_the_shakespeare_model(shakespeare) -> None:
    for sample in shakespeare.sample_many("ROMEO:\n", 2, acrostic="ROSE", rhyme_scheme="ABAB", temperature=0.8, seed=1):
        assert sample.finish_reason == "end-of-text"
        assert check_english(sample.text, "ROSE", "ABAB"), sample.text
    for sample in shakespeare.sample_many("KING", 1, acrostic="to be or", temperature=0.8, seed=2):
        assert check_english(sample.text, "to be or", "", lead=True), sample.text


@pytest.mark.parametrize("scheme", ["", "ABAB"])
def test_cached_english_masks_equal_masks_computed_afresh(shakespeare, scheme: str) -> None:
    """Masks are cached by the machine's key (far from a line's end: not the line's text) and the budget's slack:
    along random walks, with roomy and tight budgets, a cached mask is always the one computed from the state."""
    rng = random.Random(3)
    tokenizer = shakespeare.tokenizer
    rhymes = end_words(tokenizer) if scheme else None
    cached = TokenConstraint(EnglishLines(4, list("LOVE"), scheme, 30, rhymes), tokenizer)
    fresh = TokenConstraint(EnglishLines(4, list("LOVE"), scheme, 30, rhymes), tokenizer)
    for budget in (400, cached.remaining(cached.start("")) + 3):
        for _ in range(3):
            cursor, left = cached.start(""), budget
            while True:
                fresh._cache.clear()
                mask = cached.mask(cursor, left)
                assert torch.equal(mask, fresh.mask(cursor, left))
                token = rng.choice(mask.nonzero().flatten().tolist())
                if token == cached.eos_id:
                    break
                cursor, left = cached.advance(cursor, token), left - 1
    assert len(cached._cache) < 200  # far from a line's end the masks are shared
