"""Generation speed: lstmgen's sampler against references measured in the same run.

    python benchmarks/bench_sampling.py [--threads N] [--tokens 500] [--no-write] [--full-naive] [--int8-only]

Two models with random weights (speed does not depend on what the weights say): a word-piece
model (2 layers × 512, vocabulary 4,096) and a char-level one (1 × 256, vocabulary ≈ 330, the
characters of tiny Shakespeare). For each, at batch 1 and 16, generated tokens per second of:

- lstmgen's sampler (prompt read once, fused one-step LSTM, temperature-1 sampling, incremental
  decode), in float32 and with `quantize="int8"`;
- the bound set by reading every weight once per step: weight bytes per token ÷ memory bandwidth
  (a large `torch.sum`, best of 5, same threads);
- nn.LSTM called one time step at a time (model.forward on one token, the same sampling);
- the naive loop that re-runs the whole prefix every step (the classic `model.predict` loop), at
  batch 1 over 500 tokens. Its forward time is measured at prefix lengths 1, 100, ..., 500 and
  summed over the 500 steps by linear interpolation (`--full-naive` runs all 500 steps instead).

Then a per-token profile at batch 1, the time from a cold `lstmgen sample` process start to its
first byte on stdout, and `lstmgen --help`. The Markdown goes to stdout and replaces the section
between `<!-- sampling:start -->` and `<!-- sampling:end -->` in docs/benchmarks.md.

int8 against float32 on this CPU (`<!-- int8:start -->` … `<!-- int8:end -->`; `--int8-only` runs
just this part): for both models, int8 (forced: LSTMGEN_INT8=always) and float32 timed in turn,
interleaved, for one-token steps at batch 1, 16 and 64 and for evaluation windows of 1 stream ×
256 tokens and 64 streams × 128 tokens (what `lstmgen eval` reads per call for 1 and 64 streams),
as the ratio int8 ÷ float32 of each pair (min and median), next to what `--quantize int8` then
runs; and one 512 → 2048 product at 1, 16, 64 and 256 rows by each kernel: float32, `torch._int_mm`,
the exact float32 GEMM over int8 values, and `torch._int_mm` with oneDNN off (torch's reference
loop, what a CPU without AVX512-VNNI runs).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lstmgen import quantization  # noqa: E402
from lstmgen.bundle import save_bundle  # noqa: E402
from lstmgen.config import ModelConfig, TokenizerConfig  # noqa: E402
from lstmgen.model import LSTMLanguageModel  # noqa: E402
from lstmgen.sampling import Sampler, SamplingOptions, _choose, _Uniforms  # noqa: E402
from lstmgen.tokenizer import train_tokenizer  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
INTRO = """# Benchmarks

Measured results, each with the command that reproduces it. Machines are shared and noisy, so
speed is reported next to bounds measured in the same run wherever one exists.
"""


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bandwidth() -> float:
    """Read bandwidth in bytes/s: a 512 MiB float32 sum, best of 5 (far larger than any cache)."""
    data = torch.ones(128 * 1024 * 1024)
    data.sum()
    seconds = best(lambda: data.sum(), repeat=5)
    return data.numel() * 4 / seconds


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Case:
    def __init__(self, name: str, config: ModelConfig, tokenizer) -> None:
        torch.manual_seed(0)
        self.name = name
        self.tokenizer = tokenizer
        self.model = LSTMLanguageModel(config).eval()
        with torch.no_grad():  # random weights; never end a sample (EOS) so every row runs to the end
            self.model.head.bias[tokenizer.eos_id] = -1e4
        self.float = Sampler(self.model, tokenizer)
        self.int8 = Sampler(self.model, tokenizer, quantize="int8")
        self.int8.stepper.int8_forced = True  # int8's own speed, even where --quantize int8 would run float32


def sampler_rate(sampler: Sampler, batch: int, tokens: int) -> float:
    options = SamplingOptions(max_tokens=tokens, seed=1)

    def run() -> None:
        for _ in sampler.stream("", options, num_samples=batch):
            pass

    run()
    return batch * tokens / best(run)


@torch.inference_mode()
def module_step_rate(case: Case, batch: int, tokens: int) -> float:
    """Generate with nn.LSTM called on one time step per token (model.forward), same sampling."""
    model = case.model
    options = SamplingOptions(max_tokens=tokens, seed=1)

    def run() -> None:
        uniforms = _Uniforms(1, 0, batch)
        logits, state = model(torch.full((batch, 1), case.tokenizer.bos_id))
        for _ in range(tokens):
            choice = _choose(logits[:, -1], options, uniforms)
            logits, state = model(choice[:, None], state)

    run()
    return batch * tokens / best(run)


@torch.inference_mode()
def naive_rate(case: Case, tokens: int, full: bool) -> float:
    """Batch 1, re-reading the whole prefix for every new token (the classic predict loop)."""
    model = case.model
    options = SamplingOptions(max_tokens=tokens, seed=1)
    uniforms = _Uniforms(1, 0, 1)
    if full:
        def run() -> None:
            prefix = [case.tokenizer.bos_id]
            for _ in range(tokens):
                logits, _ = model(torch.tensor([prefix]))
                prefix.append(int(_choose(logits[:, -1], options, uniforms)[0]))

        return tokens / best(run, repeat=1)
    lengths = [1] + list(range(100, tokens + 1, 100))
    if lengths[-1] != tokens:
        lengths.append(tokens)
    cost = {}
    for length in lengths:
        ids = torch.randint(3, case.tokenizer.vocab_size, (1, length))

        def forward(ids=ids) -> None:
            logits, _ = model(ids)
            _choose(logits[:, -1], options, uniforms)

        forward()
        cost[length] = best(forward)
    total = 0.0
    for step in range(1, tokens + 1):  # linear interpolation between measured prefix lengths
        upper = next(length for length in lengths if length >= step)
        lower = max((length for length in lengths if length <= step), default=lengths[0])
        weight = 0.0 if upper == lower else (step - lower) / (upper - lower)
        total += cost[lower] * (1 - weight) + cost[upper] * weight
    return tokens / total


@torch.inference_mode()
def profile(case: Case, tokens: int) -> dict[str, float]:
    """Milliseconds per token at batch 1: model step, sampling, and the rest of the loop."""
    sampler = case.float
    options = SamplingOptions(max_tokens=tokens, seed=1)
    logits, state, _ = sampler.read_prompt("")
    choice = torch.tensor([5])

    def steps() -> None:
        s = state
        for _ in range(tokens):
            _, s = sampler.stepper.step(choice, s)

    uniforms = _Uniforms(1, 0, 1)

    def sampling() -> None:
        for _ in range(tokens):
            choice = _choose(logits, options, uniforms)
            torch.log_softmax(logits, dim=1).gather(1, choice.unsqueeze(1)).tolist()

    def full() -> None:
        for _ in sampler.stream("", options):
            pass

    def int8_steps() -> None:
        s = state
        for _ in range(tokens):
            _, s = case.int8.stepper.step(choice, s)

    steps()
    int8_steps()
    step_ms = best(steps) / tokens * 1e3
    int8_ms = best(int8_steps) / tokens * 1e3
    sample_ms = best(sampling) / tokens * 1e3
    total_ms = best(full) / tokens * 1e3
    return {"step": step_ms, "int8_step": int8_ms, "sampling": sample_ms, "rest": max(0.0, total_ms - step_ms - sample_ms), "total": total_ms}


def interleaved(candidates: dict, repeat: int) -> dict[str, list[float]]:
    """Seconds of each candidate per call, called in turn `repeat` times after one warm-up call each."""
    for run in candidates.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeat):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def ratios(times: dict[str, list[float]], over: str, under: str) -> tuple[float, float]:
    """(min, median) of the ratio over ÷ under: the ratio of the minimums, and the median of the paired ratios."""
    paired = [a / b for a, b in zip(times[over], times[under])]
    return min(times[over]) / min(times[under]), statistics.median(paired)


@torch.inference_mode()
def int8_uses(case: Case, repeat: int) -> list[dict]:
    """int8 (forced) against float32 per use: one-token steps at batch 1/16/64, evaluation windows of 1×256 and 64×128."""
    import logging

    from lstmgen.sampling import FastStepper, Int8Evaluation

    model, vocab = case.model, case.model.config.vocab_size
    fp, q8 = case.float.stepper, case.int8.stepper
    # int8 as before issue 15 §3 on a CPU without AVX512-VNNI: every product through _int_mm, here with oneDNN off
    reference = quantization.Int8LSTMLanguageModel(model)
    # int8 as it runs now on such a CPU (with LSTMGEN_INT8=always): every product by the exact float kernel
    float_kernels = quantization.Int8LSTMLanguageModel(model)
    for int8_model, kernel in ((reference, "int8"), (float_kernels, "float")):
        for linear in [*(linear for pair in int8_model.layers for linear in pair), int8_model.projection, int8_model.head]:
            if linear is not None:
                linear.kernels = dict.fromkeys(quantization.ROW_BUCKETS, kernel)

    def without_onednn(run):
        def wrapped() -> None:
            with torch.backends.mkldnn.flags(enabled=False):
                run()

        return wrapped
    generator = torch.Generator().manual_seed(0)
    rows = []
    logging.getLogger("lstmgen").setLevel(logging.ERROR)  # the fallback's warning: reported in the table instead
    for batch in (1, 16, 64):
        tokens = torch.randint(vocab, (16, batch), generator=generator)
        start = model.initial_state(batch)

        def steps(stepper, tokens=tokens, start=start) -> None:
            state = start
            for token in tokens:
                _, state = stepper.step(token, state)

        candidates = {"float32": lambda: steps(fp), "int8": lambda: steps(q8), "float kernels": lambda: steps(float_kernels)}
        if batch == 1:
            candidates["reference"] = without_onednn(lambda: steps(reference))
        times = interleaved(candidates, repeat)
        auto_stepper = FastStepper(model, quantize="int8")
        auto_stepper.int8_forced = False  # what --quantize int8 does without LSTMGEN_INT8=always
        auto = auto_stepper.uses_int8()
        rows.append({"use": f"generation, batch {batch}", "unit": batch * 16, "times": times, "auto": auto})
    for streams, window in ((1, 256), (64, 128)):
        tokens = torch.randint(vocab, (streams, window), generator=generator)
        candidates = {"float32": lambda: model(tokens), "int8": lambda: q8.int8(tokens),
                      "float kernels": lambda: float_kernels(tokens)}
        if streams == 1:
            candidates["reference"] = without_onednn(lambda: reference(tokens))
        times = interleaved(candidates, max(3, repeat // 2))
        stepper = FastStepper(model, quantize="int8")
        stepper.int8_forced = False
        Int8Evaluation(stepper)(tokens)
        rows.append({"use": f"evaluation, {streams} × {window}", "unit": streams * window, "times": times,
                     "auto": stepper.runs_int8["evaluation"]})
    logging.getLogger("lstmgen").setLevel(logging.NOTSET)
    for row in rows:
        row["min"], row["median"] = ratios(row["times"], "int8", "float32")
        row["float kernels"] = ratios(row["times"], "float kernels", "float32")
        if "reference" in row["times"]:
            row["reference"] = ratios(row["times"], "reference", "float32")
    return rows


@torch.inference_mode()
def int8_products(repeat: int) -> list[dict]:
    """One 512 → 2048 product (an LSTM layer's gates at H=512) by each kernel, at 1 to 256 rows."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(2048, 512, generator=generator) * 0.05
    linear = quantization.Int8Linear(weight)
    weight_t = weight.t().contiguous()
    rows = []
    for count in (1, 16, 64, 256):
        x = torch.randn(count, 512, generator=generator)
        values, scale = quantization.quantize_activations(x)

        def reference(values=values) -> None:
            with torch.backends.mkldnn.flags(enabled=False):
                torch._int_mm(values.to(torch.int8), linear.weight_t)

        candidates = {
            "float32": lambda x=x: torch.mm(x, weight_t),
            "_int_mm": lambda values=values: linear.sums(values, "int8"),
            "exact float": lambda values=values: linear.sums(values, "float"),
            "reference loop": reference,
        }
        times = interleaved(candidates, repeat if count < 256 else max(2, repeat // 3))
        quantization._KERNEL_CHOICES.clear()
        linear.kernels.clear()
        rows.append({"rows": count, "times": {k: min(v) for k, v in times.items()},
                     "chosen": linear.kernel(count) if quantization.int8_gemm_is_native() else "float (unmeasured)"})
    return rows


def int8_section(cases: list[Case], threads: int, repeat: int, elapsed: float, uses: dict, products: list[dict]) -> str:
    native = quantization.int8_gemm_is_native()
    vnni = bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())
    lines = [
        "## int8 against float32",
        "",
        f"`python benchmarks/bench_sampling.py --int8-only --threads {threads}` ({elapsed / 60:.1f} min; {cpu_name()}, "
        f"{os.cpu_count()} cores, "
        f"torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}; AVX512-VNNI: {'yes' if vnni else 'no'}, so "
        f"`torch._int_mm` runs {'oneDNN' if native else 'its scalar reference loop'}). Random weights. int8 (forced) and "
        f"float32 are called in turn, {repeat} times each after a warm-up; the ratio is int8 ÷ float32 time (below 1: "
        "int8 faster), as the ratio of the minimums and the median of the paired ratios. The last column is what "
        "`--quantize int8` ran when asked in the same run (it times both models at the first use and runs float32, with "
        "one warning, where int8 is slower). What int8 costs on a CPU without AVX512-VNNI, measured here: with every "
        "product through `torch._int_mm` with oneDNN off, i.e. torch's reference loop, which is what int8 ran there "
        "before lstmgen chose kernels (issue 15; batch 1 and one stream only), and with every product by the exact "
        "float32 kernel, which is what it runs there now (with LSTMGEN_INT8=always; otherwise float32 runs).",
        "",
        "| model | use | float32 ms | int8 ms | int8 ÷ float32 (min) | (median) | no VNNI: reference-loop int8 ÷ float32 "
        "(min / median) | no VNNI: float-kernel int8 ÷ float32 (min / median) | `--quantize int8` runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in cases:
        for row in uses[case.name]:
            times = row["times"]
            lines.append(
                f"| {case.name} | {row['use']} | {min(times['float32']) * 1e3:.2f} | {min(times['int8']) * 1e3:.2f} | "
                f"{row['min']:.2f} | {row['median']:.2f} | "
                + (f"{row['reference'][0]:.2f} / {row['reference'][1]:.2f}" if "reference" in row else "—")
                + f" | {row['float kernels'][0]:.2f} / {row['float kernels'][1]:.2f}"
                + f" | {'int8' if row['auto'] else 'float32'} |"
            )
    lines += [
        "",
        "Generation rows time 16 one-token steps (the model step only, no sampling); evaluation rows one window (what "
        "`lstmgen eval` reads per call for 1 and for 64 streams).",
        "",
        "One 512 → 2048 product (the gates of a layer with 512 inputs), µs, best of the interleaved calls: float32 "
        "`torch.mm`; int8 through `torch._int_mm` (with the conversions around it); the exact float32 GEMM over the int8 "
        "values (the same sums); `torch._int_mm` with oneDNN off, which is the loop a CPU without AVX512-VNNI runs.",
        "",
        "| rows | float32 | `_int_mm` | exact float32 over int8 | `_int_mm`, reference loop | kernel chosen |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for row in products:
        t = row["times"]
        lines.append(
            f"| {row['rows']} | {t['float32'] * 1e6:,.0f} | {t['_int_mm'] * 1e6:,.0f} | {t['exact float'] * 1e6:,.0f} | "
            f"{t['reference loop'] * 1e6:,.0f} | {row['chosen']} |"
        )
    return "\n".join(lines)


def lstmgen_command() -> list[str]:
    script = Path(sys.executable).parent / "lstmgen"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lstmgen"]


def first_byte_seconds(args: list[str]) -> float:
    """Seconds from starting `lstmgen ARGS` to its first byte on stdout (the process then finishes)."""
    env = {**os.environ, "NO_COLOR": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(lstmgen_command() + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert process.stdout is not None
    process.stdout.read(1)
    elapsed = time.perf_counter() - start
    process.communicate()
    return elapsed


def command_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(lstmgen_command() + args, capture_output=True, env={**os.environ, "NO_COLOR": "1"}, check=True)
    return time.perf_counter() - start


def median(fn, repeat: int = 3) -> float:
    return statistics.median(fn() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--tokens", type=int, default=500, help="tokens generated per sample")
    parser.add_argument("--full-naive", action="store_true", help="run the naive loop for all steps instead of interpolating")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file whose sampling section is replaced")
    parser.add_argument("--int8-only", action="store_true", help="only the int8 against float32 section")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved calls of each in the int8 section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    corpus = (ROOT / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    print("training the two tokenizers...", file=sys.stderr)
    cases = [
        Case("2×512 LSTM, vocab 4,096", ModelConfig(vocab_size=4096, embedding_size=512, hidden_size=512, num_layers=2, dropout=0.0),
             train_tokenizer(corpus, TokenizerConfig(vocab_size=4096))),
    ]
    char_tokenizer = train_tokenizer(corpus, TokenizerConfig(model_type="char"))
    cases.append(Case(f"1×256 char LSTM, vocab {char_tokenizer.vocab_size}",
                      ModelConfig(vocab_size=char_tokenizer.vocab_size, embedding_size=256, hidden_size=256, num_layers=1, dropout=0.0),
                      char_tokenizer))
    assert cases[0].tokenizer.vocab_size == 4096, cases[0].tokenizer.vocab_size
    int8_started = time.perf_counter()
    print("int8 against float32...", file=sys.stderr)
    uses = {case.name: int8_uses(case, args.repeat) for case in cases}
    products = int8_products(args.repeat)
    int8_text = int8_section(cases, threads, args.repeat, time.perf_counter() - int8_started, uses, products)
    if args.int8_only:
        print(int8_text)
        if not args.no_write:
            write_section(int8_text, args.doc, "int8")
        return
    print("measuring bandwidth...", file=sys.stderr)
    bytes_per_second = bandwidth()
    rows = []
    for case in cases:
        float_bytes, int8_bytes = case.float.stepper.weight_bytes, case.int8.stepper.weight_bytes
        for batch in (1, 16):
            print(f"{case.name}, batch {batch}...", file=sys.stderr)
            fp = sampler_rate(case.float, batch, args.tokens)
            q8 = sampler_rate(case.int8, batch, args.tokens)
            module = module_step_rate(case, batch, args.tokens)
            naive = naive_rate(case, args.tokens, args.full_naive) if batch == 1 else None
            rows.append({"model": case.name, "batch": batch, "float": fp, "int8": q8, "bound": batch * bytes_per_second / float_bytes,
                         "bound8": batch * bytes_per_second / int8_bytes, "module": module, "naive": naive,
                         "mb": float_bytes / 1e6, "mb8": int8_bytes / 1e6})
    print("profiling batch 1...", file=sys.stderr)
    prof = profile(cases[0], min(args.tokens, 300))
    print("timing cold starts...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Path(scratch) / "big.lstmgen"
        save_bundle(bundle, cases[0].model, cases[0].tokenizer)
        sample_args = ["sample", "-m", str(bundle), "--prompt", "The", "--max-tokens", "1", "--no-echo-prompt", "--seed", "1"]
        first_byte = median(lambda: first_byte_seconds(sample_args))
        first_byte8 = median(lambda: first_byte_seconds(sample_args + ["--quantize", "int8"]))
        help_seconds = median(lambda: command_seconds(["--help"]))
        import_torch = median(lambda: command_seconds_python("import torch"))
    elapsed = time.perf_counter() - started

    lines = [
        "## Generation speed",
        "",
        f"`python benchmarks/bench_sampling.py` ({elapsed / 60:.1f} min; {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} threads; random weights; {args.tokens} tokens per sample at temperature 1; best of 3). Memory bandwidth measured in "
        f"the same run: **{bytes_per_second / 1e9:.1f} GB/s** (a 512 MiB `torch.sum`). Bound = the rate at which every weight can be "
        "read once per step from memory (weights per token ÷ bandwidth, × batch); models whose weights fit in the last-level cache "
        "can beat it.",
        "",
        "| model | batch | lstmgen float tok/s | of bound | int8 tok/s | int8 speed-up | bound float / int8 (weights read per step) "
        "| nn.LSTM one step at a time | naive re-read of the prefix | lstmgen ÷ naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        naive = f"{r['naive']:,.0f}" if r["naive"] else "—"
        ratio = f"{r['float'] / r['naive']:,.0f}×" if r["naive"] else "—"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['float']:,.0f} | {r['float'] / r['bound']:.2f} | {r['int8']:,.0f} | "
            f"{r['int8'] / r['float']:.1f}× | {r['bound']:,.0f} / {r['bound8']:,.0f} ({r['mb']:.1f} / {r['mb8']:.1f} MB) | "
            f"{r['module']:,.0f} | {naive} | {ratio} |"
        )
    big1, char1 = rows[0], rows[2]
    verdict = "meets" if big1["float"] >= 0.7 * big1["bound"] else "misses"
    lines += [
        "",
        f"Per token at batch 1 ({cases[0].name}, float): model step {prof['step']:.3f} ms, sampling (inverse-CDF draw + "
        f"log-probability) {prof['sampling']:.3f} ms, the rest of the loop (decode, stop/length checks, Python) "
        f"{prof['rest']:.3f} ms; total {prof['total']:.3f} ms. The int8 step takes {prof['int8_step']:.3f} ms.",
        "",
        "Reading the numbers:",
        "",
        f"- Batch 1, {big1['model']}: {big1['float']:,.0f} tok/s is {big1['float'] / big1['bound']:.2f} of the bandwidth bound "
        f"(goal ≥ 0.7: {verdict} it); the model step is {100 * prof['step'] / prof['total']:.0f} % of each token, sampling "
        f"{100 * prof['sampling'] / prof['total']:.0f} %, the loop's bookkeeping {100 * prof['rest'] / prof['total']:.0f} %. "
        f"That is {big1['float'] / big1['module']:.1f}× nn.LSTM called one step at a time and {big1['float'] / big1['naive']:.0f}× "
        "the naive loop, which re-reads an average prefix of 250 tokens for every new one.",
        f"- int8 reads 4× fewer weight bytes; at batch 1 it gives {big1['int8'] / big1['float']:.1f}× on the 2×512 model: each "
        "int8 product also quantizes its input row and rescales its output (about 60 small tensor operations per token in "
        "all, a few microseconds each), and at one row the int8 kernel is far from the bandwidth bound. At batch 16 the "
        f"products dominate and int8 gives {rows[1]['int8'] / rows[1]['float']:.1f}×.",
        f"- The char model's {char1['mb']:.1f} MB of weights stay in cache, so no memory bound applies: its "
        f"{1e3 / char1['float']:.2f} ms per token are mostly the fixed cost of dispatching each tensor operation from "
        f"Python, which int8 (more operations, tiny products) makes worse ({char1['int8'] / char1['float']:.1f}×).",
        "",
        f"Cold start, {cases[0].name} bundle: `lstmgen sample` prints its first generated byte "
        f"**{first_byte:.2f} s** after the process starts ({first_byte8:.2f} s with `--quantize int8`); `lstmgen --help` takes "
        f"{help_seconds:.2f} s; `python -c 'import torch'` alone takes {import_torch:.2f} s.",
    ]
    section = "\n".join(lines)
    print(section)
    print(int8_text)
    if not args.no_write:
        write_section(section, args.doc)
        write_section(int8_text, args.doc, "int8")


def command_seconds_python(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    return time.perf_counter() - start


def write_section(section: str, doc: Path = DOC, name: str = "sampling") -> None:
    """Replace one of this benchmark's sections of docs/benchmarks.md (create the file if it is missing)."""
    from docsection import write_section as write

    write(doc, name, section, INTRO)
    print(f"updated {doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
