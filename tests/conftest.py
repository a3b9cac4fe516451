"""Shared fixtures: a small corpus, a tokenizer trained on it, and a tiny trained bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
