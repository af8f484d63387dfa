"""Steady client traffic for e2e tests that break the stack while it serves.

:class:`Traffic` runs a few client threads that each send requests in turn,
sync, streaming and async (``Prefer: respond-async``), until stopped, and
records how every request ended. An ending is one of:

- ``accepted``: 200 with a result, a stream that reached ``[DONE]`` cleanly,
  or 202 for an async job (which the thread then polls until it ends);
- ``unavailable``: a 503 with an OpenAI-shaped error body (what a client may
  retry);
- ``connection``: the API went away under the request (refused, reset);
- ``error``: anything else: a 500, a body that is not OpenAI's error shape, a
  stream that ended in an error, a request that hung past ``timeout``.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass

import httpx

MODES = ("sync", "stream", "async")


@dataclass(frozen=True)
class Result:
    mode: str
    outcome: str
    status: int | None
    detail: str
    job_id: str | None
    seconds: float


class Traffic:
    def __init__(self, base_url: str, key: str, model: str, *, threads: int = 4,
                 max_tokens: int = 120, timeout: float = 30.0) -> None:
        self.base_url, self.model, self.max_tokens = base_url, model, max_tokens
        self.headers = {"Authorization": f"Bearer {key}"}
        self.timeout = timeout
        self.results: list[Result] = []
        self.streaming = threading.Event()  # some stream has produced text
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._modes = itertools.cycle(MODES)
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Send no new request; wait for the ones in flight to end."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 10)

    # --- observing -----------------------------------------------------------

    def count(self, outcome: str) -> int:
        with self._lock:
            return sum(r.outcome == outcome for r in self.results)

    def mark(self) -> int:
        with self._lock:
            return len(self.results)

    def since(self, start: int, until: int | None = None) -> list[Result]:
        with self._lock:
            return list(self.results[start:until])

    def summary(self) -> str:
        with self._lock:
            counts = sorted(Counter(r.outcome for r in self.results).items())
            odd = [r for r in self.results if r.outcome == "error"][:3]
        return f"{counts} {odd}"

    def wait_outcome(self, outcome: str, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(outcome) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fewer than {n} {outcome}: {self.summary()}")
            time.sleep(0.05)

    def wait_accepted(self, n: int, timeout: float = 30.0) -> None:
        self.wait_outcome("accepted", n, timeout)

    def wait_streaming(self, timeout: float = 30.0) -> None:
        if not self.streaming.wait(timeout):
            raise TimeoutError(f"no stream produced text: {self.summary()}")

    # --- sending -------------------------------------------------------------

    def _loop(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers,
                          timeout=self.timeout) as client:
            while not self._stop.is_set():
                with self._lock:
                    mode = next(self._modes)
                started = time.monotonic()
                result = self._one(client, mode)
                with self._lock:
                    self.results.append(Result(mode, *result, time.monotonic() - started))
                if result[0] == "connection":
                    time.sleep(0.05)  # the API is down: do not spin
                elif mode == "async" and result[0] == "accepted" and result[3]:
                    self._until_done(client, result[3])

    def _one(self, client: httpx.Client, mode: str) -> tuple[str, int | None, str, str | None]:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me everything."}]}
        try:
            if mode == "stream":
                return self._stream(client, {**body, "stream": True})
            headers = {"Prefer": "respond-async"} if mode == "async" else {}
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            job = r.headers.get("x-inferbus-job")
            if r.status_code in (200, 202):
                return "accepted", r.status_code, "", job or r.json().get("id")
            return _failure(r.status_code, r.text), r.status_code, r.text[:300], job
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError) as exc:
            return "connection", None, repr(exc), None
        except httpx.TimeoutException as exc:
            return "error", None, f"no answer in {self.timeout}s: {exc!r}", None

    def _until_done(self, client: httpx.Client, job_id: str) -> None:
        """Poll an async job until it ends, so each thread has one job in flight
        (an open loop would flood the queue past the deadlines and the limits).
        Failed polls are retried: the API or its database may be down."""
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                r = client.get(f"/v1/jobs/{job_id}")
                if r.status_code == 200 and r.json()["status"] not in ("queued", "running"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)

    def _stream(self, client: httpx.Client, body: dict) -> tuple[str, int | None, str, str | None]:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            job = r.headers.get("x-inferbus-job")
            if r.status_code != 200:
                text = r.read().decode(errors="replace")
                return _failure(r.status_code, text), r.status_code, text[:300], job
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return "accepted", 200, "", job
                chunk = json.loads(data)
                if "error" in chunk:
                    return "error", 200, data[:300], job
                if any(c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                    self.streaming.set()
            return "connection", 200, "stream ended without [DONE]", job


def _failure(status: int, text: str) -> str:
    """``unavailable`` for a 503 in OpenAI's error shape, else ``error``."""
    try:
        error = json.loads(text)["error"]
        shaped = isinstance(error, dict) and {"message", "type", "code"} <= error.keys()
    except (ValueError, KeyError, TypeError):
        shaped = False
    return "unavailable" if status == 503 and shaped else "error"

