"""`kill -9` at any moment leaves every file whole (old or new version) and the run resumable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lstmgen
from lstmgen.data import TokenizedCorpus
from lstmgen.checkpoint import MEMBERS as CHECKPOINT_MEMBERS
from lstmgen.bundle import read_members

ARGS = ["--hidden-size", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "32", "--vocab-size", "400",
        "--max-steps", "120", "--val-every", "2", "--log-every", "1", "--checkpoint-every", "0.05s", "--seed", "2"]


def _start(corpus: Path, output: Path, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "lstmgen", "train", str(corpus), "-o", str(output), *ARGS] + (["--resume"] if resume else [])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})


def _check_files_whole(output: Path) -> None:
    run = output.with_name(output.name + ".run")
    if output.exists():
        lstmgen.load(output)  # a complete bundle: every member and tensor validates
    if (run / "checkpoint.ckpt").exists():
        read_members(run / "checkpoint.ckpt", CHECKPOINT_MEMBERS, what="checkpoint")
    if (run / "tokens" / "tokens.json").exists():
        TokenizedCorpus.open(run / "tokens")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(small_corpus: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    output = tmp_path / "m.lstmgen"
    checkpoint = tmp_path / "m.lstmgen.run" / "checkpoint.ckpt"
    kills = 0
    resume = False
    for attempt in range(5):
        process = _start(small_corpus, output, resume)
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        _check_files_whole(output)
        resume = checkpoint.exists()
    assert kills >= 3
    final = _start(small_corpus, output, resume=True)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr.decode()
    _check_files_whole(output)
    assert lstmgen.load(output).meta["training"]["steps"] <= 120
    leftovers = [p.name for p in list(tmp_path.iterdir()) + list((tmp_path / "m.lstmgen.run").iterdir()) if p.name.endswith(".tmp")]
    assert leftovers == []
