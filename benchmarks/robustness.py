"""Robust training on every kind of corpus: fresh-state quality, cold starts and epoch boundaries.

Users meet a model from a fresh state: every sample starts from one, and so does `eval --streams N`
for every stream. A model that needs thousands of tokens of carried state before it predicts well
scores well on held-out text read as one stream and badly everywhere users look. This benchmark
trains the plain command (`lstmgen train CORPUS --max-time 15m`, one thread) on several corpora of
different kinds and sizes and reads each model's held-out text

* as ONE stream (state carried from the first token to the last): `lstmgen eval --streams 1`;
* as 64 streams, each from a fresh state: `lstmgen eval --streams 64`;
* from a cold start: the first 256 tokens of each held-out paragraph (poem, for blank-line
  documents) after the start id, and the same tokens read warm, inside the one-stream pass. The
  difference is the cost of starting from a fresh state, separated from how hard paragraph
  openings are anyway;

and checks the trainer's own final validation against `lstmgen eval` of the written bundle on the
same text, and the training loss across every epoch boundary (50 steps before against 50 after).

    python benchmarks/robustness.py train --label after --corpora shakespeare,pride --jobs 2
    python benchmarks/robustness.py score --label after
    python benchmarks/robustness.py report            # the table in docs/benchmarks.md

`--src DIR` trains with the lstmgen source tree in DIR instead (e.g. a worktree of an older commit,
for the "before" column); scoring always uses this checkout's evaluation code, so both columns are
measured the same way. Finished runs and scores are skipped on rerun (`--force` redoes them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "corpora"
WORK = ROOT / "out" / "robust"
RESULTS = ROOT / "benchmarks" / "results" / "robustness.jsonl"
DOC = ROOT / "docs" / "benchmarks.md"


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    kind: str
    source: str
    documents: str = "file"
    #: A separate held-out file; None: the last 10 % of the corpus (lstmgen's own validation split).
    heldout: str | None = None
    #: Train on the first this many bytes of `source` (cut at a line end).
    max_bytes: int | None = None


CORPORA = {
    c.name: c
    for c in (
        Corpus("shakespeare", "plays, 1.1 MB", "tinyshakespeare.txt"),
        Corpus("pride", "novel, 0.7 MB", "pride-and-prejudice.txt"),
        Corpus("wikitext", "encyclopedia, 5 MB", "wikitext-2/train.txt", heldout="wikitext-2/valid.txt", max_bytes=5_000_000),
        Corpus("stdlib", "Python source, 2.9 MB", "python-stdlib.txt"),
        Corpus("tang", "Chinese poems, 4.3 MB, blank-line documents", "tang-poems.simplified.txt", documents="blank-line"),
    )
}


def corpus_file(corpus: Corpus) -> Path:
    """The training file: the shared corpus, or its first `max_bytes` cut at a line end."""
    source = SHARED / corpus.source
    if corpus.max_bytes is None:
        return source
    target = WORK / "data" / f"{corpus.name}.txt"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()[: corpus.max_bytes]
        data = data[: data.rindex(b"\n") + 1]
        target.write_bytes(data)
    return target


def heldout_file(corpus: Corpus) -> Path:
    """Held-out text: the separate file, or the validation split lstmgen holds out of the corpus."""
    if corpus.heldout is not None:
        return SHARED / corpus.heldout
    return validation_split_file(corpus)


def validation_split_file(corpus: Corpus) -> Path:
    """The text of the trainer's own validation split (the last 10 %, cut at a line start)."""
    target = WORK / "data" / f"{corpus.name}.valsplit.txt"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = corpus_file(corpus).read_bytes()
        split_at = int(round(len(data) * 0.9))
        offset = 0
        for line in data.splitlines(keepends=True):
            if offset >= split_at:
                break
            offset += len(line)
        target.write_bytes(data[offset:])
    return target


def run_dir(label: str, corpus: Corpus) -> Path:
    return WORK / label / corpus.name


# -- train ----------------------------------------------------------------------------------------


def train(label: str, corpus: Corpus, budget: str, src: Path | None, threads: int, force: bool, extra: list[str]) -> None:
    directory = run_dir(label, corpus)
    bundle = directory / "model.lstmgen"
    done = directory / "train.json"
    if done.exists() and not force:
        print(f"{label}/{corpus.name}: trained already", file=sys.stderr)
        return
    directory.mkdir(parents=True, exist_ok=True)
    limit = ["--max-steps", budget.removesuffix("steps")] if budget.endswith("steps") else ["--max-time", budget]
    command = [sys.executable, "-m", "lstmgen", "train", str(corpus_file(corpus)), "-o", str(bundle), *limit,
               "--threads", str(threads), "--seed", "1234", *extra]
    if corpus.documents != "file":
        command += ["--documents", corpus.documents]
    if force or not (directory / "model.lstmgen.run" / "checkpoint.ckpt").exists():
        command += ["--overwrite"] if _knows_overwrite(src) else []
    env = {**os.environ, "NO_COLOR": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    started = time.monotonic()
    with open(directory / "train.log", "w", encoding="utf-8") as log:
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=log, cwd=src or ROOT)
    record = {"label": label, "corpus": corpus.name, "command": " ".join(command[1:]), "budget": budget, "src": str(src or ROOT),
              "extra": extra, "wall_seconds": round(time.monotonic() - started, 1), "date": time.strftime("%Y-%m-%d %H:%M")}
    done.write_text(json.dumps(record) + "\n", encoding="utf-8")
    print(f"{label}/{corpus.name}: trained in {record['wall_seconds']} s", file=sys.stderr)


def _knows_overwrite(src: Path | None) -> bool:
    cli = (src or ROOT) / "lstmgen"
    return any("--overwrite" in path.read_text(encoding="utf-8") for path in cli.rglob("*.py"))


# -- score --------------------------------------------------------------------------------------


def token_nll(model, tokens, seq_len: int = 256):
    """Per-target NLL (nats) of `tokens` read as ONE stream, the state carried from first token to last."""
    import numpy as np
    import torch

    losses = np.zeros(len(tokens) - 1, dtype=np.float64)
    state = None
    growth = []  # how large the carried state grows as the stream goes on (the last tensor: c for an LSTM)
    with torch.inference_mode():
        for begin in range(0, len(tokens) - 1, seq_len):
            end = min(begin + seq_len, len(tokens) - 1)
            x = torch.from_numpy(np.asarray(tokens[begin:end], dtype=np.int64))[None]
            y = torch.from_numpy(np.asarray(tokens[begin + 1 : end + 1], dtype=np.int64))
            logits, state = model(x, state)
            losses[begin:end] = torch.nn.functional.cross_entropy(logits[0].float(), y, reduction="none").double().numpy()
            if end in (seq_len, 4 * seq_len, 16 * seq_len, 64 * seq_len, 256 * seq_len) or end == len(tokens) - 1:
                last = state[-1][:, 0]
                growth.append({"tokens": end, "mean_abs": [round(float(v), 3) for v in last.abs().mean(dim=1)],
                               "max_abs": [round(float(v), 2) for v in last.abs().amax(dim=1)]})
    return losses, growth


def epoch_boundaries(metrics: Path) -> list[dict]:
    """Mean training loss over the 50 steps before and after each epoch boundary (from metrics.jsonl)."""
    import numpy as np

    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [r for r in records if r.get("type") == "train"]
    result = []
    for previous, record in zip(steps, steps[1:]):
        if record["epoch"] == previous["epoch"]:
            continue
        boundary = previous["step"]
        before = [r["loss"] for r in steps if boundary - 50 < r["step"] <= boundary]
        after = [r["loss"] for r in steps if boundary < r["step"] <= boundary + 50]
        if before and after:
            result.append({"step": boundary, "before": float(np.mean(before)), "after": float(np.mean(after))})
    return result


#: A speaker's turn in tiny Shakespeare opens with the name alone on its line ("KING RICHARD III:").
SPEAKER = re.compile(r"[A-Z][A-Za-z' ,.&-]*:")


def paragraph_openings(corpus: Corpus) -> set[str]:
    """Characters that open at least 0.1 % of the training corpus's paragraphs (documents, for blank-line corpora)."""
    text = corpus_file(corpus).read_text(encoding="utf-8")
    firsts = Counter(p.lstrip("\n")[0] for p in re.split(r"\n[ \t\r\u3000]*\n", text) if p.strip("\n"))
    total = sum(firsts.values())
    return {char for char, count in firsts.items() if count >= 0.001 * total}


def total_steps(metrics: Path) -> int | None:
    """The last training step the run logged (the bundle's own count is the step it was saved at)."""
    records = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    steps = [r["step"] for r in records if not r.get("final") and isinstance(r.get("step"), int)]
    return max(steps) if steps else None


def score(label: str, corpus: Corpus, threads: int, force: bool) -> dict | None:
    import numpy as np
    import torch

    import lstmgen
    from lstmgen.evaluation import bounds_size, encode_text_stream, parts_nll, summarize, total_nll
    from lstmgen.data import CorpusReader

    directory = run_dir(label, corpus)
    if not (directory / "train.json").exists():
        print(f"{label}/{corpus.name}: not trained", file=sys.stderr)
        return None
    existing = [r for r in read_results() if r["label"] == label and r["corpus"] == corpus.name]
    if existing and not force:
        return existing[-1]
    torch.set_num_threads(threads)
    lm = lstmgen.load(directory / "model.lstmgen")
    model, tokenizer, starts = lm.model, lm.tokenizer, lm.fresh_starts
    heldout = heldout_file(corpus)
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, CorpusReader(heldout).lines(), lm.documents)
    began = time.monotonic()
    per_token, growth = token_nll(model, tokens)
    one = summarize(float(per_token.sum()), len(per_token), num_bytes, num_chars)
    many = summarize(*total_nll(model, tokens, num_streams=64, fresh_starts=starts), num_bytes, num_chars)
    anywhere = summarize(*total_nll(model, tokens, num_streams=64), num_bytes, num_chars)
    # Cold starts: the first 256 tokens of up to 200 paragraphs spread over the held-out text, read after
    # the start ids from a zero state, and the same tokens read warm inside the one-stream pass.
    paragraphs = starts.positions(tokens)
    paragraphs = paragraphs[paragraphs + 256 <= len(tokens) - 1]
    chosen = paragraphs[np.linspace(0, len(paragraphs) - 1, min(200, len(paragraphs))).astype(int)]
    bounds = [(int(p) - 1, int(p) - 1 + 256) for p in sorted(set(chosen.tolist()))]
    cold_nll, cold_count = parts_nll(model, tokens, bounds, starts.start_id)
    warm_nll = float(sum(per_token[start:end].sum() for start, end in bounds))
    span_bytes, span_chars = bounds_size(tokenizer, tokens, bounds, lm.documents)
    cold, warm = summarize(cold_nll, cold_count, span_bytes, span_chars), summarize(warm_nll, cold_count, span_bytes, span_chars)
    # The trainer's last validation against `lstmgen eval` (default options) of its validation split.
    training = lm.meta.get("training", {})
    split_eval = lm.evaluate_file(validation_split_file(corpus))
    samples = lm.sample_many("", 100, max_tokens=120, temperature=0.8, seed=1)
    openings = paragraph_openings(corpus)
    first_lines = [s.text.split("\n", 1)[0] for s in samples]
    starts_like_paragraphs = sum(bool(s.text) and s.text[0] in openings for s in samples) / len(samples)
    record = {
        "label": label, "corpus": corpus.name,
        "samples_start_like_paragraphs": starts_like_paragraphs,
        "samples_start_with_speaker": (
            sum(bool(SPEAKER.fullmatch(line)) for line in first_lines) / len(samples) if corpus.name == "shakespeare" else None
        ),
        "kind": corpus.kind,
        "heldout": str(heldout.relative_to(ROOT.parent)) if heldout.is_relative_to(ROOT.parent) else heldout.name,
        "model": lm.meta.get("model"),
        "steps": total_steps(directory / "model.lstmgen.run" / "metrics.jsonl"),
        "best_step": training.get("steps"),
        "tokens_seen": training.get("tokens_seen"),
        "elapsed_seconds": training.get("elapsed_seconds"),
        "bpc_one_stream": one["bits_per_char"], "nats_per_char_one_stream": one["bits_per_char"] * math.log(2),
        "bpc_64_streams": many["bits_per_char"], "bpc_64_streams_anywhere": anywhere["bits_per_char"],
        "bpc_cold_256": cold["bits_per_char"], "bpc_warm_256": warm["bits_per_char"], "cold_paragraphs": len(bounds),
        "trainer_val_bpc": training.get("best_val_bits_per_char"), "eval_val_bpc": split_eval["bits_per_char"],
        "eval_val_streams": split_eval["streams"], "epoch_boundaries": epoch_boundaries(directory / "model.lstmgen.run" / "metrics.jsonl"),
        "state_growth": growth, "samples": [s.text for s in samples[:10]], "sample_first_lines": first_lines,
        "score_seconds": round(time.monotonic() - began, 1), "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    append_result(record)
    print(f"{label}/{corpus.name}: one stream {one['bits_per_char']:.4f}, 64 streams {many['bits_per_char']:.4f} "
          f"(anywhere {anywhere['bits_per_char']:.4f}), cold {cold['bits_per_char']:.4f} vs warm {warm['bits_per_char']:.4f} bits/char",
          file=sys.stderr)
    return record


def read_results() -> list[dict]:
    if not RESULTS.exists():
        return []
    return [json.loads(line) for line in RESULTS.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_result(record: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# -- report -------------------------------------------------------------------------------------

START, END = "<!-- robustness:start -->", "<!-- robustness:end -->"


TUNING_START, TUNING_END = "<!-- robustness-tuning:start -->", "<!-- robustness-tuning:end -->"
#: The values of --reset-every compared at equal steps (the label of each run is steps-rVALUE).
TUNING_VALUES = (0, 512, 2048)


def tuning_command() -> str:
    return ("for r in 0 512 2048; do printf '[train]\\nreset_every = %s\\n' $r > r$r.toml; python benchmarks/robustness.py all "
            "--label steps-r$r --corpora shakespeare,wikitext --budget 1000steps --extra \"--config r$r.toml\"; done")


def report(labels: list[str], command: str | None = None) -> str:
    """A markdown table of docs/benchmarks.md: every corpus × label, latest record of each."""
    latest = {(r["label"], r["corpus"]): r for r in read_results()}
    rows = [
        "| corpus | run | steps | 1 stream | 64 streams | 64 vs 1 | 64 cut anywhere | cold 256 | warm 256 | cold vs warm "
        "| trainer val / eval | epoch boundaries: largest rise, largest fall (at step) | samples that open like a paragraph | largest cell state, 256 tokens → end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for corpus in CORPORA.values():
        for label in labels:
            r = latest.get((label, corpus.name))
            if r is None:
                continue
            one = r["bpc_one_stream"]
            changes = [(b["after"] - b["before"], b["step"]) for b in r["epoch_boundaries"]]
            trainer = r.get("trainer_val_bpc")
            agreement = f"{trainer:.4f} / {r['eval_val_bpc']:.4f}" if trainer else "–"
            if changes:
                (rise, _), (fall, at) = max(changes), min(changes)
                boundary = f"{rise:+.3f}, {fall:+.3f} ({at:,})" if len(changes) > 1 else f"{rise:+.3f} ({at:,})"
            else:
                boundary = "no boundary"
            opens = r.get("samples_start_like_paragraphs")
            opening = f"{opens * 100:.0f} %" if opens is not None else "–"
            growth = r.get("state_growth") or []
            state = f"{max(growth[0]['max_abs']):.0f} → {max(growth[-1]['max_abs']):.0f}" if growth else "–"
            rows.append(
                f"| {corpus.name} ({corpus.kind}) | {label} | {r['steps']:,} | {one:.4f} | {r['bpc_64_streams']:.4f} "
                f"| {_percent(r['bpc_64_streams'] / one - 1)} | {r['bpc_64_streams_anywhere']:.4f} | {r['bpc_cold_256']:.4f} "
                f"| {r['bpc_warm_256']:.4f} | {_percent(r['bpc_cold_256'] / r['bpc_warm_256'] - 1)} | {agreement} | {boundary} | {opening} | {state} |"
            )
    command = command or "python benchmarks/robustness.py all --label after && python benchmarks/robustness.py report"
    return (f"`{command}` (bits per character; lower is better; one thread per run, two runs side by side).\n\n"
            + "\n".join(rows) + "\n")


def _percent(value: float) -> str:
    return f"{value * 100:+.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "score", "report", "all"])
    parser.add_argument("--label", default="after")
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--budget", default="15m", help="--max-time of each run (e.g. 15m), or a step count such as 1000steps")
    parser.add_argument("--src", type=Path, default=None, help="train with the lstmgen source tree in this directory")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one per core)")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--extra", default="", help="extra options for lstmgen train (one string)")
    parser.add_argument("--labels", default="before,after", help="report: the runs to show, in order")
    args = parser.parse_args()
    corpora = [CORPORA[name] for name in args.corpora.split(",") if name]
    if args.phase in ("train", "all"):
        with ThreadPoolExecutor(args.jobs) as pool:
            for future in [pool.submit(train, args.label, c, args.budget, args.src, args.threads, args.force, args.extra.split()) for c in corpora]:
                future.result()
    if args.phase in ("score", "all"):
        for corpus in corpora:
            score(args.label, corpus, args.threads, args.force)
    if args.phase == "report":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from docsection import replace_section

        replace_section(DOC, START, END, report(args.labels.split(",")))
        tuning = [f"steps-r{value}" for value in TUNING_VALUES]
        replace_section(DOC, TUNING_START, TUNING_END, report(tuning, tuning_command()))
        print(f"wrote the tables in {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
