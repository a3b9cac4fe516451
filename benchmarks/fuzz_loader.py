"""Longer fuzzing of the bundle loader and the tokenizer than CI affords.

    python benchmarks/fuzz_loader.py --minutes 30 [--workers 2] [--out fuzz-findings]

Drives the mutators of tests/test_fuzz.py with a plain random generator. Every input is run in a
worker process with its address space capped (RLIMIT_AS, 3 GB) and an alarm per input (20 s), so a
hang, a memory blow-up or even a native crash in a parser is caught: the worker writes each input
to disk before trying it, and the parent saves that input when the worker dies. The only outcomes
allowed are success and LstmgenError; anything else is saved under --out with its traceback, and
the script exits 1 if there was any. Rerun one saved input with `--replay FILE`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEMORY_CAP = 3 << 30
SECONDS_PER_INPUT = 20


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError(f"one input took more than {SECONDS_PER_INPUT} s")


def worker(seed: int, until: float, out: Path, seed_bundle: Path) -> None:
    """Fuzz until `until` (a time.time()), reporting counts as JSON lines on stdout."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    signal.signal(signal.SIGALRM, _alarm)
    from tests.test_fuzz import Chooser, check_bundle, check_text, mutate_bundle

    from lstmgen.bundle import load_bundle

    rng = random.Random(seed)
    chooser = Chooser.from_random(rng)
    seed_data = seed_bundle.read_bytes()
    tokenizer = load_bundle(seed_bundle).tokenizer
    current = out / f"current-{os.getpid()}.bin"
    scratch = Path(tempfile.mkdtemp(prefix="fuzz-"))
    counts = {"ok": 0, "refused": 0, "text": 0, "findings": 0, "mutator_errors": 0}
    last_report = time.time()
    while time.time() < until:
        if rng.random() < 0.8:
            data = seed_data
            try:
                for _ in range(rng.choice([1, 1, 1, 2, 3])):  # stacked mutations reach further
                    data = mutate_bundle(chooser, data)
            except Exception:  # a bug in the fuzzer itself, not a finding about lstmgen
                counts["mutator_errors"] += 1
                traceback.print_exc()
                continue
            kind, payload = "bundle", data
        else:
            alphabet = rng.choice([(0x20, 0x7E), (0, 0x2FF), (0x2500, 0x2600), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF), (0, 0x10FFFF)])
            text = "".join(chr(c) for c in (rng.randint(*alphabet) for _ in range(rng.randint(0, 200))) if not 0xD800 <= c <= 0xDFFF)
            kind, payload = "text", text.encode("utf-8")
        current.write_bytes(kind.encode() + b"\n" + payload)
        signal.alarm(SECONDS_PER_INPUT)
        try:
            if kind == "bundle":
                counts[check_bundle(payload, scratch / "fuzzed.lstmgen")] += 1
            else:
                check_text(tokenizer, payload.decode("utf-8"))
                counts["text"] += 1
        except BaseException as error:  # noqa: BLE001 - every other outcome is a finding
            if isinstance(error, KeyboardInterrupt):
                raise
            counts["findings"] += 1
            name = f"finding-{type(error).__name__}-{int(time.time() * 1000)}"
            (out / f"{name}.bin").write_bytes(current.read_bytes())
            (out / f"{name}.txt").write_text("".join(traceback.format_exception(error)))
        finally:
            signal.alarm(0)
        if time.time() - last_report > 5:
            print(json.dumps(counts), flush=True)
            last_report = time.time()
    print(json.dumps(counts), flush=True)
    current.unlink(missing_ok=True)


def replay(path: Path) -> None:
    from tests.test_fuzz import check_bundle, check_text

    from lstmgen.bundle import load_bundle

    kind, payload = path.read_bytes().split(b"\n", 1)
    if kind == b"bundle":
        print(check_bundle(payload, Path(tempfile.mkdtemp()) / "replay.lstmgen"))
    else:
        with tempfile.TemporaryDirectory() as directory:
            seed = Path(directory) / "seed.lstmgen"
            from tests.test_fuzz import build_seed_bundle

            seed.write_bytes(build_seed_bundle(Path(directory)))
            check_text(load_bundle(seed).tokenizer, payload.decode("utf-8"))
            print("ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-findings"), help="where findings are saved")
    parser.add_argument("--replay", type=Path, help="run one saved input and show what happens")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--seed-bundle", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        replay(args.replay)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker(args.seed, args.until, args.out, args.seed_bundle)
        return 0

    from tests.test_fuzz import build_seed_bundle

    seed = args.seed if args.seed is not None else int(time.time())
    until = time.time() + args.minutes * 60
    work = Path(tempfile.mkdtemp(prefix="fuzz-loader-"))
    seed_bundle = work / "seed.lstmgen"
    seed_bundle.write_bytes(build_seed_bundle(work))
    print(f"fuzzing for {args.minutes:g} min with {args.workers} worker(s), seed {seed}; findings go to {args.out}", file=sys.stderr)
    totals = {"ok": 0, "refused": 0, "text": 0, "findings": 0, "mutator_errors": 0, "crashes": 0}
    generation = 0
    running: dict[int, tuple[subprocess.Popen, dict]] = {}

    def start(slot: int) -> None:
        nonlocal generation
        generation += 1
        command = [sys.executable, __file__, "--worker", "--seed", str(seed * 1000 + generation), "--until", str(until),
                   "--out", str(args.out), "--seed-bundle", str(seed_bundle)]
        running[slot] = (subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT), {})

    for slot in range(args.workers):
        start(slot)
    while running:
        for slot, (process, last) in list(running.items()):
            line = process.stdout.readline()
            if line:
                last.clear()
                last.update(json.loads(line))
                continue
            process.wait()
            for key, value in last.items():
                totals[key] += value
            del running[slot]
            if process.returncode != 0:
                # The worker died (a native crash, or killed): its last input is the culprit.
                totals["crashes"] += 1
                for current in args.out.glob(f"current-{process.pid}.bin"):
                    current.rename(args.out / f"crash-{process.returncode}-{int(time.time() * 1000)}.bin")
                if time.time() < until:
                    start(slot)
    print(json.dumps(totals))
    return 1 if totals["findings"] or totals["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
