"""The soak's steady client load: seeded requests, each recorded with how it ended.

A few client threads send chat requests in turn, each choosing (from its own
seeded RNG) a mode, a zone header, a prompt and a small ``max_tokens``:

- ``sync``: a plain call; ``stream``: SSE to ``[DONE]``;
- ``async``: ``Prefer: respond-async``, then ``GET /v1/jobs/{id}`` until the
  job has ended (the poll waits past the job's deadline and the expiry grace);
- ``disconnect``: a stream the client drops after its first text.

Every request ends as exactly one outcome:

- ``completed``: a result, a stream that reached ``[DONE]``, a completed job;
- ``failed``: an accepted job (the answer names it) that ended in an error in
  OpenAI's shape, or an async job that ended failed, expired or cancelled;
- ``refused``: an OpenAI-shaped error that names no job (503 ``no_capacity``
  before anything is reserved; 503 ``bus_unavailable`` after a reservation,
  refunded, whose job the log checks still see);
- ``disconnected``: the client left mid-stream on purpose;
- ``broken``: anything a client could not make sense of: a body not in
  OpenAI's shape, a hang, a stream cut without ``[DONE]``, an async job that
  never ended, a dropped connection (the soak never kills the API).
"""
from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass

import httpx

MODES = ("sync", "stream", "async", "disconnect")
WEIGHTS = (4, 3, 2, 1)
ZONES = ("eu", "eu", "na", None)  # None: no header, so the job goes global
PROMPTS = ("hi", "Tell me about the fox.", "What is the capital of France?",
           "Write a haiku about queues.", "héllo wörld café")
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@dataclass
class Result:
    mode: str
    outcome: str
    status: int | None
    code: str | None  # the error's code, or the async job's final status
    job_id: str | None
    detail: str
    seconds: float
    text: str = ""  # what a stream delivered


def shaped_error(text: str) -> dict | None:
    """The ``error`` object of an OpenAI-shaped error body, else None."""
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    ok = isinstance(error, dict) and {"message", "type", "code"} <= error.keys()
    return error if ok else None


class Load:
    def __init__(self, base_url: str, key: str, model: str, seed: int, *, threads: int = 3,
                 request_timeout: float = 45.0, poll_for: float = 60.0) -> None:
        self.base_url, self.model = base_url, model
        self.headers = {"Authorization": f"Bearer {key}"}
        self.request_timeout, self.poll_for = request_timeout, poll_for
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"client-{i}", daemon=True,
                                          args=(random.Random(f"soak-load-{seed}-{i}"),))
                         for i in range(threads)]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Send nothing new; wait for every request in flight (async polls too) to end."""
        self._stop.set()
        for t in self._threads:
            t.join(self.request_timeout + self.poll_for + 10)

    def count(self, outcome: str) -> int:
        with self._lock:
            return sum(r.outcome == outcome for r in self.results)

    def _loop(self, rng: random.Random) -> None:
        with httpx.Client(base_url=self.base_url, headers=self.headers,
                          timeout=self.request_timeout) as client:
            while not self._stop.is_set():
                mode = rng.choices(MODES, WEIGHTS)[0]
                zone = rng.choice(ZONES)
                body = {"model": self.model, "max_tokens": rng.randint(4, 40), "temperature": 0,
                        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}
                headers = {"X-Inferbus-Zone": zone} if zone else {}
                started = time.monotonic()
                try:
                    result = self._one(client, mode, body, headers)
                except (httpx.TransportError, ValueError, KeyError) as exc:  # hang, cut, bad JSON
                    result = Result(mode, "broken", None, None, None, repr(exc), 0.0)
                result.seconds = round(time.monotonic() - started, 3)
                with self._lock:
                    self.results.append(result)
                self._stop.wait(rng.uniform(0.1, 0.6))  # think time: a steady, modest load

    def _one(self, client: httpx.Client, mode: str, body: dict, headers: dict) -> Result:
        if mode in ("stream", "disconnect"):
            return self._stream(client, mode, {**body, "stream": True}, headers)
        if mode == "async":
            headers = {**headers, "Prefer": "respond-async"}
        r = client.post("/v1/chat/completions", json=body, headers=headers)
        job = r.headers.get("x-inferbus-job")
        if mode == "async" and r.status_code == 202:
            return self._poll(client, r.json()["id"])
        if r.status_code == 200:
            ok = bool(r.json().get("choices"))
            return Result(mode, "completed" if ok else "broken", 200, None, job,
                          "" if ok else r.text[:300], 0.0)
        return refusal(mode, r.status_code, r.text, job)

    def _stream(self, client: httpx.Client, mode: str, body: dict, headers: dict) -> Result:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            job = r.headers.get("x-inferbus-job")
            if r.status_code != 200:
                return refusal(mode, r.status_code, r.read().decode(errors="replace"), job)
            text = ""
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    return Result(mode, "completed", 200, None, job, "", 0.0, text)
                if (error := shaped_error(data)) is not None:
                    return Result(mode, "failed", 200, error["code"], job, data[:300], 0.0, text)
                chunk = json.loads(data)
                if "error" in chunk:
                    return Result(mode, "broken", 200, None, job, data[:300], 0.0, text)
                for choice in chunk.get("choices", ()):
                    text += choice.get("delta", {}).get("content") or ""
                if mode == "disconnect" and text:
                    break  # leaving the `with` closes the connection mid-stream
            else:
                return Result(mode, "broken", 200, None, job, "stream ended without [DONE]",
                              0.0, text)
        return Result(mode, "disconnected", 200, None, job, "", 0.0, text)

    def _poll(self, client: httpx.Client, job: str) -> Result:
        """Until the async job has ended; 404s and 503s on the way are retried."""
        deadline = time.monotonic() + self.poll_for
        last = ""
        while time.monotonic() < deadline:
            r = client.get(f"/v1/jobs/{job}")
            last = f"{r.status_code} {r.text[:200]}"
            if r.status_code == 200 and (status := r.json()["status"]) in TERMINAL:
                if status == "completed":
                    return Result("async", "completed", 200, status, job, "", 0.0)
                error = r.json().get("error") or {}
                outcome = "failed" if error.get("code") and error.get("message") else "broken"
                return Result("async", outcome, 200, error.get("code") or status, job,
                              json.dumps(error)[:300], 0.0)
            time.sleep(0.25)
        return Result("async", "broken", None, None, job, f"never ended; last poll: {last}", 0.0)


def refusal(mode: str, status: int, text: str, job: str | None) -> Result:
    """An error answer: ``failed`` when it names an accepted job, ``refused`` when
    it names none, ``broken`` when it is not in OpenAI's shape."""
    error = shaped_error(text)
    if error is None:
        return Result(mode, "broken", status, None, job, text[:300], 0.0)
    return Result(mode, "failed" if job else "refused", status, error["code"], job,
                  error["message"][:300], 0.0)
