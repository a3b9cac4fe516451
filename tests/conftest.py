"""Shared fixtures: a small corpus, a tokenizer trained on it, and a tiny trained bundle."""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = ROOT / "corpora" / "tinyshakespeare.txt"
TANG = ROOT / "corpora" / "tang-poems.simplified.txt"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:60_000])
    return path


@pytest.fixture(scope="session")
def tokenizer(small_corpus: Path):
    from lstmgen.config import TokenizerConfig
    from lstmgen.tokenizer import train_tokenizer

    return train_tokenizer(small_corpus.read_text().splitlines(keepends=True), TokenizerConfig(vocab_size=400))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """A bundle trained for a few steps through the CLI (shared by read-only tests)."""
    directory = tmp_path_factory.mktemp("bundle")
    output = directory / "tiny.lstmgen"
    result = run_cli(
        "train", str(small_corpus), "-o", str(output), "--hidden-size", "32", "--layers", "1", "--max-steps", "20",
        "--batch-size", "8", "--seq-len", "32", "--val-every", "10", "--vocab-size", "400", "--seed", "1",
    )
    assert result.returncode == 0, result.stderr
    return output


def run_cli(*args: str, input: bytes | None = None, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m lstmgen ARGS` in a subprocess, as a user would from a shell."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    full_env.pop("LSTMGEN_MODEL", None) if env is None or "LSTMGEN_MODEL" not in env else None
    return subprocess.run(
        [sys.executable, "-m", "lstmgen", *args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        text=False,
    )


class Result:
    """Decoded view of a CompletedProcess."""

    def __init__(self, completed: subprocess.CompletedProcess) -> None:
        self.returncode = completed.returncode
        self.stdout = completed.stdout.decode("utf-8", errors="replace")
        self.stderr = completed.stderr.decode("utf-8", errors="replace")


def cli(*args: str, **kwargs) -> Result:
    return Result(run_cli(*args, **kwargs))


# -- a fork server for many short CLI runs ----------------------------------------------------------
#
# Every case of the hostile-input suites runs `lstmgen.cli.main` in a process of its own, with its
# own stdin/stdout/stderr files, working directory, environment, resource limits and exit status,
# exactly as `python -m lstmgen` would. To keep seventy such runs to seconds instead of minutes, the
# processes are forked from a server that has already imported torch and the rest (it has run no
# torch operation, so forking it is safe). LSTMGEN_TEST_EXEC=1 runs every case with a fresh
# `python -m lstmgen` instead (slower, same assertions).

_DROP_ROOT_FILE_POWERS = r'''
def drop_root_file_powers():
    """Stay uid 0 but lose the capabilities that let root ignore file permissions (also after exec)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            return False

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    for field in ("effective", "permitted", "inheritable"):
        setattr(data[0], field, getattr(data[0], field) & ~0b1110)
    return libc.capset(ctypes.byref(header), data) == 0
'''
exec(_DROP_ROOT_FILE_POWERS)
#: The exit status of a run that was asked to drop root's file powers and could not.
CANNOT_DROP_ROOT = 77

_CLI_SERVER_CODE = _DROP_ROOT_FILE_POWERS + r'''
import io, json, os, resource, sys, time, traceback
import lstmgen.api, lstmgen.bundle, lstmgen.cli, lstmgen.data, lstmgen.evaluation, lstmgen.sampling, lstmgen.trainer
import numpy, rich.console, rich.progress, rich.table, safetensors.torch, sentencepiece, torch  # noqa: F401

requests = os.fdopen(os.dup(0), "r")
replies = os.fdopen(os.dup(1), "w")
ENCODING, OUT_ERRORS, IN_ERRORS = sys.stdout.encoding, sys.stdout.errors, sys.stdin.errors


def child(request):
    code = 1
    try:
        requests.close()
        replies.close()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for target, path, flags in ((0, request["stdin"], os.O_RDONLY), (1, request["stdout"], os.O_WRONLY), (2, request["stderr"], os.O_WRONLY)):
            fd = os.open(path, flags)
            os.dup2(fd, target)
            os.close(fd)
        if request["stdout_closed"]:  # stdout is a pipe whose reader has already gone
            read_end, write_end = os.pipe()
            os.close(read_end)
            os.dup2(write_end, 1)
            os.close(write_end)
        for name, limit in request["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (limit, limit))
        if request["unprivileged"] and os.geteuid() == 0 and not drop_root_file_powers():
            os.write(2, b"cannot drop root's file capabilities\n")
            os._exit(77)
        if request.get("user"):  # become another (unprivileged) user: uid, gid
            os.setgroups([])
            os.setgid(request["user"][1])
            os.setuid(request["user"][0])
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)), encoding=ENCODING, errors=IN_ERRORS)
        sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)), encoding=ENCODING, errors=OUT_ERRORS)
        sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)), encoding=ENCODING, errors="backslashreplace", line_buffering=True)
        for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):  # `<&-` and friends: Python starts with None there
            if name in request.get("closed", []):
                os.close(fd)
                setattr(sys, name, None)
        sys.argv = ["lstmgen", *request["args"]]
        lstmgen.cli.main(request["args"])
        code = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
        except BaseException:  # what the interpreter does when stdout cannot be flushed at exit
            print("Exception ignored on flushing sys.stdout", file=sys.stderr)
            code = code or 120
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code & 0xFF)


for line in requests:
    request = json.loads(line)
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(request)
    timed_out = False
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - started > request["timeout"]:
            os.kill(pid, 9)
            done, status, usage = os.wait4(pid, 0)
            timed_out = True
            break
        time.sleep(0.002)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
                              "maxrss_kb": usage.ru_maxrss, "seconds": time.monotonic() - started}) + "\n")
    replies.flush()
'''


class CliRun(Result):
    """The outcome of one CLI run: exit code, decoded stdout/stderr, raw bytes, peak memory, time."""

    def __init__(self, returncode: int, stdout: bytes, stderr: bytes, timed_out: bool, maxrss_kb: int, seconds: float) -> None:
        self.returncode = returncode
        self.stdout_bytes = stdout
        self.stderr_bytes = stderr
        self.stdout = stdout.decode("utf-8", errors="replace")
        self.stderr = stderr.decode("utf-8", errors="replace")
        self.timed_out = timed_out
        self.maxrss_kb = maxrss_kb
        self.seconds = seconds


class CliServer:
    """Run `lstmgen ARGS` in a fresh process per call (forked from a warm server, or exec'd)."""

    def __init__(self, scratch: Path, exec_mode: bool = False) -> None:
        self.scratch = scratch
        self.exec_mode = exec_mode
        self.process: subprocess.Popen | None = None
        self.log = scratch / "server.log"
        if not exec_mode:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen([sys.executable, "-c", _CLI_SERVER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=log, env={**os.environ, "NO_COLOR": "1"}, cwd=ROOT, text=True)

    def __call__(self, *args: str, cwd: Path | None = None, input: bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120, unprivileged: bool = False, rlimits: dict[str, int] | None = None,
                 stdout_closed: bool = False, user: tuple[int, int] | None = None, closed: tuple[str, ...] = ()) -> CliRun:
        """`rlimits` maps resource names (RLIMIT_AS, RLIMIT_FSIZE...) to a limit. `unprivileged`: subject the
        run to file permissions even as root (root keeps its uid but loses CAP_DAC_OVERRIDE and friends);
        a run that cannot do that exits with CANNOT_DROP_ROOT. `stdout_closed`: stdout is a pipe nobody reads.
        `user`: (uid, gid) to run as, e.g. nobody's, when the suite runs as root (stdio is opened before).
        `closed`: standard streams ("stdin", "stdout", "stderr") closed when lstmgen starts, as `<&-` does."""
        import tempfile

        full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
        if env is None or "LSTMGEN_MODEL" not in env:
            full_env.pop("LSTMGEN_MODEL", None)
        handle, stdin_path = tempfile.mkstemp(dir=self.scratch)
        os.write(handle, input or b"")
        os.close(handle)
        stdout_path, stderr_path = stdin_path + ".out", stdin_path + ".err"
        for path in (stdout_path, stderr_path):
            Path(path).touch()
        request = {"args": [str(a) for a in args], "cwd": str(cwd or self.scratch), "env": full_env, "stdin": stdin_path, "stdout": stdout_path,
                   "stderr": stderr_path, "rlimits": rlimits or {}, "unprivileged": unprivileged, "timeout": timeout,
                   "stdout_closed": stdout_closed, "user": list(user) if user else None, "closed": list(closed)}
        try:
            if self.exec_mode:
                reply = self._exec(request)
            else:
                assert self.process is not None and self.process.poll() is None, self.log.read_text(errors="replace")
                self.process.stdin.write(json.dumps(request) + "\n")
                self.process.stdin.flush()
                line = self.process.stdout.readline()
                assert line, f"the CLI fork server died: {self.log.read_text(errors='replace')[-2000:]}"
                reply = json.loads(line)
            return CliRun(reply["returncode"], Path(stdout_path).read_bytes(), Path(stderr_path).read_bytes(), reply["timed_out"],
                          reply["maxrss_kb"], reply["seconds"])
        finally:
            for path in (stdin_path, stdout_path, stderr_path):
                Path(path).unlink(missing_ok=True)

    @staticmethod
    def _exec(request: dict) -> dict:
        import resource
        import signal
        import time

        helpers: dict = {}
        exec(_DROP_ROOT_FILE_POWERS, helpers)  # the same function the fork server runs
        drop_root_file_powers = helpers["drop_root_file_powers"]

        def limit() -> None:
            for name, value in request["rlimits"].items():
                resource.setrlimit(getattr(resource, name), (value, value))
            if request["unprivileged"] and os.geteuid() == 0 and not drop_root_file_powers():
                os._exit(CANNOT_DROP_ROOT)
            if request.get("user"):
                os.setgroups([])
                os.setgid(request["user"][1])
                os.setuid(request["user"][0])
            for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
                if name in request.get("closed", []):
                    os.close(fd)

        started = time.monotonic()
        with open(request["stdin"], "rb") as stdin, open(request["stdout"], "wb") as stdout, open(request["stderr"], "wb") as stderr:
            read_end, write_end = os.pipe()
            os.close(read_end)
            try:
                process = subprocess.Popen([sys.executable, "-m", "lstmgen", *request["args"]], stdin=stdin,
                                           stdout=write_end if request["stdout_closed"] else stdout, stderr=stderr,
                                           env=request["env"], cwd=request["cwd"], preexec_fn=limit)
            finally:
                os.close(write_end)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > request["timeout"]:
                os.kill(process.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(process.pid, 0)
                timed_out = True
                break
            time.sleep(0.01)
        process.returncode = os.waitstatus_to_exitcode(status)
        return {"returncode": process.returncode, "timed_out": timed_out, "maxrss_kb": usage.ru_maxrss, "seconds": time.monotonic() - started}

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def fast_cli(tmp_path_factory: pytest.TempPathFactory):
    """`fast_cli(*args, cwd=, input=, env=, timeout=, unprivileged=, rlimits=, stdout_closed=)` -> CliRun, one process per call."""
    server = CliServer(tmp_path_factory.mktemp("cli-server"), exec_mode=os.environ.get("LSTMGEN_TEST_EXEC") == "1")
    yield server
    server.close()


# -- reading bundles as the specification describes them (test_bundle_numpy, test_cells) --


SAMPLE_TEXT = "First Citizen:\nBefore we proceed ▁ any further, hear me speak 😀.\n\nAll:\nSpeak, ▁▁speak.\n"


def read_bundle_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert sorted(names) == ["lstmgen.json", "model.safetensors", "tokenizer.model"]
        assert len(names) == len(set(names))
        return {name: archive.read(name) for name in names}


def parse_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """8-byte little-endian header length, JSON header, then raw little-endian tensor data."""
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length].decode("utf-8"))
    body = memoryview(data)[8 + header_length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        raw = bytes(body[begin:end])
        shape = tuple(entry["shape"])
        if entry["dtype"] == "F32":
            array = np.frombuffer(raw, dtype="<f4")
        elif entry["dtype"] == "F16":
            array = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif entry["dtype"] == "BF16":
            # bfloat16 is the top half of a float32.
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:  # pragma: no cover - the document allows only these three
            raise AssertionError(f"unexpected dtype {entry['dtype']}")
        assert array.size == int(np.prod(shape, dtype=np.int64))
        tensors[name] = array.reshape(shape).astype(np.float64)
    return tensors


# -- HTML pages and their screenshots (test_eval_context, test_inspect) --


class PageText(html.parser.HTMLParser):
    """The text of the page's #text element without the ↵ glyphs, and what the page loads."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.glyph_depth = 0
        self.text: list[str] = []
        self.spans = 0
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name):
                self.external.append(attributes[name])
        if tag == "script":
            self.scripts += 1
        if self.depth:
            self.depth += 1
            if "nl" in (attributes.get("class") or "").split():
                self.glyph_depth = self.depth
            if "t" in (attributes.get("class") or "").split():
                self.spans += 1
        elif attributes.get("id") == "text":
            self.depth = 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            if self.glyph_depth == self.depth:
                self.glyph_depth = 0
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and not self.glyph_depth:
            self.text.append(data)


def check_page(path: Path, text: str) -> PageText:
    page = path.read_text()
    parser = PageText()
    parser.feed(page)
    assert "".join(parser.text) == text
    assert parser.external == [] and "http://" not in page.split("<body>")[1] and "https://" not in page
    assert parser.scripts == 2 and "<style>" in page
    return parser


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Run headless chromium on `url` with no network, sync or first-run work; a fresh profile."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1000,700", *args, url]
    return subprocess.run(command, capture_output=True, timeout=120, text=True)


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG: (width, height, rows of RGB bytes). Pure Python."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, chunks, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height, depth, color_type, _, _, interlace = header
    assert depth == 8 and color_type in (2, 6) and interlace == 0, header
    channels = 3 if color_type == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        previous = line
        rows.append(bytes(line) if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3))
    return width, height, rows


def colour_counts(rows: list[bytes], step: int = 2) -> dict[tuple[int, int, int], int]:
    counts: dict[tuple[int, int, int], int] = {}
    for row in rows[::step]:
        for x in range(0, len(row), 3 * step):
            pixel = (row[x], row[x + 1], row[x + 2])
            counts[pixel] = counts.get(pixel, 0) + 1
    return counts


# -- hostile files and what must stay as it was (test_hostile_cli, test_malicious_files) --


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: kind, size, content hash and modification time.

    A run directory's `lock` holds the pid of the last run that opened it; it is bookkeeping, not data.
    """
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            if path.name == "lock" and path.parent.name.endswith(".run"):
                entries[relative] = ("lock",)
                continue
            entries[relative] = ("file", info.st_size, hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns)
        elif stat.S_ISDIR(info.st_mode):
            entries[relative] = ("dir",)
        else:
            entries[relative] = ("other", stat.S_IFMT(info.st_mode))
    return entries


def assert_refused(result, fragment: str | tuple[str, ...], progress_ok: bool = False) -> None:
    """Exit 2, empty stdout, one `error:` line at the end that contains `fragment` (or one of them), no traceback."""
    context = f"\nexit {result.returncode}\nstdout: {result.stdout[:500]!r}\nstderr: {result.stderr[-3000:]}"
    assert not getattr(result, "timed_out", False), "timed out" + context
    assert result.returncode == 2, context
    assert result.stdout == "", context
    assert "Traceback" not in result.stderr, context
    lines = result.stderr.rstrip("\n").split("\n")
    assert lines[-1].startswith("error: "), context
    fragments = (fragment,) if isinstance(fragment, str) else fragment
    assert any(f.lower() in lines[-1].lower() for f in fragments), f"expected {fragment!r}" + context
    assert sum(line.startswith("error") for line in lines) == 1, context
    if not progress_ok:
        assert len(lines) == 1, "expected exactly one line on stderr" + context


def members_of(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, items: list[tuple[str, bytes]] | dict[str, bytes]) -> None:
    import warnings

    pairs = list(items.items()) if isinstance(items, dict) else items
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of some cases
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in pairs:
                archive.writestr(name, data)
