"""The quality suite measures what it says: lstmgen's own held-out text, words as the literature counts them,
recall from the right state, and only the cells that are missing."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("quality", None)


def wikitext(name: str) -> Path:
    """A WikiText-2 file where the suite finds the corpora (skip where they are not)."""
    base = Path(os.environ.get("LSTMGEN_CORPORA", ROOT.parent / "shared" / "corpora"))
    path = base / "wikitext-2" / name
    if not path.exists():
        pytest.skip(f"{path} is not here")
    return path


# -- held-out text ------------------------------------------------------------------------------


def test_split_is_lstmgens_own(quality, small_corpus: Path, tmp_path: Path) -> None:
    """Split.of cuts exactly where `lstmgen tokenize` puts its validation split."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lstmgen",
            "-q",
            "tokenize",
            str(small_corpus),
            "-o",
            str(tmp_path / "tok"),
            "--vocab-size",
            "400",
        ],
        check=True,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.DEVNULL,
    )
    meta = json.loads((tmp_path / "tok" / "tokens.json").read_text())
    split = quality.Split.of(small_corpus)
    assert split.train_text + split.val_text == small_corpus.read_text()
    assert len(split.val_text) == meta["split"]["val_chars"]
    assert len(split.train_text.encode()) == meta["split"]["train_bytes"]


def test_cut_corpora_are_whole_lines(quality, tmp_path: Path) -> None:
    source = tmp_path / "corpora"
    (source / "wikitext-2").mkdir(parents=True)
    for name in ("train", "valid", "test"):
        (source / "wikitext-2" / f"{name}.txt").write_text("".join(f" {name} line {i} \n" for i in range(200)))
    spec = next(s for s in quality.SUITE if s.name == "wikitext-2")
    files = quality.corpus_files(spec, tmp_path / "work", source, 1000)
    train, test = files.train.read_text(), files.test.read_text()
    assert (
        900 < len(train) <= 1000
        and train.endswith("\n")
        and (source / "wikitext-2" / "train.txt").read_text().startswith(train)
    )
    assert 0 < len(test) <= 100 and test.endswith("\n")
    memory = next(s for s in quality.SUITE if s.name == "memory")
    text = quality.corpus_files(memory, tmp_path / "work", source, 5000).train.read_text()
    # About 5,000 characters (a whole number of lines of random length), every line one `K<spaces>:K`.
    assert 2000 < len(text) < 8000 and len(quality.memory_lines(text)) == text.count("\n") == int(
        5000 / (quality.compare_cells.mean_gap() + 4)
    )


# -- words and per-word perplexity --------------------------------------------------------------


def test_wikitext_test_has_the_literatures_word_count(quality) -> None:
    """245,569 words with one <eos> per line, and the words spell the text exactly (so a word model's NLL is the text's)."""
    text = wikitext("test.txt").read_text(encoding="utf-8")
    assert quality.word_count(text) == quality.WIKITEXT_TEST_WORDS == 245_569
    for line in text.splitlines(keepends=True):
        words = line.split()
        assert line == (" " + " ".join(words) + " \n" if words else " \n")


def test_word_count_and_perplexity_conversion(quality, tokenizer) -> None:
    assert quality.word_count("a b c\n\n d e \n") == 3 + 1 + 1 + 2 + 1
    assert quality.word_count("no final newline") == 4
    # A model spending ln(100) nats per word has per-word perplexity 100, however it cuts the text.
    assert quality.per_word_perplexity(7 * math.log(100), 7) == pytest.approx(100)
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    words = quality.word_count(text)
    per_token = 0.9
    result = quality.score(lambda tokens: per_token * (len(tokens) - 1), tokenizer, text, words=words)
    assert result["test_words"] == words == 12
    assert result["word_perplexity"] == pytest.approx(math.exp(per_token * result["val_tokens"] / words))
    assert result["nll_nats"] / result["val_chars"] == pytest.approx(result["nats_per_char"])
    assert result["bits_per_char"] == pytest.approx(result["nats_per_char"] / math.log(2))
    assert "word_perplexity" not in quality.score(lambda tokens: 1.0, tokenizer, text)


def test_word_vocabulary_is_closed_with_eos_per_line(quality) -> None:
    vocabulary = quality.WordVocabulary.of_text(" the cat \n \n the <unk> sat \n")
    assert vocabulary.words == ["the", "cat", "<eos>", "<unk>", "sat"]
    assert vocabulary.encode(" the cat \n \n sat the \n").tolist() == [0, 1, 2, 2, 4, 0, 2]
    with pytest.raises(SystemExit, match="dog"):
        vocabulary.encode(" the dog \n")


def test_wikitext_vocabulary_is_the_standard_one(quality) -> None:
    vocabulary = quality.WordVocabulary.of_text(wikitext("train.txt").read_text(encoding="utf-8"))
    assert len(vocabulary) == quality.WIKITEXT_VOCABULARY == 33_278
    assert len(vocabulary.encode(wikitext("test.txt").read_text(encoding="utf-8"))) == 245_569


def test_word_score_predicts_every_word_once_from_an_eos(quality) -> None:
    torch.manual_seed(0)
    vocabulary = quality.WordVocabulary.of_text(" a b c \n d \n")
    model = quality.ClassicLSTM(len(vocabulary), 8, 8, 2, 0.0).eval()
    text = " a b \n c d a \n \n"
    result = quality.word_score(model, vocabulary, text, "cpu")
    ids = torch.tensor([vocabulary.eos_id, *vocabulary.encode(text).tolist()])
    with torch.no_grad():
        logits, _ = model(ids[:-1].unsqueeze(0))
        expected = float(torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum"))
    assert result["test_words"] == quality.word_count(text) == 3 + 4 + 1
    assert result["nll_nats"] == pytest.approx(expected, rel=1e-5)
    assert result["word_perplexity"] == pytest.approx(math.exp(expected / 8), rel=1e-5)
    assert result["val_chars"] == len(text)


# -- the memory corpus --------------------------------------------------------------------------


def test_memory_lines_parse_and_refuse(quality) -> None:
    assert quality.memory_lines("A:A\nB   :B\n") == [("A", 0), ("B", 3)]
    for bad in ("A  :B\n", "Z:Z\n", "A  A\n", "A:\n"):
        with pytest.raises(SystemExit):
            quality.memory_lines(bad)


class CharTokenizer:
    """One id per character (ids 0-2 reserved, as lstmgen's start / end ids)."""

    alphabet = "ABCDEFGHIJKLMNOP :\n"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[3 + self.alphabet.index(c) for c in text] for text in texts]


class OracleReader:
    """Knows the text: puts all its belief on the true continuation."""

    def __init__(self, text: str) -> None:
        self.ids = [1] + CharTokenizer().encode_batch([text])[0]
        self.position = 0

    def read(self, ids):
        assert list(ids) == self.ids[self.position : self.position + len(ids)]
        self.position += len(ids)

    def branch(self, continuations):
        truth = self.ids[self.position :]
        return np.array([0.0 if list(c) == truth[: len(c)] else -50.0 for c in continuations])


class UniformReader:
    def read(self, ids):
        pass

    def branch(self, continuations):
        return np.zeros(len(continuations))


def test_recall_scoring_from_oracle_to_chance(quality) -> None:
    compare_cells = quality.compare_cells
    text, records = compare_cells.memory_text(300, seed=5)
    encode = CharTokenizer().encode_batch
    oracle = quality.recall_scores(OracleReader(text), encode, [1], text)
    assert oracle["recall_accuracy"] == 1.0 and oracle["recall_bits"] < 1e-12
    assert oracle["recall_lines"] == 300
    assert oracle["recall_short"]["lines"] == sum(gap < 64 for _, gap, _ in records)
    assert oracle["recall_short"]["lines"] + oracle["recall_long"]["lines"] == 300
    assert sum(part["lines"] for part in oracle["recall_by_gap"]) == 300
    chance = quality.recall_scores(UniformReader(), encode, [1], text)
    assert chance["recall_bits"] == pytest.approx(4.0)
    # Ties go to the first key: "recalled" exactly where the key is A.
    assert chance["recall_accuracy"] == pytest.approx(sum(key == "A" for _, _, key in records) / 300)


def test_readers_score_continuations_from_the_state_the_text_left(quality) -> None:
    """branch() gives log P(continuation | text read so far), the same as reading it all from scratch."""
    torch.manual_seed(0)
    prefix, continuations = [1, 5, 6, 7, 5, 9], [[4], [8, 3], [3, 8], [6, 6, 6]]

    def from_scratch(logits_of) -> list[float]:
        totals = []
        for c in continuations:
            ids = torch.tensor(prefix + c)
            log_probs = torch.log_softmax(logits_of(ids[:-1]).double(), -1)
            totals.append(float(log_probs[len(prefix) - 1 :].gather(1, ids[len(prefix) :, None]).sum()))
        return totals

    lstm = quality.ClassicLSTM(12, 8, 8, 2, 0.0).eval()
    reader = quality.RecurrentReader(lstm, chunk=4)  # chunks smaller than the prefix: the state carries across
    reader.read(prefix[:4])
    reader.read(prefix[4:])
    with torch.no_grad():
        expected = from_scratch(lambda ids: lstm(ids.unsqueeze(0))[0][0])
        assert reader.branch(continuations) == pytest.approx(expected, rel=1e-6)
        gpt = quality.SmallGPT(vocab=12, width=32, layers=2, context=16, dropout=0.0).eval()
        window = quality.WindowReader(gpt)
        window.read(prefix)
        assert window.branch(continuations) == pytest.approx(
            from_scratch(lambda ids: gpt(ids.unsqueeze(0))[0]), rel=1e-5
        )


def test_gpt_cached_forward_equals_the_full_one(quality) -> None:
    torch.manual_seed(0)
    model = quality.SmallGPT(vocab=30, width=64, layers=2, context=32, dropout=0.0, head_dim=32).eval()
    ids = torch.randint(0, 30, (1, 20))
    with torch.no_grad():
        full = model(ids)
        head, cache = model.forward_cached(ids[:, :13])
        tail, _ = model.forward_cached(ids[:, 13:].expand(3, -1), cache)
    assert torch.allclose(torch.cat([head, tail[:1]], 1), full, atol=1e-5)
    assert torch.allclose(tail[2], full[0, 13:], atol=1e-5)


# -- which cells run, and the tables ------------------------------------------------------------


def record(corpus: str, contestant: str, budget: float, device: str | None = None, **fields) -> dict:
    entry = {
        "corpus": corpus,
        "contestant": contestant,
        "budget_min": budget,
        "machine": "Test CPU, 2 cores",
        "parameters": 4_793_472,
        "nats_per_char": 1.5,
        "bits_per_char": 1.5 / math.log(2),
        "bits_per_byte": 1.5 / math.log(2),
        **fields,
    }
    if device:
        entry["device"] = device
    return entry


def test_plan_runs_only_missing_cells(quality) -> None:
    suite = quality.SUITE
    done = {
        quality.cell_key(r)
        for r in [
            record("shakespeare", "lstmgen", 5.0),
            record("shakespeare", "sgd-lstm", 5.0),
            record("shakespeare", "sgd-lstm", 15.0),
            record("wikitext-2", "gpt", 10.0, "cuda"),
        ]
    }
    jobs = quality.plan_jobs(suite, quality.DEFAULT_CONTESTANTS, [5, 15, 30], [10, 30], ["cpu", "cuda"], done)
    labels = {(j.corpus, j.contestant, j.budgets, j.device) for j in jobs}
    assert ("shakespeare", "lstmgen", (5.0,), "cpu") not in labels  # records without "device" are CPU runs
    assert {("shakespeare", "lstmgen", (15.0,), "cpu"), ("shakespeare", "lstmgen", (30.0,), "cpu")} <= labels
    assert ("shakespeare", "sgd-lstm", (30.0,), "cpu") in labels  # one run for the budgets left
    assert ("pride-and-prejudice", "sgd-lstm", (5.0, 15.0, 30.0), "cpu") in labels
    assert {j.corpus for j in jobs if j.contestant == "word-lstm"} == {"wikitext-2"}
    assert {j.corpus for j in jobs if j.device == "cuda"} == {"wikitext-2"}
    assert ("wikitext-2", "gpt", (30.0,), "cuda") in labels and ("wikitext-2", "gpt", (10.0,), "cuda") not in labels
    assert jobs == sorted(jobs, key=lambda j: -j.minutes)
    cpu = [j for j in jobs if j.device == "cpu"]
    # 6 corpora × (lstmgen 3 + gpt 3 + sgd-lstm 1) + word-lstm 1, less the finished shakespeare lstmgen 5-minute cell.
    assert len(cpu) == 6 * 7 + 1 - 1
    everything = {quality.cell_key(record(j.corpus, j.contestant, b, j.device)) for j in jobs for b in j.budgets} | done
    assert (
        quality.plan_jobs(suite, quality.DEFAULT_CONTESTANTS, [5, 15, 30], [10, 30], ["cpu", "cuda"], everything) == []
    )


def test_lstmgen_runs_the_literal_command(quality) -> None:
    def command(*args) -> str:
        return " ".join(quality.lstmgen_command(*args))

    assert (
        command("lstmgen", Path("tinyshakespeare.txt"), 5.0, 1, "file")
        == "lstmgen train tinyshakespeare.txt --max-time 5m --threads 1"
    )
    assert (
        command("lstmgen", Path("tang.txt"), 30.0, 1, "blank-line")
        == "lstmgen train tang.txt --max-time 30m --threads 1 --documents blank-line"
    )
    assert (
        command("lstmgen-char", Path("c.txt"), 10.0, None, "file")
        == "lstmgen train c.txt --max-time 10m --model-type char"
    )


def section(table: str, title: str) -> str:
    """The part of the tables under the corpus title that starts with `title`."""
    return table.split(f"\n**{title}" if not table.startswith(f"**{title}") else f"**{title}", 1)[1].split("\n**", 1)[0]


def test_report_shows_missing_cells_and_the_machine(quality, tmp_path: Path) -> None:
    records = [
        record("shakespeare", "lstmgen", 5.0),
        record("shakespeare", "lstmgen", 5.0, nats_per_char=1.25, bits_per_char=1.25 / math.log(2)),
        record("shakespeare", "lstmgen-char", 15.0),
        record("wikitext-2", "word-lstm", 30.0, word_perplexity=181.234, bits_per_char=1.5),
        record(
            "memory",
            "gpt",
            15.0,
            bits_per_char=0.2571,
            recall_short={"accuracy": 0.93},
            recall_long={"accuracy": 0.061},
        ),
        record("my-corpus", "lstmgen", 5.0),
    ]
    path = tmp_path / "quality.jsonl"
    for r in records:
        quality.append_result(path, r)
    doc = tmp_path / "benchmarks.md"
    start, end = "<!-- quality-table:start -->", "<!-- quality-table:end -->"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{start}\nold table\n{end}\n\nafter\n")
    table = quality.report(path, doc, [5, 15, 30], [10, 30])
    text = doc.read_text()
    assert (
        "old table" not in text and text.startswith("# Benchmarks\n\nbefore\n") and text.endswith(f"{end}\n\nafter\n")
    )
    titles = [line.split("**")[1] for line in table.splitlines() if line.startswith("**")]
    assert len(titles) == 7 and titles[-1] == "my-corpus"  # the suite's six, then a corpus that only has records
    shakespeare = section(table, "tiny Shakespeare")
    assert (
        "| lstmgen defaults | 4.79M | 1.803 (1.250) | not run | not run |" in shakespeare
    )  # the newest record of a cell
    assert "lstmgen `--model-type char`" in shakespeare  # run by name: shown since it has records
    assert "Measured on Test CPU, 2 cores." in shakespeare
    wiki = section(table, "WikiText-2")
    assert "| 181.2 (1.500) |" in wiki and "word-level classic LSTM" in wiki
    assert "GPU column (10, 30 GPU-minutes): not run" in wiki
    assert "word-level" not in section(table, "Python stdlib")
    memory = section(table, "long-range memory")
    assert "| not run | 0.257; 93 % / 6 % | not run |" in memory and "0.1846 bits/char" in memory
    assert table.count("not run") > 40


def test_report_has_a_gpu_column_once_there_are_gpu_records(quality) -> None:
    records = [
        record(
            "wikitext-2",
            "lstmgen",
            10.0,
            "cuda",
            word_perplexity=120.0,
            bits_per_char=1.2,
            machine="Test CPU, NVIDIA H200",
        )
    ]
    table = quality.render(records, quality.SUITE, [5, 15, 30], [10, 30])
    wiki = section(table, "WikiText-2")
    assert "| 5 CPU-min | 15 CPU-min | 30 CPU-min | 10 GPU-min | 30 GPU-min |" in wiki
    assert "| not run | not run | not run | 120.0 (1.200) | not run |" in wiki
    assert "GPU column" not in wiki and "NVIDIA H200" in wiki


def test_gpt_scoring_counts_every_position_once(quality) -> None:
    """Sliding-window scoring equals one full-context pass when the text fits one context."""
    torch.manual_seed(0)
    model = quality.SmallGPT(vocab=50, width=32, layers=1, context=64, dropout=0.0).eval()
    tokens = np.random.default_rng(0).integers(0, 50, 60).astype(np.uint16)
    with torch.no_grad():
        ids = torch.from_numpy(tokens.astype(np.int64))
        logits = model(ids[:-1].unsqueeze(0))[0]
        full = float(torch.nn.functional.cross_entropy(logits, ids[1:], reduction="sum"))
    assert quality.gpt_nll(model, tokens) == pytest.approx(full, rel=1e-5)
    longer = np.random.default_rng(1).integers(0, 50, 500).astype(np.uint16)
    assert math.isfinite(quality.gpt_nll(model, longer))


def test_gpt_width_matches_the_parameter_count(quality) -> None:
    width = quality.gpt_width(4_800_000, 1152, 4, 256)
    model = quality.SmallGPT(1152, width, 4, 256, 0.0)
    assert sum(p.numel() for p in model.parameters()) == quality.gpt_parameters(1152, width, 4, 256)
    assert abs(quality.gpt_parameters(1152, width, 4, 256) - 4_800_000) < 0.1 * 4_800_000


def test_a_narrowed_run_keeps_every_column_of_the_tables(quality) -> None:
    """`--budgets 5` runs only 5-minute cells, but the tables it rewrites keep the suite's columns (a smoke run's: its own)."""
    from argparse import Namespace

    assert quality.table_budgets(Namespace(max_chars=None, budgets=[5.0], gpu_budgets=[10.0])) == (
        [5.0, 15.0, 30.0],
        [10.0, 30.0],
    )
    assert quality.table_budgets(Namespace(max_chars=None, budgets=[60.0], gpu_budgets=[10.0])) == (
        [5.0, 15.0, 30.0, 60.0],
        [10.0, 30.0],
    )
    assert quality.table_budgets(Namespace(max_chars=1000, budgets=[0.05], gpu_budgets=[0.1])) == ([0.05], [0.1])
