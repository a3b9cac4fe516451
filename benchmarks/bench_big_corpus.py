"""Big corpora: tokenize throughput and peak memory of `lstmgen tokenize` and of the first training steps.

    python benchmarks/bench_big_corpus.py [--size-mb 1000] [--workdir /tmp/lstmgen-big]

Generates a corpus of the given size from the text corpora beside the checkout (or the bundled
ones), runs the real CLI under /usr/bin/time, and prints a Markdown table. Goals: peak RSS < 2 GB
for a 1 GB corpus, encoding >= 20 MB/s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT.parent / "shared" / "corpora" / "wikitext-2" / "train.txt", ROOT / "corpora" / "tinyshakespeare.txt", ROOT / "corpora" / "pride-and-prejudice.txt"]


def make_corpus(path: Path, size: int, seed: int = 0) -> None:
    """Shuffled blocks of real text lines until `size` bytes (English prose and dialogue)."""
    lines: list[str] = []
    for source in SOURCES:
        if source.exists():
            lines.extend(source.read_text(encoding="utf-8").splitlines(keepends=True))
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < size:
            start = rng.randrange(len(lines))
            block = "".join(lines[start : start + 2000])
            handle.write(block)
            written += len(block.encode("utf-8"))


def timed(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and stdout of a command run under /usr/bin/time -v."""
    started = time.perf_counter()
    completed = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        sys.exit(f"command failed: {' '.join(command)}\n{completed.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", completed.stderr).group(1))
    return wall, rss_kb * 1024, completed.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lstmgen-big"))
    parser.add_argument("--vocab-size", type=int, default=8000)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    corpus = args.workdir / "big.txt"
    size = int(args.size_mb * 1e6)
    if not corpus.exists() or corpus.stat().st_size < size:
        make_corpus(corpus, size)
    actual = corpus.stat().st_size
    lstmgen = [sys.executable, "-m", "lstmgen"]
    wall, rss, out = timed([*lstmgen, "tokenize", str(corpus), "-o", str(args.workdir / "big.tok"), "--vocab-size", str(args.vocab_size), "--json"])
    summary = json.loads(out)
    run_file = args.workdir / "run.toml"
    run_file.write_text("[train]\nmax_steps = 20\nval_every = 20\nval_max_tokens = 20000\n")
    train_wall, train_rss, _ = timed([*lstmgen, "train", str(corpus), "--tokenizer", str(args.workdir / "big.tok"),
                                      "-o", str(args.workdir / "big.lstmgen"), "--config", str(run_file)])
    rows = [
        ("corpus", f"{actual / 1e6:,.0f} MB, {summary['tokens']:,} tokens (vocabulary {summary['vocab_size']})"),
        ("`lstmgen tokenize` wall time", f"{wall:.1f} s (tokenizer training {summary['seconds']['tokenizer_training']:.1f} s, encoding {summary['seconds']['encoding']:.1f} s)"),
        ("encoding throughput", f"{summary['encode_mb_per_second']:.1f} MB/s"),
        ("end-to-end tokenize throughput", f"{actual / 1e6 / wall:.1f} MB/s"),
        ("`lstmgen tokenize` peak RSS", f"{rss / 2**20:,.0f} MiB"),
        ("`lstmgen train` (20 steps, default model) peak RSS", f"{train_rss / 2**20:,.0f} MiB ({train_wall:.0f} s)"),
    ]
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
