"""Poems on demand, measured: form, rhyme and tone rates of constrained and free samples, beside the corpus.

    python benchmarks/poems.py                 # -m tang -n 200 --temp 0.8 --seed 1; writes docs/benchmarks.md
    python benchmarks/poems.py -n 40 --no-write

For each condition it draws `n` poems from the model (a quarter in each form: 五言绝句, 七言绝句, 五言律诗,
七言律诗; free samples in four calls of the same size, the conditions taking turns) and applies the same checkers to them and to every
poem of the corpus (lstmgen.poetry):

- well formed: benchmarks/tang_form.py's test (every verse 5 or every verse 7 characters);
- exact form: the corpus's layout (a title, lines `X，X。`) with 4 or 8 verses of 5 or 7 characters, and
  for constrained samples the form asked for;
- rhyme: the even verses end on one 中华新韵 group (first pypinyin reading of each character);
- tones: one of the form's standard level/oblique patterns on the 2nd, 4th, 6th and last characters.

Bits per character are the model's own surprisal of each sample (the unconstrained model: the
log-probabilities the sampler reports are taken before any mask), end-of-text included. Speed is
generated tokens (end-of-text included) per second of the process's CPU time, one torch thread by
default (`--threads`), each condition's calls timed in this run, and its ratio to the free samples':
CPU time rather than wall time, so that other jobs on a shared machine do not move the figures (on an
idle machine with one thread the two agree). The table goes into docs/benchmarks.md between the
`poems` markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tang_form  # noqa: E402
from docsection import write_section  # noqa: E402

FORMS = ("wujue", "qijue", "wulv", "qilv")
ACROSTIC = {"wujue": "春花秋月", "qijue": "春花秋月", "wulv": "春花秋月江山风雨", "qilv": "春花秋月江山风雨"}
CONDITIONS = (
    ("free", {}),
    ("--form", {"form": True}),
    ("--form --rhyme", {"form": True, "rhyme": True}),
    ("--form --rhyme --tones", {"form": True, "rhyme": True, "tones": True}),
    ("--form --acrostic --rhyme --tones", {"form": True, "acrostic": True, "rhyme": True, "tones": True}),
)


def rates(poems: list[str], forms: list[str | None]) -> dict[str, float]:
    from lstmgen.poetry import check_chinese, chinese_rhymes, chinese_tones, chinese_verses

    def exact(poem: str, form: str | None) -> bool:
        if form is not None:
            return check_chinese(poem, form)
        verses = chinese_verses(poem)
        return check_chinese(poem) and verses is not None and len(verses) in (4, 8)

    total = len(poems)
    return {
        "well_formed": sum(tang_form.well_formed(p) for p in poems) / total,
        "exact_form": sum(exact(p, f) for p, f in zip(poems, forms)) / total,
        "rhyme": sum(chinese_rhymes(p) for p in poems) / total,
        "tones": sum(chinese_tones(p) for p in poems) / total,
    }


def sample_condition(model, asked: dict, form: str, count: int, temperature: float, seed: int) -> tuple[list, float]:
    """`count` samples of one condition in one call (the form's when the condition has --form), and its CPU time."""
    options: dict = {"temperature": temperature, "seed": seed, "max_tokens": 300}
    if asked.get("form"):
        options["form"] = form
    for flag in ("rhyme", "tones"):
        if asked.get(flag):
            options[flag] = True
    if asked.get("acrostic"):
        options["acrostic"] = ACROSTIC[form]
    started = time.process_time()
    samples = model.sample_many("", count, **options)
    return samples, time.process_time() - started


def summary(name: str, asked: dict, drawn: list[tuple[str, list, float]]) -> dict:
    poems, forms, bits, chars, tokens, ended, seconds = [], [], 0.0, 0, 0, 0, 0.0
    for form, samples, elapsed in drawn:
        seconds += elapsed
        for sample in samples:
            poems.append(sample.text)
            forms.append(form if asked.get("form") else None)
            bits -= sample.log_prob / math.log(2)
            chars += len(sample.text)
            ended += sample.finish_reason == "end-of-text"
            tokens += len(sample.tokens) + (sample.finish_reason == "end-of-text")
    return {
        "condition": name,
        "samples": len(poems),
        "ended": ended / len(poems),
        **rates(poems, forms),
        "bits_per_char": bits / max(chars, 1),
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "example": poems[0],
    }


def one_at_a_time(model, count: int, temperature: float, seed: int) -> dict[str, float]:
    """Tokens per CPU second drawing one sample per call (as `lstmgen sample` without -n does), free and with
    every constraint, `count` samples each in every form, the two taking turns."""
    name, asked = CONDITIONS[-1]
    tokens = {"free": 0, name: 0}
    seconds = {"free": 0.0, name: 0.0}
    for number, form in enumerate(FORMS):
        for index in range(count):
            for label, condition in (("free", {}), (name, asked)):
                samples, elapsed = sample_condition(model, condition, form, 1, temperature, seed + 100 * number + index)
                tokens[label] += sum(len(s.tokens) + (s.finish_reason == "end-of-text") for s in samples)
                seconds[label] += elapsed
    return {label: tokens[label] / seconds[label] for label in tokens}


def build_times(model) -> tuple[float, float]:
    """CPU seconds to build a constraint (--form --rhyme --tones): the first in a process (importing pypinyin and
    reading every character of the vocabulary) and a later one (readings cached)."""
    from lstmgen.config import SamplingOptions

    times = []
    for form in ("wujue", "qilv"):
        started = time.process_time()
        model._sampler.constraint(SamplingOptions(form=form, rhyme=True, tones=True))
        times.append(time.process_time() - started)
    return times[0], times[1]


def table(
    rows: list[dict], corpus: dict, args: argparse.Namespace, single: dict[str, float], builds: tuple[float, float]
) -> str:
    free = rows[0]["tokens_per_second"]
    lines = [
        f"`python benchmarks/poems.py -m {args.model} -n {args.n} --temp {args.temp} --seed {args.seed}` "
        f"({datetime.date.today().isoformat()}, {platform.machine()} CPU, {os.cpu_count()} cores, torch threads "
        f"{args.threads}, measured in one run; tokens per second of CPU time):",
        "",
        "| samples | n | ended | well formed | exact form | rhyme | tones (平仄) | bits/char | tokens per CPU second | speed vs free |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['condition']} | {row['samples']} | {row['ended']:.1%} | {row['well_formed']:.1%} | "
            f"{row['exact_form']:.1%} | {row['rhyme']:.1%} | {row['tones']:.1%} | {row['bits_per_char']:.2f} | "
            f"{row['tokens_per_second']:.0f} | {row['tokens_per_second'] / free:.2f} |"
        )
    lines.append(
        f"| the corpus ({corpus['samples']:,} poems) | {corpus['samples']:,} | — | {corpus['well_formed']:.1%} | "
        f"{corpus['exact_form']:.1%} | {corpus['rhyme']:.1%} | {corpus['tones']:.1%} | — | — | — |"
    )
    name = CONDITIONS[-1][0]
    lines += [
        "",
        f"One sample per call ({args.single} in each form, as `lstmgen sample` without `-n` draws): free "
        f"{single['free']:.0f} tokens per CPU second, `{name}` {single[name]:.0f} "
        f"({single[name] / single['free']:.2f} of free). Building the constraint (`--form --rhyme --tones`) took "
        f"{builds[0]:.2f} CPU seconds the first time in the process (importing pypinyin, reading the vocabulary's "
        f"characters) and {builds[1]:.2f} s for another form; masks are then cached per kind of state.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="tang", help="bundle path or model name")
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "tang-poems.simplified.txt")
    parser.add_argument("-n", type=int, default=200, help="samples per condition (a multiple of 4)")
    parser.add_argument("--temp", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--single", type=int, default=10, help="samples per form drawn one per call (speed)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    import torch

    import lstmgen
    from lstmgen.registry import resolve_model

    torch.set_num_threads(args.threads)
    model = lstmgen.load(resolve_model(args.model, os.environ))
    builds = build_times(model)  # first: before the corpus's checks read any character
    poems = tang_form.corpus_poems(args.corpus)
    corpus = {"samples": len(poems), **rates(poems, [None] * len(poems))}
    print(json.dumps({"condition": "corpus", **corpus}, ensure_ascii=False), file=sys.stderr)
    model.sample_many("", 4, form="wujue", rhyme=True, tones=True, seed=0)  # warm-up: masks
    # Conditions take turns form by form, so that a change in the machine's load touches them alike.
    drawn: dict[str, list] = {name: [] for name, _ in CONDITIONS}
    for number, form in enumerate(FORMS):
        for name, asked in CONDITIONS:
            samples, seconds = sample_condition(model, asked, form, args.n // len(FORMS), args.temp, args.seed + number)
            drawn[name].append((form, samples, seconds))
    rows = [summary(name, asked, drawn[name]) for name, asked in CONDITIONS]
    for row in rows:
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr)
    single = one_at_a_time(model, args.single, args.temp, args.seed)
    print(json.dumps({"one_at_a_time": single, "build_seconds": builds}, ensure_ascii=False), file=sys.stderr)
    text = table(rows, corpus, args, single, builds)
    print(text)
    if not args.no_write:
        write_section(args.doc, "poems", text)
        print(f"updated {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
