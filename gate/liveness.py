"""A dead node's jobs move on within a second.

Every worker pings ``node.<its id>.alive`` every ``PING_S``. A node that holds
leases and has been silent for ``LAPSE_S`` is dead to the network (it was
SIGKILLed, lost its link, or stalled): the gate ends its leases and puts a
copy of each of its jobs where a live node can take it at once, as far as
the job's route allows (``JobSubmitted.then``: the API's chain of queues, so a
strict job stays in its zones and a job sent to chosen nodes goes only to the
next of them, or global where the route says so):

- the queue it was on, unless that was the dead node's own, when another live
  node takes from it; else the first queue further along its route that a live
  node takes from;
- with no live taker, the first of those, to wait for one.

A copy is a publish, so it rings the idle workers' doorbells (a redelivery
would not), and the dead node's delivery is terminated once the copy is
stored. The new holder takes the lease over (a new attempt) and continues the
stream from the caller's text. A stalled node that comes back has lost its
lease: it can neither renew it nor log an outcome.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.client import Client
from nats.js import JetStreamContext

from bus import subjects
from bus.events import JobEscalated
from bus.grants import GrantBook
from bus.publish import enqueue_job, publish_event
from gate.leasing import Held, Leasing

log = logging.getLogger("inferbus.gate")
PING_S = 0.1  # workers/node.py pings this often
LAPSE_S = 0.5  # silent this long while holding a lease: dead
TICK_S = 0.05


class Liveness:
    def __init__(self, nc: Client, js: JetStreamContext, leasing: Leasing, grants: GrantBook,
                 lapse_s: float = LAPSE_S, clock=time.monotonic) -> None:
        self.nc, self.js, self.leasing, self.grants = nc, js, leasing, grants
        self.lapse_s, self.clock = lapse_s, clock
        self.seen: dict[str, float] = {}
        self.moved = 0

    def ping(self, node_id: str) -> None:
        self.seen[node_id] = self.clock()

    def alive(self, node_id: str) -> bool:
        return self.clock() - self.seen.get(node_id, -1e9) <= self.lapse_s

    async def watch(self, stop: asyncio.Event) -> None:
        """Move on the jobs of every node that falls silent, until ``stop``."""
        while not stop.is_set():
            now = self.clock()
            for held in list(self.leasing.held.values()):
                last = max(self.seen.get(held.node_id, -1e9), held.since)
                if not held.lease.lease.done and now - last > self.lapse_s:
                    try:
                        await self.move_on(held, "its node went silent")
                    except Exception:  # noqa: BLE001 - its lease still runs out by itself
                        log.exception("moving job %s on failed", held.job.job_id)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)

    async def move_on(self, held: Held, reason: str) -> None:
        """End ``held``'s lease and queue the job where a live node takes it."""
        job = held.job
        self.leasing.forget(job.job_id)
        if not await self.leasing.release(held):
            return  # sealed or taken over meanwhile: nothing to move
        target = self.next_queue(held)
        await enqueue_job(self.js, job, target, copy=f"a{held.lease.lease.attempt}")
        if target != held.queue:
            await publish_event(self.js, JobEscalated(
                job_id=job.job_id, zone=job.zone, from_queue=held.queue, to=target,
                reason=reason), job.zone)
        if held.ack:
            await self.nc.publish(held.ack, b"+TERM")  # the copy is stored: drop the original
        self.moved += 1
        log.info("job %s moved from %s to %s: %s", job.job_id, held.queue, target, reason)

    def next_queue(self, held: Held) -> str:
        job = held.job
        route = [job.first_queue(), *job.then]
        later = route[route.index(held.queue) + 1:] if held.queue in route else []
        choices = ([] if subjects.is_node_queue(held.queue) else [held.queue]) + later
        for queue in choices:
            if self._taker(queue, job.model, held.node_id):
                return queue
        return choices[0] if choices else held.queue

    def _taker(self, queue: str, model: str, dead: str) -> bool:
        """Whether a live node other than ``dead`` may take ``model`` jobs from ``queue``."""
        return any(g.node_id != dead and self.alive(g.node_id) and g.may_take(queue, model)
                   for g in self.grants.all())
