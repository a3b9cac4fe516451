"""No user file is harmed, no run harms another, no path crashes (issue 19), and a trained model is
never replaced by accident (issue 15): the cases as users met them, through the command line.

The guard itself lives in lstmgen/fsutil.py; tests/test_path_fuzzer.py throws every kind of awkward
path at every path argument. Here are the concrete stories: each would have lost a file, hung or
crashed before the guard existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

TRAIN_FAST = ["--hidden-size", "32", "--layers", "1", "--batch-size", "8", "--seq-len", "32", "--vocab-size", "400", "--threads", "1"]


def state(*paths: Path) -> dict[str, tuple]:
    """Content hash, type and mode of files (recursively for directories): what must not change."""
    found: dict[str, tuple] = {}
    for path in paths:
        for item in [path, *sorted(path.rglob("*"))] if path.is_dir() and not path.is_symlink() else [path]:
            info = item.lstat()
            digest = hashlib.sha256(item.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None
            found[str(item)] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), digest)
    return found


def one_error(result, *fragments: str) -> str:
    """Exit 2, no traceback, and exactly one line on stderr, `error: ...` naming each fragment."""
    context = f"\nexit {result.returncode}\nstderr: {result.stderr[-2000:]}"
    assert not getattr(result, "timed_out", False), "timed out" + context
    assert result.returncode == 2 and "Traceback" not in result.stderr, context
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), context
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"expected {fragment!r}" + context
    return lines[0]


@pytest.fixture
def ws(tmp_path: Path, small_corpus: Path, tiny_bundle: Path) -> Path:
    """A workspace: corpus.txt, held.txt, a trained m.lstmgen with its run directory."""
    shutil.copy(small_corpus, tmp_path / "corpus.txt")
    (tmp_path / "held.txt").write_bytes(small_corpus.read_bytes()[-3000:])
    shutil.copy(tiny_bundle, tmp_path / "m.lstmgen")
    shutil.copytree(tiny_bundle.with_name(tiny_bundle.name + ".run"), tmp_path / "m.lstmgen.run")
    return tmp_path


# -- issue 19, data loss: an input named as an output ----------------------------------------------------


@pytest.mark.parametrize("args, victim, fragment", [
    (["train", "corpus.txt", "-o", "corpus.txt"], "corpus.txt", "is a corpus file, an input of this command"),
    (["eval", "-m", "m.lstmgen", "held.txt", "--html", "held.txt"], "held.txt", "is a text file, an input"),
    (["inspect", "-m", "m.lstmgen", "held.txt", "--neuron", "0:1", "--html", "held.txt"], "held.txt", "is a text file, an input"),
    (["info", "m.lstmgen", "--plot", "m.lstmgen"], "m.lstmgen", "is the model, an input"),
    (["convert", "m.lstmgen", "-o", "m.lstmgen"], "m.lstmgen", "is the bundle being converted, an input"),
], ids=["train-o-corpus", "eval-html-text", "inspect-html-text", "info-plot-model", "convert-o-model"])
def test_an_input_named_as_an_output_is_refused(args: list[str], victim: str, fragment: str, ws: Path, fast_cli) -> None:
    before = state(ws)
    one_error(fast_cli(*args, cwd=ws), fragment)
    assert state(ws) == before


def test_an_input_reached_through_a_symlink_or_hard_link_is_still_an_input(ws: Path, fast_cli) -> None:
    os.symlink("held.txt", ws / "page.html")
    os.link(ws / "held.txt", ws / "hard.html")
    before = state(ws)
    for page in ("page.html", "hard.html"):
        one_error(fast_cli("eval", "-m", "m.lstmgen", "held.txt", "--html", page, cwd=ws), "an input of this command")
    assert state(ws) == before


# -- special, read-only and other kinds of files ------------------------------------------------------------


def test_special_files_are_never_replaced(ws: Path, fast_cli) -> None:
    os.mkfifo(ws / "fifo")
    targets = ["fifo"]
    try:
        os.mknod(ws / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append("null")
    except OSError:
        pass  # not allowed here (no CAP_MKNOD): the fuzzer covers /dev/null as an unprivileged user
    before = state(ws)
    for target in targets:
        one_error(fast_cli("eval", "-m", "m.lstmgen", "held.txt", "--html", target, "--no-baselines", cwd=ws, timeout=60), "not a regular file")
        one_error(fast_cli("info", "m.lstmgen", "--plot", target, cwd=ws, timeout=60), "not a regular file")
    assert state(ws) == before


def test_a_read_only_file_is_refused_and_keeps_its_mode(ws: Path, fast_cli) -> None:
    page = ws / "page.html"
    page.write_text("<!DOCTYPE html><p>mine</p>\n")
    page.chmod(0o444)
    before = state(ws)
    one_error(fast_cli("eval", "-m", "m.lstmgen", "held.txt", "--html", "page.html", "--no-baselines", cwd=ws), "read-only", "chmod u+w")
    assert state(ws) == before


def test_a_replaced_file_keeps_the_mode_the_user_gave_it(ws: Path, fast_cli) -> None:
    page = ws / "page.html"
    page.write_text("<!DOCTYPE html><p>an older page</p>\n")
    page.chmod(0o600)
    result = fast_cli("eval", "-m", "m.lstmgen", "held.txt", "--html", "page.html", "--no-baselines", "--json", cwd=ws)
    assert result.returncode == 0, result.stderr
    assert "Surprisal" in page.read_text() and stat.S_IMODE(page.stat().st_mode) == 0o600


@pytest.mark.parametrize("args, existing, fragment", [
    (["convert", "m.lstmgen", "-o", "notes.txt"], b"my notes\n", "is a text file, not a model bundle"),
    (["eval", "-m", "m.lstmgen", "held.txt", "--html", "other.lstmgen", "--no-baselines"], None, "is a model bundle, not an HTML page"),
    (["info", "m.lstmgen", "--plot", "page.png"], b"<!doctype html><p>a page</p>", "is an HTML page, not a PNG image"),
], ids=["bundle-over-text", "page-over-bundle", "plot-over-page"])
def test_an_output_never_replaces_a_file_of_another_kind(args: list[str], existing: bytes | None, fragment: str, ws: Path, fast_cli) -> None:
    target = ws / args[args.index("-o") + 1 if "-o" in args else (args.index("--html") + 1 if "--html" in args else args.index("--plot") + 1)]
    if existing is None:
        shutil.copy(ws / "m.lstmgen", target)
    else:
        target.write_bytes(existing)
    before = state(ws)
    one_error(fast_cli(*args, cwd=ws), fragment)
    assert state(ws) == before


# -- runs: the lock comes first, a refused run changes nothing ---------------------------------------------


def test_a_refused_second_run_does_not_touch_the_running_one(ws: Path, fast_cli) -> None:
    """`lstmgen train fr/text.txt` while `lstmgen train en/text.txt` writes text.lstmgen: refused before it re-encodes anything."""
    from lstmgen.rundir import RunLock

    other = ws / "other.txt"
    other.write_bytes((ws / "corpus.txt").read_bytes()[:30_000])
    run_dir = ws / "m.lstmgen.run"
    before = state(ws)
    with RunLock(run_dir):  # this process is "the running run"
        for extra in ([], ["--overwrite"], ["--resume"], ["--dry-run", "--overwrite"]):
            one_error(fast_cli("train", "other.txt", "-o", "m.lstmgen", *TRAIN_FAST, "--max-steps", "2", *extra, cwd=ws), "already writing")
        held = state(ws)
    del held[str(run_dir / "lock")]
    assert held == before  # tokens/, checkpoint and bundle as they were (the lock file is the running run's)


def test_a_refused_resume_with_another_corpus_rewrites_nothing(ws: Path, fast_cli) -> None:
    (ws / "other.txt").write_bytes((ws / "corpus.txt").read_bytes()[:30_000])
    before = state(ws)
    one_error(fast_cli("train", "other.txt", "-o", "m.lstmgen", "--resume", "--threads", "1", cwd=ws), "corpus differs")
    one_error(fast_cli("train", "corpus.txt", "-o", "m.lstmgen", "--resume", "--val-fraction", "0.2", cwd=ws), "--val-fraction differs")
    assert state(ws) == before


def test_a_run_directory_that_is_a_file_is_refused(ws: Path, fast_cli) -> None:
    (ws / "x.lstmgen.run").write_text("not a directory\n")
    before = state(ws)
    one_error(fast_cli("train", "corpus.txt", "-o", "x.lstmgen", *TRAIN_FAST, cwd=ws), "x.lstmgen.run", "not a directory")
    assert state(ws) == before and not (ws / "x.lstmgen").exists()


def test_a_finished_run_leaves_no_lock_file(tiny_bundle: Path) -> None:
    run_dir = tiny_bundle.with_name(tiny_bundle.name + ".run")
    assert (run_dir / "checkpoint.ckpt").is_file() and not (run_dir / "lock").exists()


# -- issue 15 §1: a fresh run never replaces a trained model by accident --------------------------------------


def test_a_fresh_run_over_a_finished_run_is_refused(ws: Path, fast_cli) -> None:
    before = state(ws)
    meta = json.loads(zipfile.ZipFile(ws / "m.lstmgen").read("lstmgen.json"))["training"]
    for extra in ([], ["--dry-run"]):
        line = one_error(fast_cli("train", "corpus.txt", "-o", "m.lstmgen", *TRAIN_FAST, "--max-steps", "5", *extra, cwd=ws),
                         "m.lstmgen already holds a model trained for 20 steps", "--resume", "another -o", "--overwrite")
        assert f"{meta['best_val_bits_per_char']:.2f} bits/char" in line
        assert re.search(r"\(\S+ bits/char, \d{4}-\d\d-\d\d \d\d:\d\d\)", line), line
        assert "checkpoint of a run at step 20" in line
    assert state(ws) == before
    # --overwrite is the way to start over (a dry run shows it is accepted, and replaces nothing yet)
    result = fast_cli("-q", "train", "corpus.txt", "-o", "m.lstmgen", *TRAIN_FAST, "--overwrite", "--dry-run", cwd=ws)
    assert result.returncode == 0 and json.loads(result.stdout)["model"]["hidden_size"] == 32, result.stderr
    assert state(ws / "m.lstmgen", ws / "m.lstmgen.run" / "checkpoint.ckpt") == {k: v for k, v in before.items() if k.endswith(("m.lstmgen", "ckpt"))}


def test_a_fresh_run_over_a_bundle_without_a_run_directory_is_refused(ws: Path, fast_cli) -> None:
    shutil.rmtree(ws / "m.lstmgen.run")
    before = state(ws)
    line = one_error(fast_cli("train", "corpus.txt", "-o", "m.lstmgen", *TRAIN_FAST, cwd=ws), "m.lstmgen already holds a model trained for 20 steps")
    assert "checkpoint" not in line
    assert state(ws) == before and not (ws / "m.lstmgen.run").exists()
    one_error(fast_cli("train", "corpus.txt", "-o", "m.lstmgen", "--resume", "--overwrite", cwd=ws), "give one of them")


def _start_training(ws: Path, corpus: str, output: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "lstmgen", "train", corpus, "-o", output, *TRAIN_FAST, *extra], cwd=ws, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1].decode(errors="replace")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_an_interrupted_run_says_so_in_one_line_and_is_then_protected(ws: Path, fast_cli) -> None:
    """Ctrl-C: one accurate line (plurals, a shell-quoted resume command); progress lines in a log show the budget;
    a fresh run over it is refused; the lock file is gone."""
    name, output = "my 'corpus'.txt", "out m.lstmgen"
    shutil.copy(ws / "corpus.txt", ws / name)
    process = _start_training(ws, name, output, "--max-time", "10m", "--log-every", "1", "--val-every", "100000")
    metrics = ws / (output + ".run") / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 2, process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    stderr = err.decode()
    assert process.returncode == 130, stderr
    lines = stderr.splitlines()
    assert not any(line.startswith("done after") for line in lines), stderr
    assert re.search(r"^step \d+ loss .* elapsed, \d+% of the budget, ~\d+:\d\d left$", stderr, re.M), stderr
    last = lines[-1]
    steps = int(re.search(r"^interrupted after (\d+) steps? \(", last).group(1))
    assert f"{steps} step " in last if steps == 1 else f"{steps} steps " in last
    assert "checkpoint saved" in last and "no validation yet" in last
    command = last.split("resume with: ")[1]
    assert command == "lstmgen train 'my '\"'\"'corpus'\"'\"'.txt' -o 'out m.lstmgen' --resume"
    run_dir = ws / (output + ".run")
    assert not (run_dir / "lock").exists() and (run_dir / "checkpoint.ckpt").exists()
    before = state(ws)
    line = one_error(fast_cli("train", name, "-o", output, *TRAIN_FAST, cwd=ws), f"checkpoint of a run at step {steps:,}")
    assert f"trained for {steps} step" in line
    assert state(ws) == before


def test_sigterm_while_tokenizing_leaves_no_run_directory(tmp_path: Path) -> None:
    corpus = tmp_path / "big.txt"
    corpus.write_bytes((ROOT / "corpora" / "tinyshakespeare.txt").read_bytes() * 4)
    process = _start_training(tmp_path, "big.txt", "big.lstmgen", "--max-steps", "1")
    _wait_for(lambda: (tmp_path / "big.lstmgen.run").exists(), process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and "Traceback" not in err.decode(), err.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]


# -- issue 19, crashes: --init-from, paths the OS refuses, deep TOML, closed streams -------------------------


@pytest.mark.parametrize("option", [["--cell", "gru"], ["--hidden-size", "128"], ["--layers", "3"], ["--no-tie-weights"]],
                         ids=lambda option: option[0])
def test_init_from_refuses_another_architecture_before_any_work(option: list[str], ws: Path, fast_cli) -> None:
    before = state(ws)
    one_error(fast_cli("train", "corpus.txt", "-o", "ft.lstmgen", "--init-from", "m.lstmgen", *option, cwd=ws), "--init-from keeps", option[0])
    assert state(ws) == before and not (ws / "ft.lstmgen.run").exists()


def test_init_from_takes_a_model_name_and_a_new_dropout(ws: Path, fast_cli) -> None:
    home = ws / "home"
    (home / "models").mkdir(parents=True)
    shutil.copy(ws / "m.lstmgen", home / "models" / "base.lstmgen")
    env = {"LSTMGEN_HOME": str(home)}
    result = fast_cli("-q", "train", "corpus.txt", "-o", "ft.lstmgen", "--init-from", "base", "--dropout", "0.5", "--dry-run", "--threads", "1",
                      cwd=ws, env=env)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert (model["hidden_size"], model["num_layers"], model["dropout"]) == (32, 1, 0.5)
    line = one_error(fast_cli("train", "corpus.txt", "--init-from", "nosuch", cwd=ws, env=env), "no model named 'nosuch'")
    assert "-o nosuch" not in line


def test_a_path_the_os_refuses_is_one_line(ws: Path, fast_cli) -> None:
    long = "x" * 300
    for args in (["info", long], ["eval", "-m", f"{long}.lstmgen", "held.txt"], ["eval", "-m", "m.lstmgen", f"{long}.txt"],
                 ["eval", "-m", "m.lstmgen", "held.txt", "--html", f"{long}.html"], ["convert", "m.lstmgen", "-o", f"{long}.lstmgen"],
                 ["train", "corpus.txt", "-o", f"{long}.lstmgen"], ["train", "corpus.txt", "-o", "x" * 240 + ".lstmgen"]):
        one_error(fast_cli(*args, cwd=ws), "too long")


def test_config_files_are_read_within_bounds(ws: Path, fast_cli) -> None:
    os.mkfifo(ws / "run.toml")
    (ws / "deep.toml").write_text("[train]\nx = " + "[" * 2000 + "]" * 2000 + "\n")
    (ws / "big.toml").write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    cases = [("run.toml", "not a regular file"), ("/dev/zero", "not a regular file"), ("deep.toml", "too deeply"), ("big.toml", "too large")]
    for path, fragment in cases:
        one_error(fast_cli("train", "corpus.txt", "-o", "new.lstmgen", "--config", path, cwd=ws, timeout=60, rlimits={"RLIMIT_AS": 3 << 30}),
                  "config file", fragment)
    assert not (ws / "new.lstmgen.run").exists()


@pytest.mark.parametrize("setting, fragment", [
    ("[tokenizer]\nmax_training_bytes = 0\n", "max_training_bytes must be a whole number from 65536"),
    ("[model]\nvocab_size = 5\n", "[model] vocab_size cannot be set"),
    ("[model]\ncell = \"lstm2\"\n", "--cell must be one of"),
])
def test_config_settings_that_would_fail_later_are_refused_first(setting: str, fragment: str, ws: Path, fast_cli) -> None:
    (ws / "run.toml").write_text(setting)
    one_error(fast_cli("train", "corpus.txt", "-o", "new.lstmgen", "--config", "run.toml", "--dry-run", cwd=ws), fragment)
    assert not (ws / "new.lstmgen.run").exists()


def test_an_unknown_cell_is_refused_before_any_work(ws: Path, fast_cli) -> None:
    before = state(ws)
    one_error(fast_cli("train", "corpus.txt", "-o", "new.lstmgen", "--cell", "lstm2", cwd=ws), "--cell must be one of")
    assert state(ws) == before


@pytest.mark.parametrize("closed, args, code, fragment", [
    (("stdin",), ["sample", "-m", "{b}", "-i"], 0, None),
    (("stdin",), ["sample", "-m", "{b}", "--prompt", "-"], 2, "stdin is closed"),
    (("stdout",), ["sample", "-m", "{b}", "--max-tokens", "3"], 2, "standard output is closed"),
    (("stderr",), ["sample", "-m", "nosuch.lstmgen"], 2, None),
], ids=["interactive-stdin", "prompt-stdin", "stdout", "stderr"])
def test_closed_standard_streams(closed: tuple[str, ...], args: list[str], code: int, fragment: str | None, tiny_bundle: Path, tmp_path: Path,
                                 fast_cli) -> None:
    result = fast_cli(*[a.replace("{b}", str(tiny_bundle)) for a in args], cwd=tmp_path, closed=closed, timeout=60)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if fragment is not None:
        one_error(result, fragment)


def test_closed_stdout_never_lands_in_a_file_lstmgen_writes(ws: Path, fast_cli) -> None:
    """With descriptor 1 closed, the next file opened gets it: nothing printed may end up in the HTML page."""
    result = fast_cli("eval", "-m", "m.lstmgen", "held.txt", "--html", "page.html", "--no-baselines", cwd=ws, closed=("stdout",), timeout=60)
    assert result.returncode == 0, result.stderr
    page = (ws / "page.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")


# -- hangs ---------------------------------------------------------------------------------------------------


def test_models_lists_a_directory_bundle_with_a_fifo_member_without_hanging(tmp_path: Path, tiny_bundle: Path, fast_cli) -> None:
    bundle = tmp_path / "home" / "models" / "odd.lstmgen"
    bundle.mkdir(parents=True)
    with zipfile.ZipFile(tiny_bundle) as archive:
        for member in ("model.safetensors", "tokenizer.model"):
            (bundle / member).write_bytes(archive.read(member))
    os.mkfifo(bundle / "lstmgen.json")
    for extra in ([], ["--json"]):
        result = fast_cli("models", *extra, cwd=tmp_path, env={"LSTMGEN_HOME": str(tmp_path / "home")}, timeout=30)
        assert not result.timed_out and result.returncode == 0, result.stderr
        assert "odd" in result.stdout and "unreadable" in result.stdout


# -- messages ------------------------------------------------------------------------------------------------


def test_prompt_file_errors_speak_of_the_prompt_file(ws: Path, fast_cli) -> None:
    (ws / "prompt.txt").write_bytes(b"ROMEO\xff\xfe:")
    line = one_error(fast_cli("sample", "-m", "m.lstmgen", "--prompt-file", "prompt.txt", cwd=ws), "prompt file prompt.txt is not valid UTF-8")
    assert "corpus" not in line and "--errors" not in line


def test_a_model_name_beside_a_bundle_of_that_name_points_to_it(ws: Path, fast_cli) -> None:
    shutil.copy(ws / "m.lstmgen", ws / "mytext.lstmgen")
    one_error(fast_cli("sample", "-m", "mytext", cwd=ws, env={"LSTMGEN_HOME": str(ws / "home")}), "mytext.lstmgen", "-m mytext.lstmgen")


def test_eval_of_nothing_to_score_says_so(tmp_path: Path, fast_cli) -> None:
    (tmp_path / "blank.txt").write_text("\n\n   \n\n")
    one_error(fast_cli("eval", "-m", "tang", "blank.txt", "--json", "--threads", "1", cwd=tmp_path), "no text to score")


def test_a_gru_run_is_called_a_gru(ws: Path, fast_cli) -> None:
    result = fast_cli("train", "corpus.txt", "-o", "g.lstmgen", *TRAIN_FAST, "--cell", "gru", "--max-steps", "1", cwd=ws)
    assert result.returncode == 0, result.stderr
    assert "training a 1×32 GRU" in result.stderr and "done after 1 step," in result.stderr


# -- issue 15 §4: the second of two samples --------------------------------------------------------------------


def test_samples_are_separated_by_one_blank_line(fast_cli, tmp_path: Path) -> None:
    args = ["sample", "-m", "tang", "-n", "3", "--max-tokens", "30", "--seed", "5", "--threads", "1"]
    text = fast_cli(*args, cwd=tmp_path)
    records = [json.loads(line) for line in fast_cli(*args, "--format", "jsonl", cwd=tmp_path).stdout.splitlines()]
    assert text.returncode == 0 and len(records) == 3, text.stderr
    ended = [r["text"] if r["text"].endswith("\n") else r["text"] + "\n" for r in records]
    assert text.stdout == "\n".join(ended)  # one blank line between samples, each sample exactly its text
    assert "\n\n\n" not in text.stdout
