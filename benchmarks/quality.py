"""Best model per CPU-minute: lstmgen's defaults against what users would pick instead.

Every contestant trains on the same corpus for the same wall-clock budget on the same number of
threads, and is scored the same way: the summed negative log-likelihood of the held-out text (the
last 10 % of the corpus, cut at the first line that starts at or after 90 % of its bytes, which is
lstmgen's own split), read as ONE stream from its first character to its last with the state (or,
for the transformer, the context window) carried through, divided by the number of characters.

Contestants:

* ``lstmgen`` / ``lstmgen-char`` / ``lstmgen-subword`` — the command a user types,
  ``lstmgen train CORPUS --max-time Bm`` (plus ``--model-type char`` or ``--model-type unigram``);
  its --max-time counts the whole training loop: periodic validation, checkpoints and bundles
  (training its tokenizer and encoding the corpus come before and take a few seconds).
* ``sgd-lstm`` — the classic PyTorch word-language-model example's loop, rewritten for these
  tokens: embedding → 2-layer nn.LSTM → linear decoder (tied), uniform(−0.1, 0.1) init, plain SGD at
  lr 20 divided by 4 whenever an epoch's validation loss does not improve, gradient clipping 0.25,
  batch 20 × bptt 35, dropout 0.2, no tuning. Same tokenizer, hidden and embedding sizes as lstmgen's
  default model for the corpus. Its schedule does not depend on the budget, so one run serves every
  budget: it is scored at each budget on the way (the clock stops while it is scored).
* ``gpt`` — a small GPT in nanoGPT's style (pre-LayerNorm blocks, causal self-attention through
  scaled_dot_product_attention, heads of 32 dimensions, GELU MLP, learned positions, tied head) with
  4 layers as wide as brings its parameter count closest to lstmgen's default model's, the same tokenizer, AdamW (lr 1e-3, betas 0.9/0.99, weight
  decay 0.1), 100 warm-up steps, cosine decay to lr/10 over the budget, no dropout, clipping 1.0,
  batch 16 × context 128 — nanoGPT's CPU recipe (small batches for many updates, dropout 0 for short
  runs), with a context of 128 subword tokens (~300 characters) instead of its 64 characters. It
  gets a run per budget so its schedule always ends with the budget.

The references' clocks count training steps only (not data preparation or scoring), which
favours them slightly over lstmgen, whose budget counts validation and checkpoints too.

Results go to a JSON-lines file (one record per contestant × budget; existing records are kept
and skipped unless --force), and ``--report`` turns them into the markdown table in
docs/benchmarks.md between the ``quality-table`` markers.

    python benchmarks/quality.py --corpus ../shared/corpora/tinyshakespeare.txt --name shakespeare
    python benchmarks/quality.py --corpus ../shared/corpora/tang-poems.simplified.txt --name tang
    python benchmarks/quality.py --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docsection import write_section  # noqa: E402
from lstmgen.bundle import load_bundle  # noqa: E402
from lstmgen.data import CorpusReader  # noqa: E402
from lstmgen.evaluation import encode_text_stream, total_nll  # noqa: E402
from lstmgen.tokenizer import Tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "quality.jsonl"
DOC = ROOT / "docs" / "benchmarks.md"
LABELS = {"lstmgen": "lstmgen defaults (subword)", "lstmgen-char": "lstmgen `--model-type char`", "lstmgen-subword": "lstmgen `--model-type unigram`",
          "sgd-lstm": "classic SGD LSTM (word-language-model example)", "gpt": "small GPT (nanoGPT recipe)"}
LSTMGEN_VARIANTS = {"lstmgen": [], "lstmgen-char": ["--model-type", "char"], "lstmgen-subword": ["--model-type", "unigram"]}


@dataclasses.dataclass
class Split:
    """The corpus cut the way lstmgen cuts it: train text, held-out text and its size."""

    train_text: str
    val_text: str

    @classmethod
    def of(cls, corpus: Path, val_fraction: float = 0.1) -> Split:
        lines = list(CorpusReader(corpus, "strict").lines())
        total = sum(len(line.encode("utf-8")) for line in lines)
        split_at = int(round(total * (1.0 - val_fraction)))
        offset = 0
        for index, line in enumerate(lines):
            if offset >= split_at:
                return cls("".join(lines[:index]), "".join(lines[index:]))
            offset += len(line.encode("utf-8"))
        raise SystemExit(f"{corpus}: too small to split")


def score(model_nll: Callable[[np.ndarray], float], tokenizer: Tokenizer, val_text: str) -> dict[str, float]:
    """Nats per character (and bits per char/byte) of the held-out text read as one stream."""
    tokens, num_bytes, num_chars = encode_text_stream(tokenizer, val_text.splitlines(keepends=True))
    nll = model_nll(tokens)
    return {"nats_per_char": nll / num_chars, "bits_per_char": nll / num_chars / math.log(2),
            "bits_per_byte": nll / num_bytes / math.log(2), "val_tokens": int(len(tokens) - 1), "val_chars": num_chars}


# ---------------------------------------------------------------------------------------------
# lstmgen: the command a user types.


def run_lstmgen(variant: str, corpus: Path, budget_min: float, threads: int, seed: int, work: Path, split: Split) -> dict:
    output = work / f"{variant}-{budget_min:g}m.lstmgen"
    command = [sys.executable, "-m", "lstmgen", "train", str(corpus), "-o", str(output), "--max-time", f"{budget_min:g}m",
               "--threads", str(threads), "--seed", str(seed), *LSTMGEN_VARIANTS[variant]]
    started = time.monotonic()
    subprocess.run(command, check=True, env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    bundle = load_bundle(output)
    model = bundle.build_model("cpu")
    tokenizer = bundle.tokenizer
    torch.set_num_threads(threads)
    result = score(lambda tokens: total_nll(model, tokens, num_streams=1)[0], tokenizer, split.val_text)
    training = bundle.meta.get("training", {})
    result.update({"command": " ".join(["lstmgen", "train", corpus.name, "--max-time", f"{budget_min:g}m", *LSTMGEN_VARIANTS[variant]]),
                   "parameters": model.num_parameters(), "vocab_size": tokenizer.vocab_size, "wall_seconds": round(wall, 1),
                   "model": bundle.meta.get("model"), "steps": training.get("steps"), "tokens_seen": training.get("tokens_seen"),
                   "tokens_per_second": (training.get("tokens_seen") or 0) / max(training.get("elapsed_seconds") or 1e-9, 1e-9),
                   "trainer_best_val_bits_per_char": training.get("best_val_bits_per_char")})
    return result


def default_model(corpus: Path, threads: int, work: Path) -> tuple[dict, Tokenizer]:
    """The model and tokenizer `lstmgen train CORPUS` would use (from --dry-run and `lstmgen tokenize`)."""
    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokens.json").exists():
        subprocess.run([sys.executable, "-m", "lstmgen", "tokenize", str(corpus), "-o", str(tok_dir)], check=True,
                       env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.DEVNULL)
    dry = subprocess.run([sys.executable, "-m", "lstmgen", "train", str(corpus), "--tokenizer", str(tok_dir), "--dry-run",
                          "--threads", str(threads), "-o", str(work / "dry-run.lstmgen")],
                         check=True, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    resolved = json.loads(dry.stdout)
    return resolved["model"], Tokenizer.load(tok_dir / "tokenizer.model")


# ---------------------------------------------------------------------------------------------
# The classic word-language-model loop (SGD).


class ClassicLSTM(nn.Module):
    def __init__(self, vocab: int, embedding: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(vocab, embedding)
        self.rnn = nn.LSTM(embedding, hidden, layers, dropout=dropout, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab)
        if embedding == hidden:
            self.decoder.weight = self.encoder.weight
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if embedding != hidden:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, tokens: torch.Tensor, state=None):
        output, state = self.rnn(self.drop(self.encoder(tokens)), state)
        return self.decoder(self.drop(output)), state


def batchify(tokens: np.ndarray, batch: int) -> torch.Tensor:
    usable = len(tokens) // batch * batch
    return torch.from_numpy(tokens[:usable].astype(np.int64)).view(batch, -1)


def run_sgd_lstm(model_cfg: dict, tokenizer: Tokenizer, split: Split, budgets: list[float], threads: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    train_tokens, _, _ = encode_text_stream(tokenizer, split.train_text.splitlines(keepends=True))
    model = ClassicLSTM(model_cfg["vocab_size"], model_cfg["embedding_size"], model_cfg["hidden_size"], model_cfg["num_layers"], 0.2)
    data = batchify(train_tokens, 20)
    bptt, lr, clip = 35, 20.0, 0.25
    nll_of = lambda tokens: total_nll(model, tokens, num_streams=1)[0]  # noqa: E731
    results, pending = [], sorted(budgets)
    trained, steps, seen, best_epoch_loss = 0.0, 0, 0, math.inf
    while pending:
        model.train()
        state = None
        for start in range(0, data.shape[1] - 1, bptt):
            if trained >= pending[0] * 60:
                model.eval()
                result = score(nll_of, tokenizer, split.val_text)
                result.update({"budget_min": pending.pop(0), "steps": steps, "tokens_seen": seen, "tokens_per_second": seen / trained,
                               "parameters": sum(p.numel() for p in model.parameters()), "lr": lr})
                results.append(result)
                model.train()
                if not pending:
                    return results
            began = time.monotonic()
            length = min(bptt, data.shape[1] - 1 - start)
            x, y = data[:, start:start + length], data[:, start + 1:start + 1 + length]
            state = None if state is None else tuple(s.detach() for s in state)
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            model.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
            trained += time.monotonic() - began
            steps += 1
            seen += x.numel()
        # End of an epoch: anneal on the held-out loss, as the example does (clock stopped).
        model.eval()
        epoch_loss = score(nll_of, tokenizer, split.val_text)["nats_per_char"]
        if epoch_loss < best_epoch_loss:
            best_epoch_loss = epoch_loss
        else:
            lr /= 4.0
    return results


# ---------------------------------------------------------------------------------------------
# A small GPT (nanoGPT's architecture and recipe).


class Block(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout))
        self.heads, self.dropout = heads, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.mlp(self.ln2(x))


class SmallGPT(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, context: int, dropout: float) -> None:
        super().__init__()
        self.context = context
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, width // 32, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1])
        x = self.drop(self.tok(tokens) + self.pos(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def gpt_parameters(vocab: int, width: int, layers: int, context: int) -> int:
    return vocab * width + context * width + layers * (12 * width * width + 13 * width) + 2 * width


def gpt_width(target: int, vocab: int, layers: int, context: int) -> int:
    """The width (a multiple of 32: heads of 32 dimensions) whose parameter count is closest to the target."""
    return min(range(32, 2049, 32), key=lambda w: abs(gpt_parameters(vocab, w, layers, context) - target))


@torch.inference_mode()
def gpt_nll(model: SmallGPT, tokens: np.ndarray) -> float:
    """Each position predicted with at least half a context of history (stride = context / 2)."""
    model.eval()
    ids = torch.from_numpy(tokens.astype(np.int64))
    context, stride, total, done = model.context, model.context // 2, 0.0, 1
    while done < len(ids):
        end = min(len(ids), done + stride)
        begin = max(0, end - context)
        logits = model(ids[begin:end - 1].unsqueeze(0))[0]
        targets = ids[begin + 1:end]
        keep = end - done
        total += float(F.cross_entropy(logits[-keep:], targets[-keep:], reduction="sum"))
        done = end
    return total


def run_gpt(model_cfg: dict, lstm_params: int, tokenizer: Tokenizer, split: Split, budget_min: float, threads: int, seed: int) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    generator = np.random.default_rng(seed)
    vocab, layers, context, batch = model_cfg["vocab_size"], 4, 128, 16
    width = gpt_width(lstm_params, vocab, layers, context)
    model = SmallGPT(vocab, width, layers, context, 0.0)
    train_tokens, _, _ = encode_text_stream(tokenizer, split.train_text.splitlines(keepends=True))
    data = torch.from_numpy(train_tokens.astype(np.int64))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    peak = 1e-3
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=peak, betas=(0.9, 0.99))
    budget, trained, steps = budget_min * 60, 0.0, 0
    while trained < budget:
        began = time.monotonic()
        progress = trained / budget
        lr = peak * min(1.0, (steps + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = generator.integers(0, len(data) - context - 1, batch)
        x = torch.stack([data[s:s + context] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + context] for s in starts])
        model.train()
        loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        trained += time.monotonic() - began
        steps += 1
    result = score(lambda tokens: gpt_nll(model, tokens), tokenizer, split.val_text)
    result.update({"budget_min": budget_min, "steps": steps, "tokens_seen": steps * batch * context, "tokens_per_second": steps * batch * context / trained,
                   "parameters": sum(p.numel() for p in model.parameters()), "width": width, "layers": layers, "context": context})
    return result


# ---------------------------------------------------------------------------------------------


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(args: argparse.Namespace) -> None:
    corpus = Path(args.corpus).resolve()
    budgets = [float(b) for b in args.budgets.split(",")]
    work = Path(args.work) / args.name
    work.mkdir(parents=True, exist_ok=True)
    split = Split.of(corpus)
    done = {(r["corpus"], r["contestant"], r["budget_min"]) for r in load_results(args.results)} if not args.force else set()
    base = {"corpus": args.name, "threads": args.threads, "seed": args.seed, "machine": machine()}

    def record(contestant: str, result: dict) -> None:
        entry = {**base, "contestant": contestant, **result, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        append_result(args.results, entry)
        print(json.dumps(entry), flush=True)

    model_cfg, tokenizer = None, None
    for contestant in args.contestants.split(","):
        todo = [b for b in budgets if (args.name, contestant, b) not in done]
        if not todo:
            continue
        if contestant in LSTMGEN_VARIANTS:
            for budget in todo:
                record(contestant, {"budget_min": budget, **run_lstmgen(contestant, corpus, budget, args.threads, args.seed, work, split)})
            continue
        if model_cfg is None:
            model_cfg, tokenizer = default_model(corpus, args.threads, work)
        lstm_params = sum(p.numel() for p in ClassicLSTM(model_cfg["vocab_size"], model_cfg["embedding_size"], model_cfg["hidden_size"],
                                                         model_cfg["num_layers"], 0.0).parameters())
        if contestant == "sgd-lstm":
            for result in run_sgd_lstm(model_cfg, tokenizer, split, todo, args.threads, args.seed):
                record(contestant, result)
        elif contestant == "gpt":
            for budget in todo:
                record(contestant, run_gpt(model_cfg, lstm_params, tokenizer, split, budget, args.threads, args.seed))
        else:
            raise SystemExit(f"unknown contestant {contestant!r}")


def report(results: Path, doc: Path) -> None:
    """The results table, newest record per corpus × contestant × budget, into docs/benchmarks.md."""
    latest: dict[tuple, dict] = {}
    for r in load_results(results):
        latest[(r["corpus"], r["contestant"], r["budget_min"])] = r
    corpora = sorted({key[0] for key in latest})
    budgets = sorted({key[2] for key in latest})
    lines = []
    for corpus in corpora:
        lines += [f"**{corpus}** — held-out nats per character (bits per character / bits per byte), one stream, "
                  f"after each budget of CPU-minutes (one thread):", "",
                  "| contestant | parameters | " + " | ".join(f"{b:g} min" for b in budgets) + " | tokens/s |",
                  "|---|---:|" + "---:|" * len(budgets) + "---:|"]
        for contestant in dict.fromkeys(key[1] for key in latest if key[0] == corpus):
            cells, params, speed = [], "", ""
            for budget in budgets:
                r = latest.get((corpus, contestant, budget))
                if r is None:
                    cells.append("not run")
                    continue
                cells.append(f"{r['nats_per_char']:.3f} ({r['bits_per_char']:.2f} / {r['bits_per_byte']:.2f})")
                params = f"{r['parameters'] / 1e6:.2f}M"
                speed = f"{r['tokens_per_second'] / 1e3:.1f}k" if r.get("tokens_per_second") else ""
            lines.append(f"| {LABELS.get(contestant, contestant)} | {params} | " + " | ".join(cells) + f" | {speed} |")
        lines.append("")
    table = "\n".join(lines).rstrip() + "\n"
    write_section(doc, "quality-table", table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", help="corpus text file")
    parser.add_argument("--name", help="short corpus name for the table")
    parser.add_argument("--budgets", default="5,15,30", help="training minutes, comma-separated")
    parser.add_argument("--contestants", default="lstmgen-char,lstmgen-subword,sgd-lstm,gpt")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", default="/tmp/lstmgen-quality", help="where bundles and tokenizers go")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--force", action="store_true", help="rerun records that already exist")
    parser.add_argument("--report", action="store_true", help="write the table into docs/benchmarks.md and exit")
    parser.add_argument("--prepare", action="store_true", help="only make the references' tokenizer (before parallel jobs)")
    args = parser.parse_args()
    if args.report:
        report(args.results, DOC)
        return
    if not args.corpus or not args.name:
        parser.error("--corpus and --name are required unless --report")
    if args.prepare:
        work = Path(args.work) / args.name
        work.mkdir(parents=True, exist_ok=True)
        default_model(Path(args.corpus).resolve(), args.threads, work)
        return
    run(args)


if __name__ == "__main__":
    main()
