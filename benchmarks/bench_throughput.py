"""Training throughput of lstmgen's default configurations against the bound for the same shapes.

    python benchmarks/bench_throughput.py --model-types unigram --max-time 5m   # the default run
    python benchmarks/bench_throughput.py --model-types char --max-time 2m

For each tokenizer type the script resolves the configuration `lstmgen train CORPUS --max-time T`
would use (tokenizer, `suggest_model`, `apply_device_defaults`, `budget_dropout`, TrainConfig
defaults) and measures, in the same process and on the same threads:

* **bound** — the raw work of one step for those shapes and nothing else: embedding → nn.LSTM →
  tied linear head → cross-entropy, forward and backward, on tokens already in memory (no data
  loading, no optimizer, no clipping, no carried state, no logging, no validation, no files);
  measured before and after the run, the faster of the two (the conservative choice on a
  shared machine);
* **lstmgen** — `Trainer.run()` for the whole time budget with every default on: the data stream,
  AdamW, clipping, carried state, logging, metrics file, validation over the whole held-out split
  at the default (adaptive) interval, checkpoints, bundles. Its tokens/s is tokens trained over
  the whole `run()` wall time.

The run's bundle is scored as benchmarks/quality.py scores everything (the held-out text read as
one stream), so the default run's quality at that budget comes out of the same measurement.
Results are printed and written into docs/benchmarks.md between the throughput markers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from docsection import write_section  # noqa: E402
from quality import Split, score  # noqa: E402

from lstmgen.config import TokenizerConfig, TrainConfig, parse_duration  # noqa: E402
from lstmgen.data import tokenize_corpus  # noqa: E402
from lstmgen.model import LSTMLanguageModel  # noqa: E402
from lstmgen.sizing import apply_device_defaults, budget_dropout, measure_tokens_per_second, suggest_model  # noqa: E402
from lstmgen.trainer import Trainer  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "benchmarks" / "results" / "throughput.jsonl"


def bound_tokens_per_second(model: LSTMLanguageModel, batch: int, seq_len: int, steps: int) -> float:
    """Forward + backward of the bare network on resident random tokens."""
    vocab = model.config.vocab_size
    tokens = torch.randint(3, vocab, (batch, seq_len + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]
    model.train()
    for _ in range(2):  # warm-up: oneDNN primitive creation, allocator
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()
    started = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        logits, _ = model(x)
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()
    return steps * batch * seq_len / (time.perf_counter() - started)


def lstmgen_run(corpus, model_config, train_config: TrainConfig, output: Path) -> tuple[float, int, Trainer]:
    events: list[dict] = []
    trainer = Trainer(corpus, model_config, train_config, output, on_event=events.append)
    started = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - started
    validations = sum(1 for event in events if event["event"] == "val")
    return result.tokens_seen / wall, validations, trainer


def held_out_nats_per_char(bundle_path: Path, corpus_path: Path) -> float:
    """Scored exactly as benchmarks/quality.py scores every contestant."""
    from lstmgen.bundle import load_bundle
    from lstmgen.evaluation import total_nll

    bundle = load_bundle(bundle_path)
    model = bundle.build_model("cpu")
    return score(lambda tokens: total_nll(model, tokens, num_streams=1)[0], bundle.tokenizer, Split.of(corpus_path).val_text)["nats_per_char"]


def measure(corpus_path: Path, model_type: str, max_time: float, bound_steps: int, work: Path) -> dict:
    tokenized = tokenize_corpus([corpus_path], TokenizerConfig(model_type=model_type), work / f"tokens-{model_type}", 0.1)
    device = torch.device("cpu")
    config = TrainConfig(max_time=max_time, threads=torch.get_num_threads())
    apply_device_defaults(config, device)
    model_config = suggest_model(tokenized.split, tokenized.meta["vocab_size"], device)
    model_config.dropout = budget_dropout(model_config, config, tokenized.split, lambda: measure_tokens_per_second(model_config, config, device))
    torch.manual_seed(0)
    before = bound_tokens_per_second(LSTMLanguageModel(model_config), config.batch_size, config.seq_len, bound_steps)
    output = work / f"{model_type}.lstmgen"
    speed, validations, trainer = lstmgen_run(tokenized, model_config, config, output)
    after = bound_tokens_per_second(LSTMLanguageModel(model_config), config.batch_size, config.seq_len, bound_steps)
    bound = max(before, after)  # the faster measurement: the conservative bound on a noisy machine
    return {"model_type": model_type, "vocab": model_config.vocab_size, "hidden": model_config.hidden_size, "layers": model_config.num_layers,
            "dropout": model_config.dropout, "batch": config.batch_size, "seq_len": config.seq_len, "max_time": max_time,
            "steps": trainer.progress.step, "validations": validations, "bound_before": before, "bound_after": after, "bound": bound,
            "lstmgen": speed, "ratio": speed / bound, "nats_per_char": held_out_nats_per_char(output, corpus_path)}


def write_doc(rows: list[dict]) -> str:
    """The table of the newest record per tokenizer type (runs of one type at a time accumulate)."""
    latest = {row["model_type"]: row for row in rows}
    lines = ["| tokenizer | model | batch × window | budget | steps (validations) | bound tok/s (before / after) | lstmgen tok/s | ratio | held-out nats/char | measured |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in latest.values():
        bound = max(r["bound_before"], r["bound_after"])
        lines.append(f"| {r['model_type']} (V={r['vocab']}) | {r['layers']}×{r['hidden']} | {r['batch']} × {r['seq_len']} | {r['max_time'] / 60:g} min | "
                     f"{r['steps']:,} ({r['validations']}) | {bound:,.0f} ({r['bound_before']:,.0f} / {r['bound_after']:,.0f}) | "
                     f"{r['lstmgen']:,.0f} | **{r['lstmgen'] / bound:.2f}** | {r['nats_per_char']:.3f} | {r['date']}, {r['threads']} threads, {r['corpus']} |")
    table = "\n".join(lines) + "\n"
    write_section(DOC, "throughput", table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "tinyshakespeare.txt")
    parser.add_argument("--model-types", default="unigram,char")
    parser.add_argument("--max-time", default="5m", help="training budget per tokenizer type")
    parser.add_argument("--bound-steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        rows = [measure(args.corpus, model_type, parse_duration(args.max_time), args.bound_steps, Path(work)) for model_type in args.model_types.split(",")]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as handle:
        for row in rows:
            row.update({"date": time.strftime("%Y-%m-%d"), "threads": args.threads, "corpus": args.corpus.name, "torch": torch.__version__})
            print(json.dumps(row))
            handle.write(json.dumps(row) + "\n")
    if not args.no_write:
        history = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
        print(write_doc(history))


if __name__ == "__main__":
    main()
