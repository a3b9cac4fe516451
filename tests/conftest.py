"""Shared fixtures: a small corpus, a tokenizer trained on it, and a tiny trained bundle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT / "corpora" / "tinyshakespeare.txt"
TANG = ROOT / "corpora" / "tang-poems.simplified.txt"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:60_000])
    return path


@pytest.fixture(scope="session")
def tokenizer(small_corpus: Path):
    from lstmgen.config import TokenizerConfig
    from lstmgen.tokenizer import train_tokenizer

    return train_tokenizer(small_corpus.read_text().splitlines(keepends=True), TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """A bundle trained for a few steps through the CLI (shared by read-only tests)."""
    directory = tmp_path_factory.mktemp("bundle")
    output = directory / "tiny.lstmgen"
    result = run_cli(
        "train", str(small_corpus), "-o", str(output), "--hidden-size", "32", "--layers", "1", "--max-steps", "20",
        "--batch-size", "8", "--seq-len", "32", "--val-every", "10", "--vocab-size", "400", "--seed", "1",
    )
    assert result.returncode == 0, result.stderr
    return output


def run_cli(*args: str, input: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m lstmgen ARGS` in a subprocess, as a user would from a shell."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    full_env.pop("LSTMGEN_MODEL", None) if env is None or "LSTMGEN_MODEL" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "lstmgen", *args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        text=False,
    )


class Result:
    """Decoded view of a CompletedProcess."""

    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout.decode("utf-8", errors="replace")
        self.stderr = completed.stderr.decode("utf-8", errors="replace")


def cli(*args: str, **kwargs) -> Result:
    return Result(run_cli(*args, **kwargs))
