"""Headless Chromium driven over the DevTools protocol, for e2e tests of pages
that need clicks and typing (``--dump-dom`` only shows a page's first render).

The protocol runs over a pair of pipes (``--remote-debugging-pipe``: Chromium
reads commands on fd 3 and writes answers and events on fd 4, each message JSON
ending in a NUL byte), so no port is opened and no websocket library is needed.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-pipe"]


class BrowserError(RuntimeError):
    """A DevTools command failed, or the page threw, or Chromium went away."""


class Browser:
    """One Chromium process; ``page()`` opens a tab. Use as a context manager."""

    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        self._profile, self._timeout = profile, timeout
        self._next_id, self._buffer = 0, b""
        self.events: list[dict] = []  # every event seen, for tests that look back

    def __enter__(self) -> Browser:
        to_chrome, self._out = os.pipe()  # we write commands to _out
        self._in, from_chrome = os.pipe()  # and read answers from _in

        def as_fd3_and_fd4() -> None:  # in the child, before exec
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self._proc = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=as_fd3_and_fd4,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome)
        os.close(from_chrome)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stderr.close()
        os.close(self._out)
        os.close(self._in)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command; its result (events that arrive meanwhile go to ``events``)."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self._timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 16)
            if not chunk:
                raise BrowserError(f"Chromium exited: {self._proc.stderr.read()[-2000:]!r}")
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(raw)

    def page(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
        page = Page(self, session["sessionId"])
        page.send("Page.enable")
        page.send("Network.enable")  # so tests can see every request the page made
        page.send("Page.navigate", {"url": url})
        return page


class Page:
    """A tab: evaluate JavaScript in it, wait for what it shows."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser, self.session = browser, session

    def send(self, method: str, params: dict | None = None) -> dict:
        return self._browser.send(method, params, self.session)

    def js(self, expression: str):
        """The value of ``expression`` (awaited if a promise), as JSON."""
        out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in out:
            raise BrowserError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        """The first truthy value of ``expression``, polled every 0.1 s (an
        element counts as ``True``: as JSON it would be an empty, falsy ``{}``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(f"(v => v instanceof Node ? true : v)({expression})")
            except BrowserError:  # the page is still loading: no document yet
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not true within {timeout}s: {expression}")
            time.sleep(0.1)

    def requested_urls(self) -> list[str]:
        """Every URL this tab requested so far, as sent (without a fragment)."""
        return [e["params"]["request"]["url"] for e in self._browser.events
                if e.get("method") == "Network.requestWillBeSent"
                and e.get("sessionId") == self.session]
