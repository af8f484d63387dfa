"""Raw pull requests on one work-queue consumer.

nats-py's ``fetch`` always long-polls; the worker needs a ``no_wait`` probe of
each queue that answers at once, taking as many jobs as it has room for in one
round trip. One private inbox per consumer; one request in flight.
"""
from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects

STATUS = "Status"
# 404 no messages, 408 request expired, 409 e.g. consumer deleted / leadership change,
# 503 no responders: on a cluster the consumer has no leader while one is elected.
_EMPTY = {"404", "408", "409", "503"}


class PullSource:
    """Next job of one durable pull consumer, or None when it has none."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next_subject = subjects.pull_next(stream, consumer)
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = nc.new_inbox()
        self._sub = None

    async def start(self) -> "PullSource":
        self._sub = await self._nc.subscribe(self._inbox, cb=self._queue.put)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def _ready(self, n: int) -> list[Msg]:
        """Up to ``n`` jobs that arrived after an earlier request gave up waiting."""
        found = []
        while len(found) < n and not self._queue.empty():
            msg = self._queue.get_nowait()
            if not (msg.headers and STATUS in msg.headers):
                found.append(msg)
        return found

    async def next(self, wait_s: float = 0.0) -> Msg | None:
        """The next job; ``wait_s=0`` probes without waiting (``no_wait``)."""
        found = await self.take(1, wait_s)
        return found[0] if found else None

    async def take(self, n: int, wait_s: float = 0.0) -> list[Msg]:
        """Up to ``n`` jobs in one pull request (one round trip however many come);
        ``wait_s=0`` takes only what is queued now (``no_wait``)."""
        if found := self._ready(n):
            return found
        request = {"batch": n, "no_wait": True} if wait_s <= 0 else \
            {"batch": n, "expires": int(wait_s * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(),
                               reply=self._inbox)
        # The server sends up to n jobs, then, when it had fewer, a status that ends
        # the request; the margin covers the trip.
        deadline = asyncio.get_running_loop().time() + wait_s + 2.0
        while len(found) < n:
            left = deadline - asyncio.get_running_loop().time()
            try:
                msg = await asyncio.wait_for(self._queue.get(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                break
            status = msg.headers.get(STATUS) if msg.headers else None
            if status is None:
                found.append(msg)
                continue
            if status not in _EMPTY and status != "100":
                if found:  # jobs in hand run; the failure shows on the next request
                    break
                raise RuntimeError(f"pull request failed: {status} {msg.headers}")
            if status != "100":  # 100 is a heartbeat: the request goes on
                break
        return found


class Doorbell:
    """Wakes an idle worker when a job is queued on one of its subjects.

    A JetStream publish is also an ordinary NATS message on its subject, so a
    plain subscription hears every new job without any extra publish. It is a
    hint only: the job is still taken with a pull request, and a missed ring
    (e.g. a redelivery, which is not republished) is caught by the safety poll.
    """

    def __init__(self, nc: Client, subject_list: list[str]) -> None:
        self._nc, self._subjects = nc, subject_list
        self._rung = asyncio.Event()
        self._subs = []

    async def start(self) -> "Doorbell":
        for subject in self._subjects:
            self._subs.append(await self._nc.subscribe(subject, cb=self._ring))
        return self

    async def _ring(self, _: Msg) -> None:
        self._rung.set()

    def clear(self) -> None:
        """Call before probing the queues, so a job queued meanwhile still rings."""
        self._rung.clear()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._rung.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()
