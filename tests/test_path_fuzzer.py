"""The path fuzzer: every path argument of every command, given every kind of awkward path.

Each command line below is valid and cheap. For each of its path arguments, the fuzzer puts one
hostile path in that argument's place (the others stay valid) and runs the command in a fresh
workspace (a process of its own, forked from the warm server in conftest.py):

    input      another input of the same command (for an output: the input it would overwrite)
    fifo       a named pipe nobody writes to
    chardev    a character device (a copy of /dev/null's node; /dev/null itself, as an unprivileged user, where mknod is not allowed)
    directory  a directory holding a file
    readonly   a mode 0444 file of the kind the argument takes (an input works; an output must be refused)
    dangling   a symbolic link to a file that does not exist
    longname   a 300-character file name
    noperm     a path inside a directory without permissions, run as an unprivileged user (as `nobody`
               when the suite runs as root; skipped only where no such user exists)

and asserts what docs/security.md promises: exit code 0, 1 or 2; no traceback; at most two lines on
stderr; no hang; and every file that existed before — the hostile one included — byte-identical,
with the same type and mode (new files, such as a successful run's output, may appear).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import CANNOT_DROP_ROOT

IS_ROOT = os.geteuid() == 0
VARIANTS = ("input", "fifo", "chardev", "directory", "readonly", "dangling", "longname", "noperm")
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)
PAGE = b"<!DOCTYPE html>\n<p>a page the user keeps</p>\n"
FAST = ["--threads", "1"]


@dataclass(frozen=True)
class Arg:
    """One path argument: the command line with `{}` where the path goes, what a valid value of it is, and its role."""

    command: str
    args: tuple[str, ...]
    name: str
    output: bool
    other_input: str  # the value for the "input" variant
    readonly: str  # a file of the kind this argument takes, made read-only for the "readonly" variant

    @property
    def id(self) -> str:
        return f"{self.command}:{self.name}"


def _line(*args: str) -> tuple[str, ...]:
    return tuple(args)


TRAIN = ("--config", "run.toml", "--max-steps", "1", "--batch-size", "4", "--seq-len", "16", *FAST)
ARGS = [
    Arg("tokenize", _line("tokenize", "{}", "-o", "out.tok", "--vocab-size", "400"), "CORPUS", False, "text.txt", "corpus.txt"),
    Arg("tokenize", _line("tokenize", "corpus.txt", "-o", "{}", "--vocab-size", "400"), "-o", True, "corpus.txt", "corpus.txt"),
    Arg("train", _line("train", "{}", "-o", "out.lstmgen", "--tokenizer", "tok", *TRAIN), "CORPUS", False, "run.toml", "corpus.txt"),
    Arg("train", _line("train", "corpus.txt", "-o", "{}", "--tokenizer", "tok", *TRAIN), "-o", True, "corpus.txt", "model.lstmgen"),
    Arg("train", _line("train", "corpus.txt", "-o", "out.lstmgen", "--tokenizer", "{}", *TRAIN), "--tokenizer", False, "corpus.txt", "corpus.txt"),
    Arg("train", _line("train", "corpus.txt", "-o", "out.lstmgen", "--tokenizer", "tok", "--config", "{}", *TRAIN[2:]), "--config", False,
        "corpus.txt", "run.toml"),
    Arg("train", _line("train", "corpus.txt", "-o", "out.lstmgen", "--init-from", "{}", *TRAIN[2:]), "--init-from", False, "corpus.txt",
        "model.lstmgen"),
    Arg("sample", _line("sample", "-m", "{}", "--prompt-file", "prompt.txt", "--max-tokens", "3", *FAST), "-m", False, "prompt.txt",
        "model.lstmgen"),
    Arg("sample", _line("sample", "-m", "model.lstmgen", "--prompt-file", "{}", "--max-tokens", "3", *FAST), "--prompt-file", False,
        "model.lstmgen", "prompt.txt"),
    Arg("eval", _line("eval", "-m", "model.lstmgen", "{}", "--html", "page.html", "--no-baselines", "--json", *FAST), "FILE", False, "model.lstmgen",
        "text.txt"),
    Arg("eval", _line("eval", "-m", "{}", "text.txt", "--html", "page.html", "--no-baselines", "--json", *FAST), "-m", False, "text.txt", "model.lstmgen"),
    Arg("eval", _line("eval", "-m", "model.lstmgen", "text.txt", "--html", "{}", "--no-baselines", "--json", *FAST), "--html", True, "text.txt",
        "kept.html"),
    Arg("inspect", _line("inspect", "-m", "model.lstmgen", "{}", "--neuron", "0:1", "--html", "cell.html", "--max-tokens", "200", *FAST), "FILE",
        False, "model.lstmgen", "text.txt"),
    Arg("inspect", _line("inspect", "-m", "{}", "text.txt", "--neuron", "0:1", "--html", "cell.html", "--max-tokens", "200", *FAST), "-m",
        False, "text.txt", "model.lstmgen"),
    Arg("inspect", _line("inspect", "-m", "model.lstmgen", "text.txt", "--neuron", "0:1", "--html", "{}", "--max-tokens", "200", *FAST),
        "--html", True, "model.lstmgen", "kept.html"),
    Arg("info", _line("info", "{}", "--plot", "curves.png"), "MODEL", False, "text.txt", "model.lstmgen"),
    Arg("info", _line("info", "-m", "{}", "--json"), "-m", False, "text.txt", "model.lstmgen"),
    Arg("info", _line("info", "model.lstmgen", "--plot", "{}"), "--plot", True, "model.lstmgen", "kept.png"),
    Arg("convert", _line("convert", "{}", "-o", "half.lstmgen"), "MODEL", False, "text.txt", "model.lstmgen"),
    Arg("convert", _line("convert", "model.lstmgen", "-o", "{}"), "-o", True, "model.lstmgen", "model.lstmgen"),
    Arg("export", _line("export", "{}", "-o", "poet.html"), "MODEL", False, "text.txt", "model.lstmgen"),
    Arg("export", _line("export", "-m", "{}", "-o", "poet.html"), "-m", False, "text.txt", "model.lstmgen"),
    Arg("export", _line("export", "model.lstmgen", "--format", "web", "-o", "{}"), "-o", True, "model.lstmgen", "kept.html"),
]


def test_every_path_argument_of_every_command_is_fuzzed() -> None:
    """A new path option must join the table: compare with the parameters each command declares."""
    from lstmgen.cli import app

    declared = set()
    for command in app.commands.values():
        for param in command.params:
            is_path = getattr(getattr(param, "type_descriptor", None), "is_path", False) or "Path" in type(getattr(param, "type", None)).__name__
            if is_path or param.name in ("model", "model_option", "init_from"):
                declared.add((command.name, param.name))
    covered = {(a.command, a.name) for a in ARGS}
    names = {"CORPUS": ("corpus",), "FILE": ("file", "files"), "MODEL": ("model",), "-m": ("model", "model_option"), "-o": ("output",),
             "--html": ("html_path",), "--plot": ("plot",), "--tokenizer": ("tokenizer",), "--config": ("config",),
             "--init-from": ("init_from",), "--prompt-file": ("prompt_file",)}
    reached = {(command, param) for command, name in covered for param in names[name]}
    assert declared <= reached, sorted(declared - reached)
    assert ("train", "config") in declared and ("eval", "html_path") in declared  # the check sees the options it must


# -- the workspace ---------------------------------------------------------------------------------------


def _make_bundle(tokens: Path, path: Path) -> None:
    """A small untrained model with a training curve (so that `info --plot` has something to draw): made in
    a fraction of a second, where training one would cost the suite seconds."""
    import torch

    from lstmgen.bundle import save_bundle
    from lstmgen.config import ModelConfig
    from lstmgen.model import LSTMLanguageModel
    from lstmgen.tokenizer import Tokenizer

    tokenizer = Tokenizer((tokens / "tokenizer.model").read_bytes())
    torch.manual_seed(0)
    model = LSTMLanguageModel(ModelConfig(vocab_size=tokenizer.vocab_size, embedding_size=16, hidden_size=16, num_layers=1))
    curve = [{"step": step, "train_loss": 6.0 - step / 10, "val_loss": 6.1 - step / 10} for step in (1, 2, 3)]
    save_bundle(path, model, tokenizer, training={"steps": 3, "best_val_loss": 5.8, "best_val_step": 3, "curve": curve})


@pytest.fixture(scope="module")
def template(small_corpus: Path, fast_cli) -> Iterator[Path]:
    """The valid inputs every case starts from (copied into each case's own workspace)."""
    root = Path(tempfile.mkdtemp(prefix="lstmgen-paths-"))
    os.chmod(root, 0o755)  # an unprivileged user must reach the workspaces
    source = root / "template"
    source.mkdir()
    (source / "corpus.txt").write_bytes(small_corpus.read_bytes()[:20_000])
    (source / "text.txt").write_bytes(small_corpus.read_bytes()[-2_000:])
    (source / "prompt.txt").write_text("ROMEO:")
    (source / "run.toml").write_text("[model]\nhidden_size = 16\nnum_layers = 1\ndropout = 0.1\n")
    (source / "kept.html").write_bytes(PAGE)
    (source / "kept.png").write_bytes(PNG)
    made = fast_cli("tokenize", "corpus.txt", "-o", "tok", "--vocab-size", "400", cwd=source)
    assert made.returncode == 0, made.stderr
    _make_bundle(source / "tok", source / "model.lstmgen")
    yield root
    _make_removable(root)
    shutil.rmtree(root, ignore_errors=True)


def _make_removable(root: Path) -> None:
    for directory, names, _ in os.walk(root):
        for name in names:
            try:
                os.chmod(os.path.join(directory, name), 0o755)
            except OSError:
                pass


@functools.lru_cache(maxsize=1)
def _nobody() -> tuple[int, int] | None:
    """nobody's (uid, gid) when that user can run this Python and import lstmgen's dependencies (it cannot
    where Python lives under /root, for example)."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    user = (entry.pw_uid, entry.pw_gid)

    def become() -> None:
        os.setgroups([])
        os.setgid(user[1])
        os.setuid(user[0])

    try:
        probe = subprocess.run([sys.executable, "-c", "import zoneinfo, typer, numpy, sentencepiece"], preexec_fn=become, cwd="/",
                               capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return user if probe.returncode == 0 else None


def _char_device(ws: Path) -> tuple[str, bool]:
    """A character device in the workspace (/dev/null's numbers), or /dev/null itself; and whether the case must run unprivileged."""
    try:
        os.mknod(ws / "chardev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return str(ws / "chardev"), False
    except OSError:
        return "/dev/null", IS_ROOT  # never let a root run near the system's /dev/null


def _prepare(arg: Arg, variant: str, ws: Path) -> tuple[str, bool]:
    """Create the hostile path for `variant` in `ws`; return it and whether the run must be unprivileged."""
    if variant == "input":
        return arg.other_input, False
    if variant == "fifo":
        os.mkfifo(ws / "fifo")
        return "fifo", False
    if variant == "chardev":
        return _char_device(ws)
    if variant == "directory":
        (ws / "adir").mkdir()
        (ws / "adir" / "keep.txt").write_text("keep me\n")
        return "adir", False
    if variant == "readonly":
        name = "readonly" + Path(arg.readonly).suffix
        shutil.copy(ws / arg.readonly, ws / name)
        os.chmod(ws / name, 0o444)
        return name, False
    if variant == "dangling":
        os.symlink("missing-target" + Path(arg.readonly).suffix, ws / "dangling")
        return "dangling", False
    if variant == "longname":
        suffix = Path(arg.readonly).suffix
        return "x" * (300 - len(suffix)) + suffix, False
    assert variant == "noperm"
    (ws / "noperm").mkdir()
    if not arg.output:
        shutil.copy(ws / arg.readonly, ws / "noperm" / Path(arg.readonly).name)
    os.chmod(ws / "noperm", 0o000)
    return "noperm/" + Path(arg.readonly).name, True


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (not following links): type, mode, and content hash or link target."""
    entries: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            info = path.lstat()
            kind = stat.S_IFMT(info.st_mode)
            if stat.S_ISREG(info.st_mode):
                try:
                    detail: object = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    detail = "unreadable"
            elif stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            else:
                detail = info.st_rdev
            entries[str(path.relative_to(root))] = (kind, stat.S_IMODE(info.st_mode), detail)
    return entries


def _changed(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return [f"{name}: {before[name]} -> {after.get(name, 'gone')}" for name in before if after.get(name) != before[name]]


CASES = [pytest.param(arg, variant, id=f"{arg.id}={variant}") for arg in ARGS for variant in VARIANTS]


@pytest.mark.parametrize("arg, variant", CASES)
def test_path_argument(arg: Arg, variant: str, template: Path, fast_cli, request: pytest.FixtureRequest) -> None:
    ws = template / request.node.name.replace("/", "_").replace(":", "_").replace("[", "_").replace("]", "")
    shutil.copytree(template / "template", ws, symlinks=True)
    path, unprivileged = _prepare(arg, variant, ws)
    user = _nobody() if unprivileged and IS_ROOT else None
    if user is not None:  # the workspace becomes nobody's, and the run too
        for directory, _, files in os.walk(ws):
            for name in files:
                os.chown(os.path.join(directory, name), *user, follow_symlinks=False)
            os.chown(directory, *user)
    before = snapshot(ws)
    dev_null = _dev_null()
    args = ["-q", *(a.replace("{}", path) if a == "{}" else a for a in arg.args)]
    env = {"LSTMGEN_HOME": str(ws / "home"), "HOME": str(ws), "MPLCONFIGDIR": str(ws / ".mpl"), "XDG_CACHE_HOME": str(ws / ".cache")}
    # As root without a usable `nobody`, the run drops root's power to ignore file permissions instead (conftest).
    result = fast_cli(*args, cwd=ws, env=env, timeout=60, user=user, unprivileged=unprivileged and IS_ROOT and user is None)
    if result.returncode == CANNOT_DROP_ROOT:
        pytest.skip("running as root: no unprivileged user can run Python here and root's file capabilities cannot be dropped")
    context = f"\nlstmgen {' '.join(args)[:300]}\nexit {result.returncode}\nstderr: {result.stderr[-2000:]}"
    assert not result.timed_out, "hung" + context
    assert result.returncode in (0, 1, 2), context
    assert "Traceback" not in result.stderr, context
    assert len(result.stderr.splitlines()) <= 2, context
    changed = _changed(before, snapshot(ws))
    assert not changed, "\n".join(changed) + context
    assert _dev_null() == dev_null
    if variant == "noperm":  # the run really was subject to the directory's permissions
        assert result.returncode == 2 and "Permission denied" in result.stderr, context
    if arg.output:  # none of the variants is a path an output may take
        assert result.returncode == 2 and result.stderr.startswith("error: "), "the output must be refused" + context


def _dev_null() -> tuple[int, int, int]:
    info = os.lstat("/dev/null")
    return stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_rdev
