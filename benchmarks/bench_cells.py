"""Speed of the three recurrent cells (lstm = nn.LSTM, gru = nn.GRU, paper = lstmgen.cells.PaperLSTM).

    python benchmarks/bench_cells.py                      # default sizes, 1 thread, CPU-time clock
    python benchmarks/bench_cells.py --sizes 256x64 512x64 --threads 2 --clock wall --reps 7
    python benchmarks/bench_cells.py --no-write            # print only; do not touch docs/benchmarks.md

For each size (hidden H × batch B; embedding = H, 2 layers, char-level vocabulary V = 330,
T = 128, tied head, dropout 0.1) it times full training steps (embedding → cell → head →
cross-entropy → backward → AdamW) of every cell, interleaved (cell A, B, C, A, B, C, ...) so that
drift on a shared machine hits all cells alike, and reports the median training tokens/s. It also
times one-token generation at batch 1 through the sampler's FastStepper (tokens/s), and — unless
--no-naive — a "paper, plain autograd" row: the same cell written as a Python loop of autograd ops
(the fused GEMMs, but no hand-written backward), to show what the custom backward buys.

The default clock is the process's CPU time on one thread: on a machine shared with other jobs
wall time measures the neighbours as much as the code; one thread's CPU time does not (much).
The Markdown table is printed and written into docs/benchmarks.md between the markers
<!-- cells-speed:start --> and <!-- cells-speed:end --> (with --device cuda: cells-speed-gpu; the
file is created if missing).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lstmgen import cells  # noqa: E402
from lstmgen.config import ModelConfig  # noqa: E402
from lstmgen.model import LSTMLanguageModel  # noqa: E402
from lstmgen.sampling import FastStepper  # noqa: E402

BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"
INTRO = """# Benchmarks

Measured speed and quality of lstmgen. Each section says how it was measured, on which machine,
and gives the command that reproduces it. Numbers from a shared 2-core machine are medians of
interleaved repetitions; treat small differences as noise.
"""


class NaivePaper(cells.PaperLSTM):
    """The paper cell as a loop of autograd operations (for comparison only; same parameters)."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        batch, steps, _ = x.shape
        hidden = self.hidden_size
        if h0 is None:
            h0 = x.new_zeros(self.num_layers, batch, hidden)
        layer_input = x.transpose(0, 1)
        finals = []
        for layer in range(self.num_layers):
            w_ih, w_hh, w_ho, bias = self.layer_weights(layer)
            projected = F.linear(layer_input, w_ih, bias)
            h = h0[layer]
            outputs = []
            for t in range(steps):
                a = torch.addmm(projected[t, :, : 3 * hidden], h, w_hh.t())
                i, f, c = torch.sigmoid(a[:, :hidden]), torch.sigmoid(a[:, hidden : 2 * hidden]), torch.tanh(a[:, 2 * hidden :])
                h = f * h + i * c
                o = torch.sigmoid(torch.addmm(projected[t, :, 3 * hidden :], h, w_ho.t()))
                outputs.append(o * torch.tanh(h))
            layer_input = torch.stack(outputs)
            finals.append(h)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        return layer_input.transpose(0, 1), torch.stack(finals)


def make_model(cell: str, hidden: int, vocab: int, layers: int) -> LSTMLanguageModel:
    torch.manual_seed(0)
    naive = cell == "paper-naive"
    model = LSTMLanguageModel(ModelConfig(vocab_size=vocab, embedding_size=hidden, hidden_size=hidden, num_layers=layers, dropout=0.1,
                                          cell="paper" if naive else cell))
    if naive:
        replacement = NaivePaper(hidden, hidden, layers, 0.1)
        replacement.load_state_dict(model.rnn.state_dict())
        model.rnn = replacement
    return model


class Clock:
    def __init__(self, kind: str, device: torch.device) -> None:
        base = time.process_time if kind == "cpu" else time.perf_counter
        if device.type == "cuda":
            def now() -> float:
                torch.cuda.synchronize(device)
                return base()

            self.now = now
        else:
            self.now = base


def train_step_timer(model: LSTMLanguageModel, batch: int, seq_len: int, vocab: int, clock: Clock, device: torch.device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randint(3, vocab, (batch, seq_len), generator=generator).to(device)
    targets = torch.randint(3, vocab, (batch, seq_len), generator=generator).to(device)
    state = [None]

    def step() -> float:
        started = clock.now()
        model.train()
        logits, new_state = model(inputs, state[0])
        loss = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state[0] = cells.detach_state(new_state)
        return batch * seq_len / (clock.now() - started)

    return step


def generation_speed(model: LSTMLanguageModel, clock: Clock, device: torch.device, tokens: int = 300) -> float:
    model.eval()
    stepper = FastStepper(model)
    state = model.initial_state(1)
    token = torch.tensor([5], device=device)
    for _ in range(20):
        _, state = stepper.step(token, state)
    started = clock.now()
    for _ in range(tokens):
        logits, state = stepper.step(token, state)
        token = logits.argmax(-1)
    return tokens / (clock.now() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x32", "256x64", "512x64"], help="HIDDENxBATCH (embedding = hidden)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=330)
    parser.add_argument("--reps", type=int, default=5, help="timed training steps per cell and size (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="cpu: process CPU time (default on a CPU); always wall on CUDA")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-naive", action="store_true", help="skip the plain-autograd paper row")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        args.clock = "wall"
    clock = Clock(args.clock, device)
    names = ["lstm", "gru", "paper"] + ([] if args.no_naive else ["paper-naive"])
    labels = {"lstm": "lstm (nn.LSTM)", "gru": "gru (nn.GRU)", "paper": "paper (lstmgen)", "paper-naive": "paper, plain autograd"}
    rows = []
    for size in args.sizes:
        hidden, batch = (int(v) for v in size.lower().split("x"))
        models = {name: make_model(name, hidden, args.vocab, args.layers).to(device) for name in names}
        timers = {name: train_step_timer(model, batch, args.seq_len, args.vocab, clock, device) for name, model in models.items()}
        speeds: dict[str, list[float]] = {name: [] for name in names}
        for timer in timers.values():
            timer()  # warm-up
        for _ in range(args.reps):
            for name in names:
                speeds[name].append(timers[name]())
        for name in names:
            train = statistics.median(speeds[name])
            gen = generation_speed(models[name], clock, device) if name != "paper-naive" else None
            params = sum(p.numel() for p in models[name].rnn.parameters())
            rows.append((hidden, batch, name, params, train, gen))
            print(f"H={hidden} B={batch} {name:12s} train {train:8.0f} tok/s  (runs: {', '.join(f'{s:.0f}' for s in speeds[name])})"
                  + (f"  generate@1 {gen:6.0f} tok/s" if gen else ""), flush=True)
    table = render(rows, args, labels)
    print(table)
    if not args.no_write:
        write_section(table, "cells-speed" if device.type == "cpu" else "cells-speed-gpu")
        print(f"wrote {BENCHMARKS_MD.relative_to(ROOT)}", file=sys.stderr)


def render(rows, args, labels) -> str:
    clock = "CPU time of the process" if args.clock == "cpu" else "wall time"
    lines = [
        "## Recurrent cells: training and generation speed",
        "",
        f"`python benchmarks/bench_cells.py {'--no-naive ' if args.no_naive else ''}--sizes {' '.join(args.sizes)} --threads {args.threads} --clock {args.clock} --reps {args.reps}"
        f"{' --device ' + args.device if args.device != 'cpu' else ''}`",
        f"— {torch.cuda.get_device_name() if args.device.startswith('cuda') else platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s), {clock}, "
        f"{_dt.date.today().isoformat()}. Training: embedding = H, {args.layers} layers, V = {args.vocab}, T = {args.seq_len}, tied head, "
        f"dropout 0.1, AdamW, clip; median of {args.reps} interleaved steps after a warm-up. Generation: FastStepper, batch 1, greedy.",
        "",
        "| H × B | cell | recurrent params | training tokens/s | vs lstm | generation tokens/s (batch 1) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    base = {(h, b): train for h, b, name, _, train, _ in rows if name == "lstm"}
    for hidden, batch, name, params, train, gen in rows:
        lines.append(f"| {hidden} × {batch} | {labels[name]} | {params:,} | {train:,.0f} | {train / base[(hidden, batch)]:.2f}× | {f'{gen:,.0f}' if gen else '—'} |")
    lines += ["", NOTES_GPU if args.device.startswith("cuda") else NOTES_CPU]
    return "\n".join(lines) + "\n"


NOTES_CPU = """`lstm` runs through oneDNN (`mkldnn_rnn_layer`), `gru` through PyTorch's own CPU kernels, `paper`
through lstmgen's `_PaperLayer` (one GEMM per step, output gate after the loop, hand-written
backward); "plain autograd" is the same paper cell as a Python loop of autograd operations, for
scale. Generation steps every cell with `FastStepper` (fused GEMMs per layer, cells.make_step)."""

NOTES_GPU = """On the GPU `lstm` and `gru` are cuDNN kernels that run the whole window; `paper` launches a few
small kernels per time step (forward and backward), so at these sizes it is bound by launch
latency, not arithmetic, and its speed hardly depends on H. Capturing the two time loops in a CUDA
graph, or a fused kernel per step, is what would close the gap."""


def write_section(table: str, marker: str = "cells-speed") -> None:
    """Replace this benchmark's section of docs/benchmarks.md (CPU: cells-speed, GPU: cells-speed-gpu)."""
    from docsection import write_section as write

    write(BENCHMARKS_MD, marker, table, INTRO)


if __name__ == "__main__":
    main()
