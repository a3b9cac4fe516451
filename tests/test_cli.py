"""The four subcommands as a user runs them from a shell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import cli, run_cli

TRAIN_FAST = ["--hidden-size", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "32", "--vocab-size", "400"]


def test_help_of_every_subcommand_has_an_example() -> None:
    for command in ("tokenize", "train", "sample", "eval", "info", "inspect", "models"):
        result = cli(command, "--help")
        assert result.returncode == 0
        assert "Example" in result.stdout and "lstmgen " + ("eval" if command == "eval" else command) in result.stdout


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("lstmgen ")


def test_tokenize_command(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.tok"
    result = cli("tokenize", str(small_corpus), "-o", str(out), "--vocab-size", "400", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["vocab_size"] == 400 and summary["tokens"] > 10_000
    assert {p.name for p in out.iterdir()} == {"tokenizer.model", "tokens.bin", "tokens.json"}


def test_train_sample_eval_pipeline(small_corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.lstmgen"
    result = cli("train", str(small_corpus), "-o", str(model), *TRAIN_FAST, "--max-steps", "12", "--val-every", "6")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "validation at step 12" in result.stderr
    assert "\x1b[" not in result.stderr  # no bars or colour codes in logs
    metrics = (tmp_path / "m.lstmgen.run" / "metrics.jsonl").read_text().splitlines()
    assert any(json.loads(line)["type"] == "val" for line in metrics)

    sample = cli("sample", "-m", str(model), "--prompt", "ROMEO:", "--max-tokens", "40", "--seed", "3", "--temp", "0.8")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("ROMEO:") and len(sample.stdout) > 10
    again = cli("sample", "-m", str(model), "--prompt", "ROMEO:", "--max-tokens", "40", "--seed", "3", "--temp", "0.8")
    assert again.stdout == sample.stdout

    held_out = tmp_path / "held.txt"
    held_out.write_text("JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n")
    evaluation = cli("eval", "-m", str(model), str(held_out), "--json")
    assert evaluation.returncode == 0, evaluation.stderr
    data = json.loads(evaluation.stdout)
    assert set(data) >= {"tokens", "nll", "perplexity", "bits_per_byte", "bits_per_char"}
    assert data["bytes"] == held_out.stat().st_size and data["bits_per_char"] > 0

    table = cli("eval", "-m", str(model), str(held_out))
    assert table.returncode == 0 and table.stdout == "" and "bits/char" in table.stderr


def test_train_reuses_the_encoding(small_corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.lstmgen"
    args = ["train", str(small_corpus), "-o", str(model), *TRAIN_FAST, "--max-steps", "2", "--val-every", "2"]
    assert cli(*args).returncode == 0
    second = cli(*args, "--overwrite")  # a second fresh run over the first one says so
    assert second.returncode == 0 and "reusing the encoded corpus" in second.stderr


def test_train_with_tokenizer_directory(small_corpus: Path, tmp_path: Path) -> None:
    tok = tmp_path / "s.tok"
    assert cli("tokenize", str(small_corpus), "-o", str(tok), "--vocab-size", "350").returncode == 0
    model = tmp_path / "m.lstmgen"
    result = cli("train", str(small_corpus), "-o", str(model), "--tokenizer", str(tok), "--hidden-size", "16", "--layers", "1",
                 "--batch-size", "4", "--seq-len", "16", "--max-steps", "2", "--val-every", "2")
    assert result.returncode == 0, result.stderr
    info = json.loads(cli("info", str(model), "--json").stdout)
    assert info["model"]["vocab_size"] == 350


def test_dry_run_prints_the_resolved_config(small_corpus: Path, tmp_path: Path) -> None:
    result = cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--dry-run", "--vocab-size", "400")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["train"]["max_time"] == 900 and config["parameters"] > 0
    assert not (tmp_path / "m.lstmgen").exists()


def test_sample_from_stdin_prompt_and_jsonl(tiny_bundle: Path) -> None:
    result = cli("sample", "-m", str(tiny_bundle), "--prompt", "-", "-n", "3", "--max-tokens", "15", "--seed", "1", "--format", "jsonl",
                 input="KING:".encode())
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["prompt"] == "KING:" and r["finish_reason"] in ("length", "stop", "end-of-text") for r in records)


def test_sample_n_in_text_mode_matches_jsonl(tiny_bundle: Path) -> None:
    args = ["sample", "-m", str(tiny_bundle), "-n", "3", "--max-tokens", "15", "--seed", "4", "--separator", "\n---\n", "--no-echo-prompt"]
    text = cli(*args).stdout
    records = [json.loads(line) for line in cli(*args, "--format", "jsonl").stdout.splitlines()]
    # Each sample ends its line, and that line break is the separator's first: "text\n---\ntext".
    expected = "---\n".join(r["text"] + ("" if r["text"].endswith("\n") else "\n") for r in records)
    assert text == expected


def test_model_from_environment(tiny_bundle: Path) -> None:
    result = cli("sample", "--max-tokens", "5", env={"LSTMGEN_MODEL": str(tiny_bundle)})
    assert result.returncode == 0, result.stderr


def test_pipe_into_head_ends_quietly(tiny_bundle: Path) -> None:
    command = f"{sys.executable} -m lstmgen sample -m {tiny_bundle} -n 50 --max-tokens 400 | head -c 1"
    completed = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=120)
    assert completed.stderr == b""
    assert completed.returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["sample", "-m", "no-such-model"], "no model named"),
        (["sample", "-m", "missing.lstmgen"], "does not exist"),
        (["sample", "-m", "{corpus}"], "is a text file, not a model bundle"),
        (["sample", "-m", "{bundle}", "--temp", "-1"], "--temp must be"),
        (["sample", "-m", "{bundle}", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["sample", "-m", "{bundle}", "--top-p", "nan"], "--top-p must be"),
        (["sample", "-m", "{bundle}", "--top-k", "-3"], "--top-k must be"),
        (["sample", "-m", "{bundle}", "-n", "0"], "--num-samples must be"),
        (["sample", "-m", "{bundle}", "--format", "xml"], "--format must be"),
        (["sample", "--bogus"], "No such option"),
        (["train", "missing.txt"], "does not exist"),
        (["train", "{bundle}"], "model bundle"),
        (["train", "{corpus}", "--max-time", "soon"], "--max-time must be a duration"),
        (["train", "{corpus}", "--lr", "inf"], "--lr must be"),
        (["train", "{corpus}", "--batch-size", "0"], "--batch-size must be"),
        (["train", "{corpus}", "--vocab-size", "50"], "--vocab-size 50 is too small"),
        (["train", "{corpus}", "-o", "/nonexistent/dir/m.lstmgen"], "does not exist"),
        (["tokenize", "{corpus}", "--model-type", "word"], "--model-type must be"),
        (["eval", "-m", "{bundle}", "missing.txt"], "does not exist"),
        (["eval", "-m", "{bundle}", "{bundle}"], "model bundle"),
    ],
)
def test_user_errors_are_one_line_exit_2(args: list[str], message: str, tiny_bundle: Path, small_corpus: Path, tmp_path: Path) -> None:
    args = [a.replace("{bundle}", str(tiny_bundle)).replace("{corpus}", str(small_corpus)) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_ctrl_c_saves_a_checkpoint_and_resumes(small_corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.lstmgen"
    env = {**os.environ, "NO_COLOR": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "lstmgen", "train", str(small_corpus), "-o", str(model), *TRAIN_FAST, "--max-steps", "100000",
         "--log-every", "1", "--val-every", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )
    deadline = time.monotonic() + 120
    metrics = tmp_path / "m.lstmgen.run" / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stdout == b""
    assert b"Traceback" not in stderr
    assert b"--resume" in stderr.splitlines()[-1]
    assert (tmp_path / "m.lstmgen.run" / "checkpoint.ckpt").exists()
    assert model.exists()
    resumed = cli("train", str(small_corpus), "-o", str(model), "--resume", "--max-steps", "30", "--val-every", "5")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr


def test_sigterm_exits_143(small_corpus: Path, tmp_path: Path) -> None:
    model = tmp_path / "m.lstmgen"
    process = subprocess.Popen(
        [sys.executable, "-m", "lstmgen", "train", str(small_corpus), "-o", str(model), *TRAIN_FAST, "--max-steps", "100000", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    metrics = tmp_path / "m.lstmgen.run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert (tmp_path / "m.lstmgen.run" / "checkpoint.ckpt").exists()


def test_python_module_entry_point() -> None:
    completed = run_cli("--help")
    assert completed.returncode == 0 and b"tokenize" in completed.stdout


def test_convert_writes_a_half_size_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    half = tmp_path / "half.lstmgen"
    result = run_cli("convert", str(tiny_bundle), "-o", str(half), "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    assert b"float16 weights" in result.stderr
    assert half.stat().st_size < tiny_bundle.stat().st_size
    same = run_cli("convert", str(tiny_bundle), "-o", str(tiny_bundle))
    assert same.returncode == 2 and b"is the bundle being converted" in same.stderr


def test_dry_run_shows_the_cpu_defaults(small_corpus: Path, tmp_path: Path) -> None:
    result = run_cli("train", str(small_corpus), "-o", str(tmp_path / "m.lstmgen"), "--dry-run", "--device", "cpu", "--max-steps", "10",
                     "--hidden-size", "16", "--vocab-size", "400")
    assert result.returncode == 0, result.stderr
    train = json.loads(result.stdout)["train"]
    assert (train["batch_size"], train["seq_len"], train["learning_rate"], train["val_every"]) == (32, 32, 6e-3, None)
