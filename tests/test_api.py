"""The Python API as a new user meets it: names as -m takes them, a useful repr, and training that never replaces a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lstmgen
from lstmgen.errors import LstmgenError
from lstmgen.rundir import run_directory

TINY = dict(hidden_size=16, num_layers=1, batch_size=4, seq_len=16, vocab_size=400, val_every=5, seed=3)


def test_load_takes_a_model_name_as_m_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LSTMGEN_MODEL", raising=False)
    monkeypatch.setenv("LSTMGEN_HOME", str(tmp_path))
    named = lstmgen.load("shakespeare")
    default = lstmgen.load()
    assert named.source == default.source and named.source.endswith("shakespeare.lstmgen")
    text = repr(named)
    assert text.startswith("<LanguageModel 2×512 LSTM, ") and "parameters" in text and "vocabulary 1152" in text and "shakespeare.lstmgen" in text
    with pytest.raises(LstmgenError, match="no model named"):
        lstmgen.load("no-such-model")


def test_train_refuses_to_replace_a_model_like_the_command_line(small_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "m.lstmgen"
    events: list[str] = []
    first = lstmgen.train(small_corpus, output, max_steps=5, on_event=lambda event: events.append(event["event"]), **TINY)
    assert first.steps == 5 and output.exists() and {"start", "val", "bundle", "end"} <= set(events)
    before = output.read_bytes()
    with pytest.raises(LstmgenError) as refused:
        lstmgen.train(small_corpus, output, max_steps=5, **TINY)
    assert "already holds a model trained for 5 steps" in str(refused.value)
    assert str(refused.value).endswith("continue it with resume=True, write to another output, or start over with overwrite=True")
    assert output.read_bytes() == before
    again = lstmgen.train(small_corpus, output, max_steps=3, overwrite=True, **TINY)
    assert again.steps == 3
    resumed = lstmgen.train(small_corpus, output, max_steps=6, resume=True)
    assert resumed.steps == 6
    with pytest.raises(LstmgenError, match="^unknown option 'lr'; the options are output, tokenizer, .*learning_rate"):
        lstmgen.train(small_corpus, tmp_path / "other.lstmgen", lr=0.1)
    with pytest.raises(LstmgenError, match=r"^learning_rate must be a number in \(0, 10\], not -1"):
        lstmgen.train(small_corpus, tmp_path / "other.lstmgen", learning_rate=-1)
    assert not run_directory(tmp_path / "other.lstmgen").exists()


def test_dry_run_estimates_the_speed_the_run_trains_at(small_corpus: Path, tmp_path: Path) -> None:
    """The estimate times real training steps after a warm-up: within 30 % of the speed the run then has.

    One thread: with two on a two-core machine that another program keeps busy, OpenMP's waiting threads make the
    first seconds of any run (the probe's and the trainer's alike) many times slower, which is not what is measured here."""
    from lstmgen.run import dry_run

    options = dict(hidden_size=128, num_layers=2, batch_size=16, seq_len=32, vocab_size=400, threads=1, log_every=10, val_every=1000)
    output = tmp_path / "m.lstmgen"
    estimate = dry_run(small_corpus, output, max_steps=80, **options)["estimated_tokens_per_second"]
    lstmgen.train(small_corpus, output, max_steps=80, **options)
    speeds = [r["tokens_per_second"] for r in map(json.loads, (run_directory(output) / "metrics.jsonl").read_text().splitlines())
              if r["type"] == "train" and r["step"] > 10]
    trained = sorted(speeds)[len(speeds) // 2]
    assert 0.7 <= estimate / trained <= 1.3, (estimate, trained)


def test_inference_never_imports_training() -> None:
    import subprocess
    import sys

    code = ("import sys, lstmgen\nm = lstmgen.load('shakespeare')\nm.generate('A', max_tokens=2)\n"
            "found = [name for name in ('lstmgen.trainer', 'lstmgen.run', 'lstmgen.sizing', 'lstmgen.checkpoint') if name in sys.modules]\n"
            "assert not found, found\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
