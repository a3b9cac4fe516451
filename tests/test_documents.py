"""Document boundaries: `--documents file|blank-line`, the EOS stream, reuse, and samples that end."""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmgen.config import TokenizerConfig, from_dict, to_dict
from lstmgen.data import TokenizedCorpus, encode_corpus, reusable_encoding, tokenize_corpus
from lstmgen.errors import LstmgenError

from .conftest import cli

EOS = 2


def _documents(tokens: np.ndarray, tokenizer) -> list[str]:
    """Split a token stream at EOS and decode each document; the stream must end with EOS."""
    ids = [int(t) for t in tokens]
    assert ids and ids[-1] == EOS
    documents, start = [], 0
    for position, token in enumerate(ids):
        if token == EOS:
            documents.append(tokenizer.decode(ids[start:position]))
            start = position + 1
    return documents


def _encode(tokenizer, directory: Path, texts: list[str], documents: str, val_fraction: float = 0.2) -> TokenizedCorpus:
    paths = []
    for number, text in enumerate(texts):
        path = directory / f"part{number}.txt"
        path.write_bytes(text.encode("utf-8"))
        paths.append(path)
    return encode_corpus(paths, tokenizer, directory / f"tok-{documents}", val_fraction, {"documents": documents}, documents=documents)


POEM_FILE = "\n\n  \nfirst poem\nline two\n\n\nsecond poem\r\nhas crlf\r\n\r\n\u3000\nthird\n   indented line\nlast line without newline"


def test_blank_line_documents_are_exact(tokenizer, tmp_path: Path) -> None:
    corpus = _encode(tokenizer, tmp_path, [POEM_FILE, "another file\n\nwith two documents\n\n\n"], "blank-line")
    assert _documents(corpus.tokens(), tokenizer) == [
        "first poem\nline two\n",
        "second poem\r\nhas crlf\r\n",
        "third\n   indented line\nlast line without newline",
        "another file\n",
        "with two documents\n",
    ]
    assert corpus.meta["total_bytes"] == len(POEM_FILE.encode()) + len("another file\n\nwith two documents\n\n\n")
    assert corpus.meta["tokenizer"]["documents"] == "blank-line"


def test_file_documents_keep_blank_lines(tokenizer, tmp_path: Path) -> None:
    corpus = _encode(tokenizer, tmp_path, [POEM_FILE, "another file\n\nwith two documents\n\n\n"], "file")
    assert _documents(corpus.tokens(), tokenizer) == [POEM_FILE, "another file\n\nwith two documents\n\n\n"]


def test_long_whitespace_runs_inside_a_line_are_text(tokenizer, tmp_path: Path) -> None:
    # A line longer than the reader's chunk size whose first chunk is all spaces is not blank.
    text = "doc one\n\n" + " " * 70_000 + "tail\n\nlast doc\n"
    corpus = _encode(tokenizer, tmp_path, [text], "blank-line")
    assert _documents(corpus.tokens(), tokenizer) == ["doc one\n", " " * 70_000 + "tail\n", "last doc\n"]


line_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), min_size=1, max_size=12).filter(
    lambda s: not s.isspace()
)
document = st.lists(line_text, min_size=1, max_size=4).map(lambda lines: "".join(line + "\n" for line in lines))
blank_run = st.lists(st.sampled_from(["\n", " \n", "\t\n", "\r\n", "\u3000\n"]), min_size=1, max_size=3).map("".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(document, blank_run), min_size=4, max_size=10), st.booleans())
def test_blank_line_round_trip(tokenizer, parts: list[tuple[str, str]], leading_blank: bool) -> None:
    text = ("\n" if leading_blank else "") + "".join(doc + blank for doc, blank in parts)
    with tempfile.TemporaryDirectory() as directory:
        try:
            corpus = _encode(tokenizer, Path(directory), [text], "blank-line", val_fraction=0.5)
        except LstmgenError as error:  # a corpus too small for a validation split is refused, not mangled
            assert "too small" in str(error)
            return
        assert _documents(corpus.tokens(), tokenizer) == [doc for doc, _ in parts]
        assert corpus.meta["total_chars"] == len(text)


def test_documents_setting_is_validated_and_stored(small_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(LstmgenError, match="^documents must be"):
        TokenizerConfig(documents="paragraph").validate()
    config = TokenizerConfig(vocab_size=400, documents="blank-line")
    assert from_dict(TokenizerConfig, to_dict(config)) == config
    corpus = tokenize_corpus([small_corpus], config, tmp_path / "tok", 0.1)
    assert corpus.meta["tokenizer"]["documents"] == "blank-line"
    # Shakespeare's speeches are separated by blank lines: one document per speech.
    assert int(np.count_nonzero(np.asarray(corpus.tokens()) == EOS)) > 100
    assert reusable_encoding(tmp_path / "tok", [small_corpus], config, 0.1) is not None
    assert reusable_encoding(tmp_path / "tok", [small_corpus], TokenizerConfig(vocab_size=400), 0.1) is None


def test_encodings_from_before_the_setting_count_as_file(small_corpus: Path, tmp_path: Path) -> None:
    import json

    config = TokenizerConfig(vocab_size=400)
    tokenize_corpus([small_corpus], config, tmp_path / "tok", 0.1)
    meta_path = tmp_path / "tok" / "tokens.json"
    meta = json.loads(meta_path.read_text())
    del meta["tokenizer"]["documents"]
    meta_path.write_text(json.dumps(meta))
    assert reusable_encoding(tmp_path / "tok", [small_corpus], config, 0.1) is not None
    assert reusable_encoding(tmp_path / "tok", [small_corpus], TokenizerConfig(vocab_size=400, documents="blank-line"), 0.1) is None


def test_cli_documents_option(small_corpus: Path, tmp_path: Path) -> None:
    bad = cli("tokenize", str(small_corpus), "--documents", "paragraph", "-o", str(tmp_path / "x.tok"))
    assert bad.returncode == 2 and bad.stderr.startswith("error: --documents must be") and len(bad.stderr.splitlines()) == 1
    good = cli("tokenize", str(small_corpus), "--documents", "blank-line", "--vocab-size", "400", "-o", str(tmp_path / "s.tok"), "--json")
    assert good.returncode == 0, good.stderr
    assert TokenizedCorpus.open(tmp_path / "s.tok").meta["tokenizer"]["documents"] == "blank-line"


# -- a model trained on blank-line documents ends its samples by itself ---------------------------------

POEMS = ["red sun\nover the hill\n", "cold rain\non an old roof\n", "white moon\nin the well\n", "wind\nthrough the pines\n"]


@pytest.fixture(scope="module")
def poem_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1×128 char-level LSTM trained 500 steps on four short poems separated by blank lines."""
    from lstmgen.config import ModelConfig, TrainConfig
    from lstmgen.trainer import Trainer

    directory = tmp_path_factory.mktemp("poems")
    rng = random.Random(0)
    text = "".join(rng.choice(POEMS) + "\n" * rng.choice([1, 1, 2]) for _ in range(400))
    (directory / "poems.txt").write_text(text)
    corpus = tokenize_corpus([directory / "poems.txt"], TokenizerConfig(model_type="char", documents="blank-line"), directory / "tok", 0.1)
    model_config = ModelConfig(vocab_size=corpus.meta["vocab_size"], embedding_size=128, hidden_size=128, num_layers=1, dropout=0.0)
    train_config = TrainConfig(batch_size=16, seq_len=32, max_steps=500, val_every=500, log_every=100, warmup_steps=10, seed=3,
                               threads=1, learning_rate=0.005, val_max_tokens=2000)
    Trainer(corpus, model_config, train_config, directory / "poems.lstmgen").run()
    return directory / "poems.lstmgen"


@pytest.fixture(scope="module")
def poem_model(poem_bundle: Path):
    import lstmgen

    return lstmgen.load(poem_bundle)


def test_poem_model_ends_samples_on_its_own(poem_model) -> None:
    assert poem_model.documents == "blank-line"
    samples = poem_model.sample_many("", 16, max_tokens=200, temperature=0.5, seed=1)
    ended = [s for s in samples if s.finish_reason == "end-of-text"]
    assert len(ended) >= 14, [s.text for s in samples]
    assert all(s.text.endswith("\n") and len(s.tokens) < 60 for s in ended)
    assert sum(s.text in POEMS for s in samples) >= 8, [s.text for s in samples]
    # The EOS is not part of the text and is not counted as a generated token.
    assert all(2 not in s.tokens for s in samples)


def test_poem_model_finishes_a_prompted_poem(poem_model) -> None:
    sample = poem_model.sample("red", temperature=0, max_tokens=100)
    assert (sample.text, sample.finish_reason) == (" sun\nover the hill\n", "end-of-text")


def test_cli_reports_end_of_text(poem_bundle: Path) -> None:
    import json

    result = cli("sample", "-m", str(poem_bundle), "-n", "4", "--temp", "0.5", "--seed", "2", "--format", "jsonl", "--max-tokens", "200")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sum(r["finish_reason"] == "end-of-text" for r in records) >= 3


def test_document_text_matches_regex_split(tokenizer, tmp_path: Path) -> None:
    # The rule in one line: a run of whitespace-only lines separates documents.
    text = "a\nb\n\n\nc\n \n\t\nd\n"
    corpus = _encode(tokenizer, tmp_path, [text * 20], "blank-line")
    expected = [d + "\n" for d in re.split(r"\n(?:[ \t]*\n)+", (text * 20).rstrip("\n"))]
    assert _documents(corpus.tokens(), tokenizer) == expected


def test_train_documents_option_and_tokenizer_directory(small_corpus: Path, tmp_path: Path) -> None:
    import json

    def dry_run(*args: str) -> dict:
        result = cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--vocab-size", "400", "--hidden-size", "16",
                     "--batch-size", "4", "--seq-len", "16", "--dry-run", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)["tokenizer"]

    assert dry_run("--documents", "blank-line")["documents"] == "blank-line"
    made = cli("tokenize", str(small_corpus), "--documents", "blank-line", "--vocab-size", "400", "-o", str(tmp_path / "given.tok"))
    assert made.returncode == 0, made.stderr
    assert dry_run("--tokenizer", str(tmp_path / "given.tok"))["documents"] == "blank-line"  # the directory's own setting
    assert dry_run("--tokenizer", str(tmp_path / "given.tok"), "--documents", "file")["documents"] == "file"


@pytest.mark.parametrize("documents", ["blank-line", "file"])
def test_evaluation_reads_documents_as_training_did(tokenizer, tmp_path: Path, documents: str) -> None:
    """`eval` of a blank-line model scores the text as the model was trained on it: EOS for blank runs."""
    from lstmgen.data import CorpusReader
    from lstmgen.evaluation import encode_text_stream

    corpus = _encode(tokenizer, tmp_path, [POEM_FILE], documents, val_fraction=0.5)
    path = tmp_path / "part0.txt"
    ids, num_bytes, num_chars = encode_text_stream(tokenizer, CorpusReader(path, "strict").lines(), documents)
    trained = [int(t) for t in corpus.tokens()]
    start = [tokenizer.bos_id, tokenizer.eos_id] if documents == "blank-line" else [tokenizer.bos_id]  # as a sample starts
    assert [int(t) for t in ids] == start + trained[:-1]  # training's stream ends with one more EOS
    assert (num_bytes, num_chars) == (len(POEM_FILE.encode()), len(POEM_FILE))


def test_poem_model_evaluates_with_its_document_convention(poem_model) -> None:
    text = "first poem\nline two\n\n\nsecond poem\n"
    as_documents = poem_model.evaluate(text)
    lines = ["first poem\n", "line two\n", "second poem\n"]
    # + one EOS for the blank run, and the EOS a sample of a blank-line model starts with
    assert as_documents["tokens"] == sum(len(poem_model.tokenizer.encode(line)) for line in lines) + 2
    assert as_documents["chars"] == len(text)
