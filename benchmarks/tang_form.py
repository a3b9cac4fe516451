"""Does a Tang-poem model write regulated verse? The share of poems whose lines all have 5 or 7 characters.

    python benchmarks/tang_form.py -m tang -n 200 --temp 0.8 --seed 1
    python benchmarks/tang_form.py --corpus corpora/tang-poems.simplified.txt   # the same measure on real poems

A poem is one document (the model is trained with `--documents blank-line`, so a sample ends at the
end-of-text token): a title line, then verse lines such as "秦川雄帝宅，函谷壮皇居。". Each verse
line is cut at its punctuation (，。？！；：、) into verses. A poem is **well formed** when it has at
least two verses, every verse has exactly 5 Han characters or every verse has exactly 7 (one length
throughout, as regulated verse requires), and nothing but Han characters and punctuation appears in
the body. The same test applied to the training corpus gives the ceiling to compare with.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUNCTUATION = "，。？！；：、"
HAN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+$")


def verses(poem: str) -> list[str] | None:
    """The verses of a poem's body (after its title line), or None when the body is not verse."""
    lines = [line.strip() for line in poem.strip("\n").split("\n")]
    body = [line for line in lines[1:] if line]
    if not body:
        return None
    found: list[str] = []
    for line in body:
        parts = [part for part in re.split(f"[{PUNCTUATION}]", line) if part]
        if not parts or not all(HAN.match(part) for part in parts):
            return None
        found.extend(parts)
    return found


def well_formed(poem: str) -> bool:
    found = verses(poem)
    return found is not None and len(found) >= 2 and len({len(v) for v in found}) == 1 and len(found[0]) in (5, 7)


def corpus_poems(path: Path) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]


def sample_poems(model_name: str, count: int, temperature: float, seed: int) -> tuple[list[str], int]:
    """`count` samples from the start of a document; poems cut off by max_tokens are counted as not ended."""
    import lstmgen
    from lstmgen.registry import resolve_model

    model = lstmgen.load(resolve_model(model_name, os.environ))
    samples = model.sample_many("", count, temperature=temperature, max_tokens=300, seed=seed)
    ended = [s.text for s in samples if s.finish_reason != "length"]
    return ended, count - len(ended)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default="tang", help="bundle path or model name")
    parser.add_argument("--corpus", type=Path, help="measure real poems instead of a model's")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--temp", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=3, help="print this many sampled poems to stderr")
    args = parser.parse_args()
    if args.corpus:
        poems, unfinished = corpus_poems(args.corpus), 0
    else:
        poems, unfinished = sample_poems(args.model, args.n, args.temp, args.seed)
    good = sum(well_formed(p) for p in poems)
    total = len(poems) + unfinished
    for poem in poems[: args.show]:
        print(poem.strip() + "\n", file=sys.stderr)
    print(json.dumps({"source": str(args.corpus or args.model), "poems": total, "well_formed": good, "unfinished": unfinished,
                      "share": good / total if total else float("nan"), "temperature": None if args.corpus else args.temp}))


if __name__ == "__main__":
    main()
