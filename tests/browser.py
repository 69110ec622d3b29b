"""Headless Chromium for the tests, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read commands from its fd 3 and write replies to fd 4,
each a JSON message ended by a NUL byte: no websocket library, no port, no network. A test opens a
file:// page, waits for its load event and runs JavaScript in it (Runtime.evaluate), so it checks
what a person would see, the page's own script included, with nothing added to the page.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# In a container, as root: no sandbox (it needs user namespaces), no GPU, /tmp instead of a small /dev/shm.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--mute-audio", "--remote-debugging-pipe")


def find() -> str | None:
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process; `open(url)` gives a Tab."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0):
        self.timeout, self.next_id, self.buffer, self.events = timeout, 0, b"", []
        self.log = open(Path(profile) / "chromium.log", "wb")
        # sh moves the pipes to fd 3 (commands) and fd 4 (replies), where Chromium expects them.
        self.proc = subprocess.Popen(
            ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2', binary, *FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.log_path = Path(profile) / "chromium.log"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"Chromium did not answer in {self.timeout:.0f} s")
            chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept in self.events."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def wait_event(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, m in enumerate(self.events):
                if m["method"] == method and m.get("sessionId") == session:
                    return self.events.pop(i)
            m = self._message(deadline)
            if "method" in m:
                self.events.append(m)

    def open(self, url: str, width: int = 1280, height: int = 1000) -> "Tab":
        """A new tab at `url`, returned once its load event fired."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(domain, session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", session, url=url)
        tab = Tab(self, session)
        while True:  # a late load event of about:blank is not the page's
            self.wait_event("Page.loadEventFired", session)
            if tab.evaluate("location.href") == url:
                return tab


class Tab:
    def __init__(self, browser: Browser, session: str):
        self.browser, self.session = browser, session

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited); its exception raises."""
        r = self.browser.send("Runtime.evaluate", self.session, expression=expression, awaitPromise=True,
                              returnByValue=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(d.get("exception", {}).get("description") or d.get("text"))
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console errors and failed loads of the page so far."""
        out = []
        for m in self.browser.events:
            if m.get("sessionId") != self.session:
                continue
            if m["method"] == "Runtime.exceptionThrown":
                d = m["params"]["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text"))
            elif m["method"] == "Runtime.consoleAPICalled" and m["params"]["type"] == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in m["params"]["args"]))
            elif m["method"] == "Log.entryAdded" and m["params"]["entry"]["level"] == "error":
                out.append(m["params"]["entry"]["text"])  # e.g. a file that failed to load
        return out

    def screenshot(self) -> bytes:
        """PNG of the viewport."""
        return base64.b64decode(self.browser.send("Page.captureScreenshot", self.session, format="png")["data"])
