"""A lean HTTP/1.1 load client for the benchmarks: keep-alive connections on
asyncio streams, one request at a time on each.

httpx's async pool spends more CPU per request than the API under test does
(at 64 connections its client process took 76% of a core for ~55 requests/s
on this 2-core machine), so a benchmark driven by it measures the client.
This client writes a prepared request and reads back the status line, the
headers and a ``Content-Length`` body: enough for the API's JSON answers, and
a few microseconds of CPU each.
"""
from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit


class Connection:
    """One keep-alive connection that POSTs one JSON body, again and again."""

    def __init__(self, base_url: str, path: str, body: dict, headers: dict[str, str]) -> None:
        url = urlsplit(base_url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        payload = json.dumps(body).encode()
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 "Content-Type: application/json", f"Content-Length: {len(payload)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> tuple[int, bytes]:
        """(status, body) of one request; reconnects when the server closed the line."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.writer.write(self.request)
                return await self._response()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _response(self) -> tuple[int, bytes]:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        length, closing = 0, False
        for line in header_lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                closing = True
        body = await self.reader.readexactly(length) if length else b""
        if closing:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(base_url: str, path: str, body: dict, headers: dict[str, str],
                      clients: int, seconds: float) -> dict:
    """``clients`` connections, each sending its next request as soon as it has the
    answer to the last, for ``seconds``: completed (200) requests per second, and
    the other outcomes counted by status or error."""
    done, failed = [0], {}
    end = time.perf_counter() + seconds

    async def client() -> None:
        conn = Connection(base_url, path, body, headers)
        try:
            while time.perf_counter() < end:
                try:
                    status, _ = await conn.post()
                except (OSError, asyncio.IncompleteReadError) as exc:
                    status = type(exc).__name__
                if status == 200:
                    done[0] += 1
                else:
                    failed[status] = failed.get(status, 0) + 1
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {"inflight": clients, "jobs": done[0], "failed": failed,
            "jobs_per_s": done[0] / elapsed, "seconds": elapsed}


async def latencies(base_url: str, path: str, body: dict, headers: dict[str, str],
                    n: int, warmup: int) -> list[float]:
    """Seconds each of ``n`` requests took, one at a time on one connection, after
    ``warmup`` untimed ones; raises on any answer but 200."""
    conn, samples = Connection(base_url, path, body, headers), []
    try:
        for i in range(n + warmup):
            start = time.perf_counter()
            status, answer = await conn.post()
            if status != 200:
                raise RuntimeError(f"{path} answered {status}: {answer[:300]!r}")
            if i >= warmup:
                samples.append(time.perf_counter() - start)
    finally:
        conn.close()
    return samples
