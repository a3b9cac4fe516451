"""Headless chromium driven over the DevTools protocol on a pipe: for the exported page's tests and benchmark.

`--remote-debugging-pipe` makes chromium read protocol messages from descriptor 3 and write them
to descriptor 4, each JSON object ended by a NUL byte: no port is opened and nothing else can
connect. The page is opened from `file://` with a fresh profile, no network services, and its
own Content-Security-Policy forbidding any request. `evaluate` runs JavaScript in the page and
awaits promises, so a test can wait for the model to load and read what the page computed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    pass


class Chromium:
    """One headless chromium with one page; `open(url)`, `evaluate(js)`, `screenshot()`, `close()`."""

    def __init__(self, width: int = 1000, height: int = 760, timeout: float = 120) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed (apt-get install chromium)")
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="lstmgen-chromium-"))
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def descriptors() -> None:  # in the child: the protocol's pipes as descriptors 3 and 4
            high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        self.log = open(self.profile / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--mute-audio", f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, close_fds=False, preexec_fn=descriptors,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        try:
            targets = self.send("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
            self.send("Page.enable", session=True)
            self.send("Runtime.enable", session=True)
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    # -- the protocol ------------------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, session: bool = False,
             timeout: float | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode("utf-8") + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("chromium did not answer in time")
            ready, _, _ = select.select([self._replies], [], [], left)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise BrowserError(f"chromium closed the pipe: {self.stderr()[-2000:]}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def stderr(self) -> str:
        self.log.flush()
        return (self.profile / "chromium.log").read_text(errors="replace")

    # -- pages -------------------------------------------------------------------------------------

    def open(self, url: str, ready: str | None = None) -> None:
        """Load `url` as a new document (never a jump within the page before) and wait for its load event,
        then for the promise `ready`, when given."""
        self.events.clear()
        self.send("Page.navigate", {"url": "about:blank"}, session=True)
        self._wait_for_load(None)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=True)
        self._wait_for_load(ready, url)

    def reload(self, ready: str | None = None) -> None:
        """Reload the page, as the browser's reload button does."""
        url = self.evaluate("location.href")
        self.events.clear()
        self.send("Page.reload", {"ignoreCache": True}, session=True)
        self._wait_for_load(ready, url)

    def _wait_for_load(self, ready: str | None, url: str | None = None) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._read(deadline))
        if url is not None:  # the document is the one asked for, and it has loaded
            check = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
            while not self.evaluate(check):
                if time.monotonic() > deadline:
                    raise BrowserError(f"{url} did not load")
                time.sleep(0.05)
        if ready is not None:
            self.evaluate(ready)

    def evaluate(self, expression: str, timeout: float | None = None) -> Any:
        """The value of a JavaScript expression in the page (promises awaited; JSON values only)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True},
                           session=True, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"the page raised: {text}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    self.send("Browser.close", timeout=10)
                except (BrowserError, OSError):
                    pass
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            for fd in (self._commands, self._replies):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.log.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
