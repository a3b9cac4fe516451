"""Exported models beside lstmgen, on the same machine: file sizes, agreement and generation speed.

    python benchmarks/bench_export.py [--tokens 500] [--no-write] [--screenshot docs/images/export-page.png]

For each built-in model (shakespeare, tang):

- sizes: the bundle, the ONNX graph (float32) and its tokenizer, the web page with float16 weights
  (the default, the bundle's own values) and with int8 weights;
- agreement on held-out text (the validation tail of the model's corpus): the largest difference
  between lstmgen's logits and those of the ONNX graph (onnxruntime) and of the page (headless
  chromium), and how many greedy tokens of several prompts equal `lstmgen sample --temp 0`'s;
- generation speed at batch 1, temperature 1, best of 3 runs of `--tokens` tokens: lstmgen's
  sampler (Python API, 1 thread and all threads), the page's generation loop in chromium (one
  network step and one draw per token, in JavaScript), the page's own Generate button (the same
  loop, yielding to the browser every 30 ms so that the text streams), and the ONNX graph stepped
  by onnxruntime (1 thread); plus the page's load time (decompress and decode the weights) and a
  cold `lstmgen sample` process.

The Markdown goes to stdout and replaces the section between `<!-- export:start -->` and
`<!-- export:end -->` in docs/benchmarks.md. `--screenshot` also takes the README's picture of the page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import lstmgen  # noqa: E402
from lstmgen.export import export_model  # noqa: E402
from tests.export_browser import Chromium  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
HELD_OUT = {
    "shakespeare": (ROOT / "corpora" / "tinyshakespeare.txt").read_text()[-40_000:-38_800],
    "tang": (ROOT / "corpora" / "tang-poems.simplified.txt").read_text()[-3_000:-2_400],
}
PROMPTS = {
    "shakespeare": ["ROMEO:", "", "First Citizen:\nWe are accounted poor citizens", "KING HENRY VI:\r\n\tO God!", "To be, or not"],
    "tang": ["床前明月光", "", "白日依山尽，黄河入海流。\n", "春眠不觉晓", "独在异乡为异客", "国破山河在", "千山鸟飞绝",
             "慈母手中线", "空山不见人", "红豆生南国", "渭城朝雨浥轻尘", "送别\n"],
}
GREEDY_TOKENS = 200


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def sampler_rate(m, tokens: int, threads: int) -> float:
    """lstmgen's sampler from an empty prompt: samples of seeds 1, 2, ... until `tokens` tokens (they may end at end of text)."""
    torch.set_num_threads(threads)

    def run() -> int:
        total, seed = 0, 1
        while total < tokens:
            sample = m.sample("", max_tokens=tokens - total, temperature=1.0, seed=seed)
            total += len(sample.tokens) + (sample.finish_reason == "end-of-text")
            seed += 1
        return total

    run()  # warm-up
    rates = []
    for _ in range(3):
        started = time.perf_counter()
        count = run()
        rates.append(count / (time.perf_counter() - started))
    return max(rates)


def loop_rate(m, tokens: int) -> float:
    """lstmgen's generation loop as the page's `benchmark` runs it: one step and one draw per token, 1 thread,
    the start id fed again after end of text (the sampler's own `FastStepper.step` and `_choose`)."""
    from lstmgen.config import SamplingOptions
    from lstmgen.sampling import _choose, _Uniforms

    torch.set_num_threads(1)
    sampler = m._sampler
    options = SamplingOptions(temperature=1.0, seed=1)
    eos, start = m.tokenizer.eos_id, m.tokenizer.bos_id

    @torch.inference_mode()
    def run() -> None:
        uniforms = _Uniforms(1, 0, 1)
        state = m.model.initial_state(1)
        token = torch.tensor([start])
        for _ in range(tokens):
            logits, state = sampler.stepper.step(token, state)
            logits.index_fill_(1, sampler.banned, -float("inf"))
            token = _choose(logits, options, uniforms)
            if int(token[0]) == eos:
                token = torch.tensor([start])

    run()
    return tokens / best(run)


def ui_rate(browser: Chromium, tokens: int) -> float:
    """The page's Generate button from an empty prompt at temperature 1: seeds 1, 2, ... until `tokens` tokens."""
    rates = []
    for _ in range(3):
        total, seed, seconds = 0, 1, 0.0
        while total < tokens:
            browser.evaluate(
                "document.getElementById('prompt').value = ''; document.getElementById('temperature').value = '1';"
                f"document.getElementById('max-tokens').value = '{tokens - total}';"
                f"document.getElementById('seed').value = '{seed}'; 0"
            )
            started = time.perf_counter()
            browser.evaluate("window.poet.clickGenerate()")
            seconds += time.perf_counter() - started
            total += int(browser.evaluate("document.getElementById('status').textContent").split()[0]) + (
                browser.evaluate("document.getElementById('output').dataset.finish") == "end-of-text"
            )
            seed += 1
        rates.append(total / seconds)
    return max(rates)


def onnx_rate_and_difference(m, path: Path, tokens: int) -> tuple[float, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    config = m.config
    names = ("h", "c") if config.cell == "lstm" else ("h",)
    zero = {n: np.zeros((config.num_layers, 1, config.hidden_size), np.float32) for n in names}
    ids = [1] + m.tokenizer.encode(HELD_OUT[m_name(m)])
    feeds = dict(zero)
    got = []
    for token in ids:
        logits, *state = sess.run(None, {"tokens": np.array([token], np.int64), **feeds})
        feeds = dict(zip(names, state))
        got.append(logits[0])
    with torch.no_grad():
        want = m.model(torch.tensor([ids]))[0][0].numpy()
    difference = float(np.abs(np.array(got) - want).max())
    rng = np.random.default_rng(1)

    def run() -> None:
        feeds = dict(zero)
        token = 1
        for _ in range(tokens):
            logits, *state = sess.run(None, {"tokens": np.array([token], np.int64), **feeds})
            feeds = dict(zip(names, state))
            p = np.exp(logits[0] - logits[0].max())
            token = int(np.searchsorted(np.cumsum(p), rng.random() * p.sum(), side="right"))
            token = min(token, len(p) - 1)

    run()
    return tokens / best(run), difference


def m_name(m) -> str:
    return Path(m.source).name.removesuffix(".lstmgen")


def cold_cli(name: str, tokens: int) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "lstmgen", "sample", "-m", name, "--max-tokens", str(tokens), "--seed", "1"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def measure(name: str, directory: Path, browser: Chromium, tokens: int) -> dict:
    m = lstmgen.load(name)
    config = m.config
    row: dict = {
        "name": name,
        "description": f"{config.num_layers}×{config.hidden_size} {config.cell.upper()}, {m.num_parameters() / 1e6:.1f}M parameters",
    }
    row["bundle"] = Path(m.source).stat().st_size
    onnx_path = directory / f"{name}.onnx"
    export_model(name, onnx_path)
    row["onnx"] = onnx_path.stat().st_size + onnx_path.with_name(f"{name}.tokenizer.model").stat().st_size
    page = directory / f"{name}.html"
    started = time.perf_counter()
    export_model(name, page)
    row["export_seconds"] = time.perf_counter() - started
    row["page"] = page.stat().st_size
    export_model(name, directory / f"{name}-int8.html", weights="int8")
    row["page_int8"] = (directory / f"{name}-int8.html").stat().st_size

    # Agreement.
    ids = [1] + m.tokenizer.encode(HELD_OUT[name])
    row["held_out_tokens"] = len(ids)
    browser.open(page.as_uri(), ready="window.poet.ready")
    row["load_seconds"] = browser.evaluate("window.poet.ready")
    got = np.array(browser.evaluate(f"window.poet.logits({json.dumps(ids)})"))
    with torch.no_grad():
        want = m.model(torch.tensor([ids]))[0][0].numpy()
    row["page_difference"] = float(np.abs(got - want).max())
    matched = total = 0
    for prompt in PROMPTS[name]:
        expected = m.sample(prompt, temperature=0, max_tokens=GREEDY_TOKENS).tokens
        page_ids = browser.evaluate(f"window.poet.greedy({json.dumps(prompt)}, {GREEDY_TOKENS})")["ids"]
        total += len(expected)
        matched += len(expected) if page_ids == expected else 0
    row["greedy"] = (matched, total, len(PROMPTS[name]))

    # Speed.
    row["lstmgen_loop"] = loop_rate(m, tokens)
    row["lstmgen_1"] = sampler_rate(m, tokens, 1)
    row["lstmgen_all"] = sampler_rate(m, tokens, os.cpu_count() or 1)
    torch.set_num_threads(1)
    runs = [browser.evaluate(f"window.poet.benchmark({tokens}, {{temperature: 1, seed: {seed}}})") for seed in (1, 2, 3)]
    row["page_rate"] = max(r["tokensPerSecond"] for r in runs)
    row["page_ui_rate"] = ui_rate(browser, tokens)
    row["onnx_rate"], row["onnx_difference"] = onnx_rate_and_difference(m, onnx_path, tokens)
    row["cold_cli"] = cold_cli(name, tokens)
    return row


def screenshot(browser: Chromium, directory: Path, target: Path) -> None:
    page = directory / "shakespeare.html"
    if not page.exists():
        export_model("shakespeare", page)
    browser.open(page.as_uri() + "#prompt=ROMEO%3A&temp=0.8&top-p=0.95&seed=2024&max-tokens=160", ready="window.poet.ready")
    browser.evaluate("window.poet.clickGenerate()")
    browser.screenshot(target)


def mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def report(rows: list[dict], tokens: int, load: tuple[float, float, float], chromium: str) -> str:
    lines = [
        "## Exported models (`lstmgen export`)",
        "",
        f"`python benchmarks/bench_export.py --tokens {tokens}` on the development machine ({cpu_name()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} when it started: other jobs were running), "
        f"torch {torch.__version__}, {chromium}, onnxruntime {__import__('onnxruntime').__version__}. "
        f"Generation at batch 1, temperature 1, {tokens} tokens, best of 3.",
        "",
        "| model | bundle | ONNX (+ tokenizer) | page, float16 | page, int8 | largest logit difference: ONNX / page | greedy tokens equal to `lstmgen sample --temp 0` |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        matched, total, prompts = r["greedy"]
        lines.append(
            f"| `{r['name']}` ({r['description']}) | {mb(r['bundle'])} | {mb(r['onnx'])} | {mb(r['page'])} | "
            f"{mb(r['page_int8'])} | {r['onnx_difference']:.1e} / {r['page_difference']:.1e} "
            f"({r['held_out_tokens']} held-out tokens) | {matched} of {total} ({prompts} prompts, up to {GREEDY_TOKENS} each) |"
        )
    lines += [
        "",
        "| model | generation loop: lstmgen, 1 thread | generation loop: page in chromium | generation loop: ONNX in onnxruntime, 1 thread | whole samples: `lstmgen sample`, 1 thread | whole samples: the page's Generate button | page load | cold `lstmgen sample` process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['name']}` | {r['lstmgen_loop']:,.0f} tok/s | {r['page_rate']:,.0f} tok/s | {r['onnx_rate']:,.0f} tok/s | "
            f"{r['lstmgen_1']:,.0f} tok/s | {r['page_ui_rate']:,.0f} tok/s | {r['load_seconds']:.1f} s | {r['cold_cli']:.1f} s |"
        )
    threads = os.cpu_count() or 1
    lines += [
        "",
        "Generation loop: one network step and one draw per token from the start id, continuing after end of "
        "text (the start id read again), as `window.poet.benchmark` runs it; for lstmgen, the sampler's own step "
        "and draw. Whole samples: samples from an empty prompt, seeds 1, 2, ... until the tokens are reached, "
        "each read from a fresh state and ended at end of text or the limit, with decoding and (in the page) "
        "drawing the text every 30 ms; Tang poems end after about 40 tokens, so their per-sample costs weigh "
        f"more. With {threads} threads on this busy machine lstmgen's sampler gave "
        + " and ".join(f"{r['lstmgen_all']:,.0f} tok/s (`{r['name']}`)" for r in rows)
        + ": threads competing with the other jobs, which is why `--threads 1` is the advice on a busy machine.",
    ]
    lines += [
        "",
        "The page computes in float64 over the float32 values of the bundle's float16 weights, one token "
        "at a time in plain JavaScript (typed arrays, no WebAssembly or GPU); lstmgen runs float32 "
        "matrix products in PyTorch. The page load is the time to decompress and decode the weights "
        "(the model is then ready); a cold `lstmgen sample` includes importing torch and loading the bundle.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--no-write", action="store_true", help="print the section without writing docs/benchmarks.md")
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of the Shakespeare page here")
    parser.add_argument("--models", nargs="+", default=["shakespeare", "tang"])
    args = parser.parse_args()
    load = os.getloadavg()
    chromium = subprocess.run(["chromium", "--version"], capture_output=True, text=True).stdout.strip().split(" built")[0]
    with tempfile.TemporaryDirectory() as scratch, Chromium() as browser:
        directory = Path(scratch)
        rows = [measure(name, directory, browser, args.tokens) for name in args.models]
        if args.screenshot is not None:
            screenshot(browser, directory, args.screenshot)
            print(f"wrote {args.screenshot}", file=sys.stderr)
    section = report(rows, args.tokens, load, chromium)
    print(section)
    if not args.no_write:
        from docsection import write_section

        write_section(DOC, "export", section)


if __name__ == "__main__":
    main()
