"""The exported web page in a real browser (Debian's headless chromium, driven over the DevTools pipe).

For the built-in models and small models of every cell: the page's greedy text equals `lstmgen
sample --temp 0` token for token, its logits are within 1e-4 of lstmgen's, its tokenizer gives
`Tokenizer.encode`'s ids (unigram, BPE and char models, CJK, emoji, tabs, CRLF, U+2581), a seeded
sample is the same after a reload, and the page loads nothing from anywhere. Skipped without chromium.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import lstmgen
from lstmgen.config import TokenizerConfig
from lstmgen.export import export_model
from lstmgen.tokenizer import META, train_tokenizer

from .conftest import SHAKESPEARE, TANG, colour_counts, needs_chromium, read_png
from .export_browser import BrowserError, Chromium
from .test_export import HELD_OUT, PROMPTS, SMALL, needs_builtins, small_bundle
from .test_tokenizer import HARD_CASES

pytestmark = needs_chromium

#: Strings every page's tokenizer must encode as lstmgen does: the round-trip cases and more of the same kind.
EXTRA_CASES = [
    "ROMEO:\r\nWhat light\tthrough yonder\u00a0window breaks?\r\n",
    "  two leading spaces, \t tab then space  ",
    "床前明月光，\r\n疑是地上霜。😀👍🏽 🇫🇷",
    "mixed ▁x ▁ ▁▁ and    runs\n\n\n",
    "\x0b\x0c\x1c\x85 line breaks Python splits on\u2028\u2029",
]


def random_cases(count: int, seed: int) -> list[str]:
    """Deterministic strings mixing the hard parts: pieces of the corpora, whitespace, U+2581, emoji, rare characters."""
    rng = random.Random(seed)
    english = SHAKESPEARE.read_text()[:200_000]
    chinese = TANG.read_text()[:100_000]
    alphabet = [" ", "  ", "\t", "\n", "\r\n", "\r", META, "e\u0301", "😀", "中", "，", "the ", "ing", "<s>", "\x00", "ǂ"]
    cases = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.4:
            cases.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))))
        elif kind < 0.75:
            source = rng.choice([english, chinese])
            start = rng.randrange(len(source) - 300)
            cases.append(source[start : start + rng.randint(1, 300)])
        else:
            ranges = [(32, 0x2FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x80, 0xD7FF)]
            cases.append("".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 20))))
    return cases


CASES = HARD_CASES + EXTRA_CASES + random_cases(150, seed=18)


@pytest.fixture(scope="module")
def browser():
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pages")
    found = {}
    for name in ("shakespeare", "tang"):
        try:
            export_model(name, directory / f"{name}.html")
        except lstmgen.LstmgenError:  # the built-in models are not installed
            continue
        found[name] = directory / f"{name}.html"
    return found


def open_page(browser: Chromium, page: Path, fragment: str = "") -> None:
    browser.open(page.as_uri() + fragment, ready="window.poet.ready")


def check_tokenizer(browser: Chromium, page: Path, tokenizer, documents: str = "file") -> None:
    open_page(browser, page)
    encoded = browser.evaluate(f"{json.dumps(CASES)}.map(t => window.poet.encode(t))")
    for text, ids in zip(CASES, encoded):
        assert ids == tokenizer.encode(text), text
    lines = browser.evaluate(f"{json.dumps(CASES)}.map(t => window.poet.promptIds(t))")
    start = [1, 2] if documents == "blank-line" else [1]
    for text, ids in zip(CASES, lines):  # what the sampler reads: each line of the prompt encoded on its own
        assert ids == start + [i for line in text.splitlines(keepends=True) for i in tokenizer.encode(line)], text
    decoded = browser.evaluate(f"{json.dumps([tokenizer.encode(t) for t in CASES])}.map(ids => window.poet.decode(ids))")
    assert decoded == CASES


# -- the tokenizer -------------------------------------------------------------------------------------


@needs_builtins
@pytest.mark.parametrize("name", ["shakespeare", "tang"])
def test_page_tokenizer_of_the_builtin_models(browser: Chromium, pages: dict[str, Path], name: str) -> None:
    m = lstmgen.load(name)
    check_tokenizer(browser, pages[name], m.tokenizer, m.documents)


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "char"])
def test_page_tokenizer_of_every_model_type(browser: Chromium, tmp_path: Path, model_type: str) -> None:
    for corpus, vocab in ((SHAKESPEARE, 500), (TANG, None)):
        lines = corpus.read_text().splitlines(keepends=True)[:1500]
        tokenizer = train_tokenizer(lines, TokenizerConfig(model_type=model_type, vocab_size=None if model_type == "char" else vocab))
        bundle = small_bundle(tmp_path, "lstm", tokenizer)
        page = tmp_path / f"{model_type}-{corpus.stem}.html"
        export_model(bundle, page)
        check_tokenizer(browser, page, tokenizer)


def test_page_tokenizer_without_a_space_piece(browser: Chromium, tmp_path: Path) -> None:
    tokenizer = train_tokenizer(["abcabc\n", "xyzxyz\n"] * 50, TokenizerConfig())
    assert "▁" not in [tokenizer.piece(i) for i in range(tokenizer.vocab_size)]  # so spaces are escaped as bytes
    bundle = small_bundle(tmp_path, "gru", tokenizer)
    export_model(bundle, tmp_path / "page.html")
    check_tokenizer(browser, tmp_path / "page.html", tokenizer)


# -- the model -----------------------------------------------------------------------------------------


@needs_builtins
@pytest.mark.parametrize("name", ["shakespeare", "tang"])
def test_page_greedy_text_equals_lstmgen_sample(browser: Chromium, pages: dict[str, Path], fast_cli, name: str) -> None:
    m = lstmgen.load(name)
    open_page(browser, pages[name])
    for prompt in PROMPTS[name]:
        result = fast_cli("sample", "-m", name, "--prompt", prompt, "--temp", "0", "--max-tokens", "120", "--format", "jsonl")
        assert result.returncode == 0, result.stderr
        expected = json.loads(result.stdout)
        tokens = m.sample(prompt, temperature=0, max_tokens=120).tokens  # the same sampler, with its token ids
        got = browser.evaluate(f"window.poet.greedy({json.dumps(prompt)}, 120)")
        assert got["ids"] == tokens, prompt
        assert got["text"] == expected["text"] and got["finish"] == expected["finish_reason"], prompt


@needs_builtins
def test_page_logits_are_lstmgens(browser: Chromium, pages: dict[str, Path]) -> None:
    m = lstmgen.load("shakespeare")
    ids = [1] + m.tokenizer.encode(HELD_OUT["shakespeare"][:400])
    open_page(browser, pages["shakespeare"])
    got = np.array(browser.evaluate(f"window.poet.logits({json.dumps(ids)})"))
    with torch.no_grad():
        want = m.model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("cell", list(SMALL))
def test_page_of_every_cell_writes_lstmgens_greedy_text(browser: Chromium, tmp_path: Path, tokenizer, cell: str) -> None:
    bundle = small_bundle(tmp_path, cell, tokenizer, seed=3)
    page = tmp_path / f"{cell}.html"
    export_model(bundle, page, weights="float32")  # the bundle's own float32 values (float16 would round them)
    m = lstmgen.load(str(bundle))
    open_page(browser, page)
    for prompt in ("ROMEO:", "", "Thou art\r\n\tthe "):
        expected = m.sample(prompt, temperature=0, max_tokens=80)
        got = browser.evaluate(f"window.poet.greedy({json.dumps(prompt)}, 80)")
        assert got["ids"] == expected.tokens and got["text"] == expected.text, prompt
    ids = [1] + m.tokenizer.encode(HELD_OUT["shakespeare"][:300])
    with torch.no_grad():
        want = m.model(torch.tensor([ids]))[0][0].numpy()
    assert np.abs(np.array(browser.evaluate(f"window.poet.logits({json.dumps(ids)})")) - want).max() < 1e-4


def test_int8_page_generates_close_to_the_float_model(browser: Chromium, tmp_path: Path, tokenizer) -> None:
    bundle = small_bundle(tmp_path, "lstm", tokenizer)
    export_model(bundle, tmp_path / "int8.html", weights="int8")
    open_page(browser, tmp_path / "int8.html")
    m = lstmgen.load(str(bundle))
    ids = [1] + m.tokenizer.encode("ROMEO: what light")
    with torch.no_grad():
        want = m.model(torch.tensor([ids]))[0][0].numpy()
    got = np.array(browser.evaluate(f"window.poet.logits({json.dumps(ids)})"))
    assert 0 < np.abs(got - want).max() < 0.1 * np.abs(want).max()
    assert browser.evaluate("window.poet.greedy('ROMEO:', 20)")["ids"]


# -- the page ------------------------------------------------------------------------------------------


def generate_in_page(browser: Chromium) -> dict:
    """Press Generate and wait for the text to finish streaming: the page's own output and status line."""
    browser.evaluate("window.poet.clickGenerate()")
    return browser.evaluate(
        "({text: document.getElementById('output').textContent, finish: document.getElementById('output').dataset.finish,"
        " status: document.getElementById('status').textContent, seed: document.getElementById('seed').value})"
    )


@needs_builtins
def test_seeded_sample_is_the_same_after_a_reload(browser: Chromium, pages: dict[str, Path]) -> None:
    fragment = "#prompt=ROMEO%3A&temp=0.9&top-k=40&top-p=0.95&seed=42&max-tokens=60"
    open_page(browser, pages["shakespeare"], fragment)
    first = generate_in_page(browser)
    assert first["text"].startswith("ROMEO:") and len(first["text"]) > 60 and first["finish"] == "length"
    assert "60 tokens" in first["status"] and "seed 42" in first["status"]
    browser.reload(ready="window.poet.ready")
    assert browser.evaluate("document.getElementById('output').textContent") == ""
    again = generate_in_page(browser)
    assert (again["text"], again["finish"], again["seed"]) == (first["text"], first["finish"], "42")
    # Another seed, another text; the programmatic sampler agrees with itself too.
    open_page(browser, pages["shakespeare"], fragment.replace("seed=42", "seed=43"))
    assert generate_in_page(browser)["text"] != first["text"]
    options = "{temperature: 0.9, topK: 40, topP: 0.95, seed: 7, maxTokens: 50}"
    again = browser.evaluate(f"[window.poet.generate('ROMEO:', {options}), window.poet.generate('ROMEO:', {options})]")
    assert again[0] == again[1] and again[0]["ids"]


@needs_builtins
def test_page_streams_until_end_of_text_and_shows_the_model(browser: Chromium, pages: dict[str, Path], tmp_path: Path) -> None:
    open_page(browser, pages["tang"], "#prompt=%E5%BA%8A%E5%89%8D%E6%98%8E%E6%9C%88%E5%85%89&temp=0&max-tokens=200")
    shown = generate_in_page(browser)
    expected = lstmgen.load("tang").sample("床前明月光", temperature=0, max_tokens=200)
    assert shown["text"] == "床前明月光" + expected.text and shown["finish"] == "end-of-text" == expected.finish_reason
    about = browser.evaluate("document.querySelector('.about').textContent")
    assert "2×384 LSTM" in about and "blank-line documents" in about and "exactly the bundle's float16 values" in about
    # Nothing was loaded from anywhere, and the page's policy refuses any request.
    assert browser.evaluate("performance.getEntriesByType('resource').length") == 0
    assert browser.evaluate("fetch('https://example.com/').then(() => 'sent', () => 'refused')") == "refused"
    shot = tmp_path / "page.png"
    browser.screenshot(shot)
    width, height, rows = read_png(shot)
    assert (width, height) == (1000, 760)
    counts = colour_counts(rows)
    assert len(counts) > 30 and max(counts.values()) < 0.95 * sum(counts.values())  # text and controls were drawn


# -- poems (the page's share of `lstmgen sample --form/--acrostic`) -----------------------------------------

POEM_LINE = {5: re.compile(r"^[\u3400-\u9fff]{5}，[\u3400-\u9fff]{5}。$"), 7: re.compile(r"^[\u3400-\u9fff]{7}，[\u3400-\u9fff]{7}。$")}


def poem_shape(text: str, verses: int, length: int, acrostic: str = "") -> bool:
    """A title line, then lines of two verses `X，X。`, each verse `length` Han characters, ending with a line break."""
    lines = text.split("\n")
    body = lines[1:-1]
    starts = [verse[0] for line in body for verse in line.rstrip("。").split("，")]
    return (
        text.endswith("\n") and lines[-1] == "" and bool(lines[0]) and len(body) * 2 == verses
        and all(POEM_LINE[length].match(line) for line in body) and "".join(starts).startswith(acrostic)
    )


@needs_builtins
def test_page_writes_poems_of_a_form(browser: Chromium, pages: dict[str, Path]) -> None:
    open_page(browser, pages["tang"])
    assert browser.evaluate("document.getElementById('poem').hidden") is False
    cases = [("五言绝句", "", 4, 5), ("七言绝句", "春夏", 4, 7), ("五言律诗", "", 8, 5), ("七言律诗", "春夏秋冬", 8, 7)]
    for seed, (form, acrostic, verses, length) in enumerate(cases):
        options = json.dumps({"form": form, "acrostic": acrostic, "temperature": 0.9, "seed": seed}, ensure_ascii=False)
        got = browser.evaluate(f"window.poet.generate('', {options})")
        assert got["finish"] == "end-of-text" and poem_shape(got["text"], verses, length, acrostic), (form, got["text"])
    # An acrostic alone sets the number of verses; the first verse sets their length.
    got = browser.evaluate("window.poet.generate('', {acrostic: '明月', temperature: 0})")
    assert poem_shape(got["text"], 2, len(got["text"].split("\n")[1].split("，")[0]), "明月")
    # A prompt is the poem's beginning; one that does not fit is refused, as are acrostics the model cannot write.
    got = browser.evaluate("window.poet.generate('静夜思\\n床前明月光，', {form: '五言绝句', temperature: 0})")
    assert poem_shape("静夜思\n床前明月光，" + got["text"], 4, 5)
    for prompt, options, message in [
        ("hello", "{form: '五言绝句'}", "does not fit"),
        ("", "{form: '五言绝句', acrostic: '春夏秋冬天'}", "has 5 characters"),
        ("", "{acrostic: 'ab'}", "must be Chinese characters"),
        ("", "{form: '词'}", "unknown form"),
    ]:
        with pytest.raises(BrowserError, match=message):
            browser.evaluate(f"window.poet.generate({json.dumps(prompt)}, {options})")
    # Not for other models.
    open_page(browser, pages["shakespeare"])
    assert browser.evaluate("document.getElementById('poem').hidden") is True
    with pytest.raises(BrowserError, match="for Chinese models"):
        browser.evaluate("window.poet.generate('', {form: '五言绝句'})")


@needs_builtins
def test_page_poems_follow_lstmgen_sample_form(browser: Chromium, pages: dict[str, Path], fast_cli) -> None:
    """Where `lstmgen sample` has --form/--acrostic (issue 17), the page's greedy poem is the same."""
    from lstmgen.config import SamplingOptions

    if "form" not in {f.name for f in dataclasses.fields(SamplingOptions)}:
        pytest.skip("lstmgen sample has no --form here")
    open_page(browser, pages["tang"])
    for flags, options in [(["--form", "五言绝句"], "{form: '五言绝句', temperature: 0}"), (["--acrostic", "明月"], "{acrostic: '明月', temperature: 0}")]:
        result = fast_cli("sample", "-m", "tang", "--temp", "0", "--format", "jsonl", *flags)
        assert result.returncode == 0, result.stderr
        assert browser.evaluate(f"window.poet.generate('', {options})")["text"] == json.loads(result.stdout)["text"]
