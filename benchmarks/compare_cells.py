"""Compare the recurrent cells (lstm, gru, paper) at an equal parameter count and CPU-time budget.

    python benchmarks/compare_cells.py                   # the documented run: 30 / 15 CPU-s per run, seeds 1 2
    python benchmarks/compare_cells.py --budget 900 --memory-budget 600 --seeds 1 2 3
    python benchmarks/compare_cells.py --only memory     # just the long-range memory test
    python benchmarks/compare_cells.py --render-only     # rewrite docs/cells.md from WORKDIR/results.json

The documented run needs 18 × (budget + ~5) CPU-seconds: about 11 minutes on two free cores
(it took 21 on a shared machine).

Part 1, language modelling: char-level models (SentencePiece `char` tokenizer) on tiny Shakespeare
and on the Tang poems (corpora/), each cell trained with lstmgen's Trainer for the same budget of
CPU seconds on one thread, at (nearly) the same total parameter count: the embedding width, depth
and everything else are shared, and the hidden size of gru and paper is chosen so that their
total parameter count is closest to lstm's. The Trainer's schedule needs a step count: every run
first times a few training steps of its own model (CPU time, one thread) and gets
`budget / seconds-per-step` steps. Reported: the best validation bits per character (the Trainer's
held-out tail), mean ± half-range over the seeds, and training tokens per CPU-second.

Part 2, long-range memory: a synthetic corpus (`memory_text`) in which every line starts with a key
letter that must be recalled after a gap of spaces whose length is log-uniform on 0…319 (28 % of
the keys lie further back than the BPTT window of 64). Its entropy rate is known exactly
(`optimal_bits_per_char`); the trained models are scored on a fresh test text: bits per character
against that optimum, and recall (accuracy and bits of the recalled letter) by gap length.

Runs go two at a time (`--workers`), each on one thread; budgets are CPU time, so a busy machine
slows the experiment down but changes its results little. Results: JSON in --workdir, Markdown
tables printed and written into docs/cells.md between <!-- cells-compare:start/end --> markers.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CELLS = ("lstm", "gru", "paper")
CORPORA = {
    "shakespeare": {"path": ROOT / "corpora" / "tinyshakespeare.txt", "coverage": 1.0},
    "tang": {"path": ROOT / "corpora" / "tang-poems.simplified.txt", "coverage": 0.99},
}
DOC = ROOT / "docs" / "cells.md"

# -- the long-range memory corpus ---------------------------------------------------------------

KEYS = "ABCDEFGHIJKLMNOP"  # 16 keys: 4 bits each
MAX_GAP = 320
GAP_BINS = [(0, 4), (4, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, MAX_GAP + 1)]


def gap_probabilities() -> list[float]:
    """P(G = g) for g = 0 … MAX_GAP − 1: G = ⌊2^U⌋ − 1 with U uniform on [0, log2(MAX_GAP + 1)).

    Log-uniform: as many lines per octave of gap length (0–1, 2–3, 4–7, …, 256–320), so short
    gaps, from which recall is learned first, are common and gaps of hundreds are not rare
    (P(G ≥ 128) ≈ 0.16, P(G ≥ 256) ≈ 0.04).
    """
    top = math.log2(MAX_GAP + 1)
    return [(math.log2(g + 2) - math.log2(g + 1)) / top for g in range(MAX_GAP)]


def memory_text(num_records: int, seed: int) -> tuple[str, list[tuple[int, int, str]]]:
    """Lines `K, G spaces, ':', K, newline`; returns the text and (offset, G, K) per line.

    K is uniform over KEYS and G is drawn from gap_probabilities(), both independently per line.
    (The filler is a space: a tokenizer trained on text without any space cannot round-trip
    spaces; see the report.)
    """
    rng = random.Random(seed)
    top = math.log2(MAX_GAP + 1)
    parts: list[str] = []
    records = []
    offset = 0
    for _ in range(num_records):
        key = rng.choice(KEYS)
        gap = min(MAX_GAP - 1, int(2 ** (rng.random() * top)) - 1)
        line = key + " " * gap + ":" + key + "\n"
        records.append((offset, gap, key))
        parts.append(line)
        offset += len(line)
    return "".join(parts), records


def optimal_bits_per_char() -> float:
    """The source's entropy rate: (bits per line) / (characters per line), in expectation.

    A line carries log2(16) bits in its key and H(G) bits in where its ':' falls (an ideal
    predictor, which counts the spaces, pays exactly H(G) over the G spaces and the ':'); the
    recalled key and the newline are certain. A line has E[G] + 4 characters; by the
    renewal-reward theorem the rate is the ratio of the two expectations.
    """
    probabilities = gap_probabilities()
    entropy = -sum(p * math.log2(p) for p in probabilities if p > 0)
    mean_gap = sum(g * p for g, p in enumerate(probabilities))
    return (math.log2(len(KEYS)) + entropy) / (mean_gap + 4)


def mean_gap() -> float:
    return sum(g * p for g, p in enumerate(gap_probabilities()))


def position_bits(gap: int) -> list[float]:
    """The ideal predictor's bits at each of a line's gap positions (G spaces, then the ':')."""
    probabilities = gap_probabilities()
    survival = 1.0  # P(G ≥ n)
    bits = []
    for n in range(gap + 1):
        hazard = probabilities[n] / survival  # P(G = n | G ≥ n)
        bits.append(-math.log2(hazard) if n == gap else -math.log2(1 - hazard))
        survival -= probabilities[n]
    return bits


# -- sizes --------------------------------------------------------------------------------------


def parameter_count(cell: str, vocab: int, embedding: int, hidden: int, layers: int, tie: bool = True) -> int:
    from lstmgen.bundle import expected_shapes
    from lstmgen.config import ModelConfig

    config = ModelConfig(vocab_size=vocab, embedding_size=embedding, hidden_size=hidden, num_layers=layers, dropout=0.0, cell=cell, tie_weights=tie)
    return sum(math.prod(shape) for shape in expected_shapes(config).values())


def matched_hidden(cell: str, target: int, vocab: int, embedding: int, layers: int, tie: bool) -> int:
    return min(range(8, 2048), key=lambda h: (abs(parameter_count(cell, vocab, embedding, h, layers, tie) - target), h))


# -- one training run (in a worker process) -------------------------------------------------------


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from lstmgen.config import ModelConfig, TrainConfig
    from lstmgen.data import StreamBatcher, TokenizedCorpus
    from lstmgen.model import LSTMLanguageModel, detach_state
    from lstmgen.trainer import Trainer

    torch.set_num_threads(job["threads"])
    corpus = TokenizedCorpus.open(Path(job["tokens"]))
    model_config = ModelConfig(vocab_size=corpus.meta["vocab_size"], embedding_size=job["embedding"], hidden_size=job["hidden"],
                               num_layers=job["layers"], dropout=job["dropout"], cell=job["cell"], tie_weights=job["tie"])
    # Calibrate: CPU seconds per training step of this model, on this data (3 steps after a warm-up).
    torch.manual_seed(job["seed"])
    model = LSTMLanguageModel(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = corpus.tokens()
    batcher = StreamBatcher(tokens[: corpus.split], job["batch_size"], job["seq_len"], job["seed"])
    state = None
    times = []
    for window in range(4):
        started = time.process_time()
        x, y = (torch.from_numpy(np.asarray(a, dtype=np.int64)) for a in batcher.batch(0, window))
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state = detach_state(state)
        times.append(time.process_time() - started)
    per_step = statistics.median(times[1:])
    steps = max(10, int(job["budget"] / per_step))
    del model, optimizer

    train_config = TrainConfig(batch_size=job["batch_size"], seq_len=job["seq_len"], learning_rate=job["lr"], warmup_steps=min(50, steps // 10),
                               max_steps=steps, val_every=max(1, steps // job["validations"]), val_max_tokens=job["val_max_tokens"],
                               seed=job["seed"], device="cpu", threads=job["threads"], log_every=1, checkpoint_every=1e8)
    output = Path(job["output"])
    clock = {"last": time.process_time(), "train": 0.0, "other": 0.0}

    def on_event(event: dict[str, Any]) -> None:
        now = time.process_time()
        clock["train" if event["event"] == "step" else "other"] += now - clock["last"]
        clock["last"] = now

    trainer = Trainer(corpus, model_config, train_config, output, on_event=on_event)
    result = trainer.run()
    return {**{k: job[k] for k in ("kind", "corpus", "cell", "seed", "hidden", "embedding", "layers", "budget")},
            "parameters": trainer.model.num_parameters(), "steps": result.steps, "tokens_seen": result.tokens_seen,
            "calibrated_step_cpu_s": per_step, "train_cpu_s": clock["train"], "other_cpu_s": clock["other"],
            "tokens_per_cpu_s": result.tokens_seen / max(clock["train"], 1e-9), "wall_s": result.elapsed,
            "best_val_bits_per_char": result.best_val_bits_per_char, "output": str(output),
            # The largest |state| entry carried at the end of training, after this many tokens since the last reset.
            "carried_state_max": max(float(s.abs().max()) for s in trainer.state) if trainer.state is not None else None,
            "carried_tokens": trainer.progress.window * job["seq_len"]}


# -- scoring the memory models ------------------------------------------------------------------


def score_memory(bundle: Path, text: str, records: list[tuple[int, int, str]]) -> dict[str, Any]:
    import numpy as np
    import torch

    import lstmgen

    torch.set_num_threads(1)
    lm = lstmgen.load(bundle)
    ids = lm.tokenizer.encode(text)
    if len(ids) != len(text):
        raise SystemExit("the memory corpus must tokenize one token per character")
    tokens = torch.tensor([[lm.tokenizer.bos_id] + ids])
    bits = np.empty(len(text))
    correct = np.zeros(len(text), dtype=bool)
    state = None
    with torch.inference_mode():
        for begin in range(0, len(text), 4096):
            logits, state = lm.model(tokens[:, begin : begin + 4096], state)
            log_probs = torch.log_softmax(logits[0].double(), dim=-1)
            target = tokens[0, begin + 1 : begin + 4097]
            rows = log_probs[: len(target)]
            bits[begin : begin + len(target)] = (-rows.gather(1, target[:, None])[:, 0] / math.log(2)).numpy()
            correct[begin : begin + len(target)] = (rows.argmax(-1) == target).numpy()
    optimal = np.zeros(len(text))
    recall_positions, gaps = [], []
    for offset, gap, _ in records:
        optimal[offset] = math.log2(len(KEYS))
        optimal[offset + 1 : offset + gap + 2] = position_bits(gap)  # the spaces and the ':'
        recall_positions.append(offset + gap + 2)
        gaps.append(gap)
    recall_positions_arr, gaps_arr = np.array(recall_positions), np.array(gaps)
    by_gap = []
    for low, high in GAP_BINS:
        mask = (gaps_arr >= low) & (gaps_arr < high)
        chosen = recall_positions_arr[mask]
        by_gap.append({"gap": [low, high], "lines": int(mask.sum()), "accuracy": float(correct[chosen].mean()) if mask.any() else None,
                       "bits": float(bits[chosen].mean()) if mask.any() else None})
    return {"bits_per_char": float(bits.sum() / len(text)), "optimal_bits_per_char_sample": float(optimal.sum() / len(text)),
            "state_max_at_end": max(float(s.abs().max()) for s in state),
            "recall_accuracy": float(correct[recall_positions_arr].mean()), "recall_bits": float(bits[recall_positions_arr].mean()),
            "excess_bits_per_line": float((bits.sum() - optimal.sum()) / len(records)),
            "excess_bits_per_line_at_recall": float(bits[recall_positions_arr].sum() / len(records)), "by_gap": by_gap}


# -- the experiment -----------------------------------------------------------------------------


def prepare_corpora(workdir: Path, names: list[str], memory: bool, memory_chars: int) -> dict[str, Path]:
    from lstmgen.config import TokenizerConfig
    from lstmgen.data import TokenizedCorpus, tokenize_corpus

    directories = {}
    sources = {name: (CORPORA[name]["path"], CORPORA[name]["coverage"]) for name in names}
    if memory:
        path = workdir / "memory" / "memory.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            text, _ = memory_text(int(memory_chars / (mean_gap() + 4)), seed=12345)
            path.write_text(text, encoding="utf-8")
        sources["memory"] = (path, 1.0)
    for name, (path, coverage) in sources.items():
        directory = workdir / name / "tokens"
        try:
            TokenizedCorpus.open(directory)
        except Exception:
            print(f"tokenizing {path.name} ...", file=sys.stderr, flush=True)
            tokenize_corpus([path], TokenizerConfig(model_type="char", character_coverage=coverage), directory, 0.1)
        directories[name] = directory
    return directories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--budget", type=float, default=30.0, help="CPU seconds of training per run, language models (default 30)")
    parser.add_argument("--memory-budget", type=float, default=15.0, help="CPU seconds of training per run, memory test (default 15)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--only", choices=["corpora", "memory"], help="run only one part")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (each on --threads threads)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lstmgen-compare-cells"))
    parser.add_argument("--no-write", action="store_true", help="do not write docs/cells.md")
    parser.add_argument("--render-only", action="store_true", help="re-render WORKDIR/results.json (of a run with the same options) and write docs/cells.md")
    args = parser.parse_args()
    if args.render_only:
        summary = json.loads((args.workdir / "results.json").read_text(encoding="utf-8"))
        markdown = render(summary, args)
        print(markdown)
        if not args.no_write:
            write_section(markdown)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    do_corpora, do_memory = args.only in (None, "corpora"), args.only in (None, "memory")
    started = time.time()
    directories = prepare_corpora(args.workdir, args.corpora if do_corpora else [], do_memory, memory_chars=3_000_000)

    from lstmgen.data import TokenizedCorpus

    # Shared settings: char-level, embedding 64, 2 layers, lstm H = 128, batches of 16 × 64 tokens
    # (small batches: in a budget of a minute, the number of updates decides whether a model gets
    # past the first plateau, at the unigram loss); the memory test: 1 layer, embedding 64, H = 128.
    # The memory test unties the head: with tied weights the 16 keys, which are equally likely
    # wherever they are predicted, are pushed towards one shared embedding, which could make them
    # hard to tell apart as inputs.
    settings = {"corpora": dict(embedding=64, layers=2, lstm_hidden=128, tie=True, batch_size=16, seq_len=64, lr=3e-3, dropout=0.0, budget=args.budget,
                                validations=1, val_max_tokens=60_000),
                "memory": dict(embedding=64, layers=1, lstm_hidden=128, tie=False, batch_size=16, seq_len=64, lr=3e-3, dropout=0.0,
                               budget=args.memory_budget, validations=1, val_max_tokens=60_000)}
    jobs = []
    names = (args.corpora if do_corpora else []) + (["memory"] if do_memory else [])
    for name in names:
        kind = "memory" if name == "memory" else "corpora"
        s = settings[kind]
        vocab = TokenizedCorpus.open(directories[name]).meta["vocab_size"]
        target = parameter_count("lstm", vocab, s["embedding"], s["lstm_hidden"], s["layers"], s["tie"])
        for seed in args.seeds:
            for cell in args.cells:
                hidden = s["lstm_hidden"] if cell == "lstm" else matched_hidden(cell, target, vocab, s["embedding"], s["layers"], s["tie"])
                jobs.append({"kind": kind, "corpus": name, "cell": cell, "seed": seed, "hidden": hidden, "tokens": str(directories[name]),
                             "output": str(args.workdir / name / f"{cell}-s{seed}.lstmgen"), "threads": args.threads,
                             **{k: v for k, v in s.items() if k != "lstm_hidden"}})
    print(f"{len(jobs)} runs, {args.workers} at a time ...", file=sys.stderr, flush=True)
    results = []
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for result in pool.imap_unordered(run_one, jobs):
            results.append(result)
            print(f"  {result['corpus']:11s} {result['cell']:5s} seed {result['seed']}: {result['best_val_bits_per_char']:.4f} bits/char, "
                  f"{result['steps']} steps, {result['tokens_per_cpu_s']:.0f} tok/CPU-s, train {result['train_cpu_s']:.0f} CPU-s", file=sys.stderr, flush=True)
    memory_scores = {}
    if do_memory:
        text, records = memory_text(4000, seed=999)
        for result in results:
            if result["kind"] == "memory":
                result["memory"] = score_memory(Path(result["output"]), text, records)
        memory_scores = {"optimal_bits_per_char": optimal_bits_per_char(), "test_lines": len(records), "test_chars": len(text)}
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "settings": settings, "results": sorted(results, key=lambda r: (r["corpus"], r["cell"], r["seed"])),
               "memory": memory_scores, "wall_seconds": time.time() - started}
    (args.workdir / "results.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    markdown = render(summary, args)
    print(markdown)
    print(f"results: {args.workdir / 'results.json'}; {summary['wall_seconds']:.0f} s wall", file=sys.stderr)
    if not args.no_write:
        write_section(markdown)


def train_loss_at(result: dict[str, Any], step: int, window: int = 50) -> float | None:
    """Mean training loss (bits per token) over steps step−window+1 … step of a run's metrics log."""
    path = Path(result["output"] + ".run") / "metrics.jsonl"
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return None
    losses = [r["loss"] for r in records if r.get("type") == "train" and step - window < r["step"] <= step]
    return statistics.fmean(losses) / math.log(2) if losses else None


def _mean_spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    spread = (max(values) - min(values)) / 2
    return f"{mean:.3f} ± {spread:.3f}"


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    results = summary["results"]
    seeds = " ".join(str(s) for s in args.seeds)
    lines = [f"Command: `python benchmarks/compare_cells.py --budget {args.budget:g} --memory-budget {args.memory_budget:g} --seeds {seeds}`"
             f" ({len(results)} runs, {args.workers} at a time, {args.threads} thread each; {summary['wall_seconds'] / 60:.0f} min wall).", ""]
    corpora = [c for c in args.corpora if any(r["corpus"] == c for r in results)]
    common = {c: min(r["steps"] for r in results if r["corpus"] == c) for c in corpora + ["memory"] if any(r["corpus"] == c for r in results)}
    if corpora:
        lines += ["| corpus | cell | H | parameters | val bits/char (mean ± half-range) | training tokens per CPU-s | steps | tokens seen | train CPU-s | max \\|state\\| carried |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for corpus in corpora:
            for cell in args.cells:
                runs = [r for r in results if r["corpus"] == corpus and r["cell"] == cell]
                if not runs:
                    continue
                lines.append(f"| {corpus} | {cell} | {runs[0]['hidden']} | {runs[0]['parameters']:,} | {_mean_spread([r['best_val_bits_per_char'] for r in runs])} | "
                             f"{statistics.fmean(r['tokens_per_cpu_s'] for r in runs):,.0f} | {statistics.fmean(r['steps'] for r in runs):.0f} | "
                             f"{statistics.fmean(r['tokens_seen'] for r in runs) / 1e6:.2f}M | {statistics.fmean(r['train_cpu_s'] for r in runs):.0f} | "
                             f"{max(r['carried_state_max'] or 0 for r in runs):,.1f} |")
        lines += ["", "The same runs at an equal number of updates instead of equal CPU time: training loss in bits per token (≈ per "
                  "character) over the 50 steps up to the step count of the slowest run (the schedules differ: each run decays its "
                  "learning rate over its own length).", "",
                  "| corpus | at step | " + " | ".join(args.cells) + " |", "|---|---:|" + "---:|" * len(args.cells)]
        for corpus in corpora:
            row = []
            for cell in args.cells:
                values = [v for v in (train_loss_at(r, common[corpus]) for r in results if r["corpus"] == corpus and r["cell"] == cell) if v is not None]
                row.append(_mean_spread(values) if values else "—")
            lines.append(f"| {corpus} | {common[corpus]} | " + " | ".join(row) + " |")
        lines.append("")
    memory = [r for r in results if r["kind"] == "memory"]
    if memory:
        optimum = summary["memory"]["optimal_bits_per_char"]
        lines += [f"Memory test: optimal {optimum:.4f} bits/char (exact entropy rate; {summary['memory']['test_lines']} test lines, "
                  f"{summary['memory']['test_chars']:,} characters). A model that never recalls pays 4 more bits per line "
                  f"(+{4 / (mean_gap() + 4):.4f} bits/char).", "",
                  "| cell | H | parameters | test bits/char | above optimal | recall accuracy | recall bits (optimal 0, chance 4) | tokens per CPU-s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for cell in args.cells:
            runs = [r for r in memory if r["cell"] == cell]
            if not runs:
                continue
            bpc = [r["memory"]["bits_per_char"] for r in runs]
            lines.append(f"| {cell} | {runs[0]['hidden']} | {runs[0]['parameters']:,} | {_mean_spread(bpc)} | "
                         f"{statistics.fmean(b - optimum for b in bpc):+.4f} | {_mean_spread([r['memory']['recall_accuracy'] for r in runs])} | "
                         f"{_mean_spread([r['memory']['recall_bits'] for r in runs])} | {statistics.fmean(r['tokens_per_cpu_s'] for r in runs):,.0f} |")
        lines += ["", "Recall accuracy by gap length (mean over seeds; chance 1/16 = 0.06):", "",
                  "| gap | lines | " + " | ".join(c for c in args.cells if any(r["cell"] == c for r in memory)) + " |",
                  "|---|---:|" + "---:|" * len([c for c in args.cells if any(r["cell"] == c for r in memory)])]
        for index, (low, high) in enumerate(GAP_BINS):
            label = f"{low}–{high - 1}"
            count = memory[0]["memory"]["by_gap"][index]["lines"]
            cells_text = []
            for cell in args.cells:
                runs = [r for r in memory if r["cell"] == cell]
                if runs:
                    values = [r["memory"]["by_gap"][index]["accuracy"] for r in runs if r["memory"]["by_gap"][index]["accuracy"] is not None]
                    cells_text.append(f"{statistics.fmean(values):.2f}" if values else "—")
            lines.append(f"| {label} | {count} | " + " | ".join(cells_text) + " |")
        lines.append("")
    return "\n".join(lines)


def write_section(markdown: str) -> None:
    from docsection import write_section as write

    write(DOC, "cells-compare", markdown, "# Recurrent cells\n\n")
    print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
