"""Training options from a TOML file, with command-line flags overriding it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lstmgen.config import TrainConfig, apply_settings, load_config_file, parse_duration
from lstmgen.errors import LstmgenError

from .conftest import cli

RUN_TOML = """
[tokenizer]
vocab_size = 400

[model]
hidden_size = 16
num_layers = 1
dropout = 0.0

[train]
batch_size = 4
seq_len = 16
max_steps = 3
val_every = 3
max_time = "2m"
seed = 9
"""


def test_config_file_drives_a_run_and_flags_override(small_corpus: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(RUN_TOML)
    result = cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--config", str(config), "--seq-len", "24", "--dry-run")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["model"]["hidden_size"] == 16 and resolved["model"]["embedding_size"] == 16
    assert resolved["train"]["batch_size"] == 4 and resolved["train"]["seq_len"] == 24
    assert resolved["train"]["max_time"] == 120 and resolved["train"]["max_steps"] == 3
    assert resolved["tokenizer"]["vocab_size"] == 400
    assert resolved["parameters"] > 0 and resolved["estimated_tokens_per_second"] > 0

    trained = cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--config", str(config))
    assert trained.returncode == 0, trained.stderr
    info = json.loads(cli("info", str(tmp_path / "m.lstmgen"), "--json").stdout)
    assert info["training"]["train_config"]["seed"] == 9 and info["training"]["steps"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nbatch_sise = 4\n", "has no setting 'batch_sise'"),
        ("[optimizer]\nlr = 1\n", "unknown table [optimizer]"),
        ("[train]\nbatch_size = 'four'\n", "batch_size must be"),
        ("[train\n", "not valid TOML"),
        ("[train]\nmax_time = 'soon'\n", "must be a duration"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(LstmgenError, match=message.replace("[", r"\[").replace("]", r"\]")):
        data = load_config_file(path)
        apply_settings(TrainConfig(), data.get("train", {}), "train")


def test_bad_config_file_through_the_cli(small_corpus: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlearning_rate = -1\n")
    result = cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--config", str(path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--lr must be" in result.stderr
    missing = cli("train", str(small_corpus), "--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("5m", 300), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("45", 45)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
