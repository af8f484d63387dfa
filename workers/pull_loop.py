"""The worker's pull loop: take jobs, first choice first, while there is room.

Each turn probes, without waiting, the node's own queue, its subcloud's pool,
its zone, then global (:class:`JobSource`, one per queue), asking each for as
many jobs as the node has room for. An idle worker sleeps on a
:class:`Doorbell` that rings when a job is queued on any of them, so it
answers a new job at once; ``SAFETY_POLL_S`` bounds the wait for
redeliveries. A ring can come before JetStream has stored the job it announces
(the plain subscription hears the publish as the stream does), so a ring whose
probe finds nothing is followed by a few quick probes (``RING_RETRIES_S``)
before the worker sleeps again: a queue with one worker (a node's own) would
otherwise wait out the safety poll. A turn woken by a ring asks the queues that rang
first (the rest after, in their order): a job in the global pool would
otherwise wait for a round trip to each emptier queue before it. Jobs in hand
send their lease requests before the next queue is asked, and a turn that
emptied every queue sleeps on the bell rather than asking them all again. Each
job runs as a task of its own (``JobRunner.run``: lease, replies, outcome, ack).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.pull import Pull

log = logging.getLogger("inferbus.worker")
SAFETY_POLL_S = 1.0
RING_RETRIES_S = (0.005, 0.02, 0.05)
# On stop, how long the jobs running may take to finish and be reported: under
# the 10 s a container gets between SIGTERM and SIGKILL. A job still running
# after it (its gate gone, say) is stopped unacked: this node's pings end, its
# lease lapses and another node takes it over.
STOP_GRACE_S = 8.0
YIELD_TURNS = 3  # event-loop turns a new job's task needs to send its lease request
PULL_TIMEOUT_S = 2.0  # a no_wait request is answered at once; this covers the trip
# 404 no messages, 408 request expired, 409 e.g. consumer deleted / leadership change,
# 503 no responders: on a cluster the consumer has no leader while one is elected.
_EMPTY = {"404", "408", "409", "503"}


class JobSource:
    """The jobs queued now on one durable pull consumer (one queue of the node)."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._pull = Pull(nc, stream, consumer)

    async def start(self) -> JobSource:
        await self._pull.start()
        return self

    async def take(self, n: int) -> list[Msg]:
        """Up to ``n`` jobs in one pull request (one round trip however many come),
        of those queued now."""
        if late := self._pull.messages[:n]:  # came after an earlier request gave up
            del self._pull.messages[:n]
            return late
        await self._pull.request(n)
        await self._pull.wait(PULL_TIMEOUT_S)
        found, status = self._pull.messages[:n], self._pull.status
        del self._pull.messages[:n]
        if not found and status and status[:3] not in _EMPTY:
            # Jobs in hand run; a failure shows when a request brings none.
            raise RuntimeError(f"pull request failed: {status}")
        return found


class Doorbell:
    """Wakes an idle worker when a job is queued on one of its subjects.

    A JetStream publish is also an ordinary NATS message on its subject, so a
    plain subscription hears every new job without any extra publish. It is a
    hint only: the job is still taken with a pull request, and a missed ring
    (e.g. a redelivery, which is not republished) is caught by the safety poll.
    """

    def __init__(self, nc: Client, subject_list: list[str]) -> None:
        """``subject_list``: each queue's jobs subject, in the order of its sources."""
        self._nc, self._subjects = nc, subject_list
        self._index = {subject: i for i, subject in enumerate(subject_list)}
        self._rung = asyncio.Event()
        self._which: set[int] = set()  # the queues (by index) that rang since clear()

    async def start(self) -> Doorbell:
        for subject in self._subjects:
            await self._nc.subscribe(subject, cb=self._rang)
        return self

    async def _rang(self, msg: Msg) -> None:
        self.ring(self._index.get(msg.subject))

    def ring(self, queue: int | None = None) -> None:
        """A job was queued on one of the subjects (``queue``: its index, if known)."""
        if queue is not None:
            self._which.add(queue)
        self._rung.set()

    def rung_first(self, sources: list) -> list:
        """``sources`` with the queues that rang since :meth:`clear` first."""
        return [s for i, s in enumerate(sources) if i in self._which] + \
            [s for i, s in enumerate(sources) if i not in self._which]

    def clear(self) -> None:
        """Call before probing the queues, so a job queued meanwhile still rings."""
        self._rung.clear()
        self._which.clear()

    async def wait(self, timeout: float) -> bool:
        """Until a ring or ``timeout``; whether it rang."""
        try:
            await asyncio.wait_for(self._rung.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


async def next_jobs(sources: list[JobSource], room: int,
                    start: Callable[[list[Msg]], None] | None = None) -> list[Msg]:
    """Up to ``room`` jobs, first choice first: each queue is asked for what room is
    left, so a busy zone fills a node in one round trip per queue, not one per job.
    ``start`` gets each queue's jobs as they come, before the next queue is asked:
    with regions the global pool may be a gateway away, and a job in hand should
    not wait for that round trip."""
    found: list[Msg] = []
    for source in sources:
        if len(found) >= room:
            break
        got = await source.take(room - len(found))
        if got and start is not None:
            start(got)
            # Let them send their lease requests before this asks the next queue: a
            # probe first would put its round trip ahead of each job's own.
            for _ in range(YIELD_TURNS):
                await asyncio.sleep(0)
        found += got
    return found


async def _slot(free: asyncio.Semaphore, stop: asyncio.Event) -> bool:
    """Take one of ``free``'s slots, waiting for a job to end; False, holding none,
    once ``stop`` is set first (every slot busy must not keep a stop waiting)."""
    if not free.locked():
        await free.acquire()
        return True
    slot, stopping = asyncio.ensure_future(free.acquire()), asyncio.ensure_future(stop.wait())
    await asyncio.wait((slot, stopping), return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not slot.done():
        slot.cancel()
        await asyncio.gather(slot, return_exceptions=True)
    if slot.done() and not slot.cancelled():
        if not stop.is_set():
            return True
        free.release()
    return False


async def pull_loop(sources: list[JobSource], bell: Doorbell,
                    run: Callable[[Msg], Awaitable[None]], stop: asyncio.Event,
                    max_jobs: int = 1) -> None:
    """Take jobs, first choice first, while fewer than ``max_jobs`` run; each runs as a
    task of its own (``run(msg)``). On ``stop``, takes no more and gives those running
    ``STOP_GRACE_S`` to finish."""
    free = asyncio.Semaphore(max_jobs)
    running: set[asyncio.Task] = set()

    async def run_one(msg: Msg) -> None:
        try:
            await run(msg)
        except Exception:  # noqa: BLE001 - unacked, the job is redelivered
            log.exception("job not recorded; it will be redelivered")
        finally:
            free.release()

    rang, retries = False, list(RING_RETRIES_S)
    try:
        while not stop.is_set():
            if not await _slot(free, stop):
                break
            room = 1
            while not free.locked():  # every free slot, taken without waiting
                await free.acquire()
                room += 1
            order = bell.rung_first(sources)
            bell.clear()

            def launch(msgs: list[Msg]) -> None:
                for msg in msgs:
                    task = asyncio.create_task(run_one(msg))
                    running.add(task)
                    task.add_done_callback(running.discard)
            msgs = [] if stop.is_set() else await next_jobs(order, room, launch)
            for _ in range(room - len(msgs)):
                free.release()
            if msgs:
                rang, retries = False, list(RING_RETRIES_S)
                if len(msgs) < room and not stop.is_set():
                    # Every queue gave all it had just now: the next job rings (a ring
                    # during the probes is kept), so asking them all again at once
                    # would only cost the server a round trip per queue per job.
                    rang = await bell.wait(SAFETY_POLL_S)
            elif not stop.is_set():
                if rang and retries:  # rung for a job the stream may not hold yet
                    await asyncio.sleep(retries.pop(0))
                    continue
                retries = list(RING_RETRIES_S)
                rang = await bell.wait(SAFETY_POLL_S)
    finally:
        if running:
            _, left = await asyncio.wait(set(running), timeout=STOP_GRACE_S)
            if left:
                log.warning("%d job(s) still running %.0f s after stop: left unacked, for "
                            "another node to take over", len(left), STOP_GRACE_S)
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
