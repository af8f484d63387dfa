"""Stopping a job: ``DELETE /v1/jobs/{id}``, or a streaming client gone away.

Mark first, then signal: a worker listens for the signal first, then looks
for the mark (``workers.runner``), so a cancel is heard whenever it comes.
A job no worker holds is closed here instead, with a ``JobCancelled`` of its
own; settlement charges what a job produced and refunds the rest.
"""
from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus import subjects
from bus.events import JobCancelled
from bus.publish import publish_event


class Cancellation:
    def __init__(self, nc: Client, js: JetStreamContext, cancels: KeyValue) -> None:
        self._nc, self._js, self._cancels = nc, js, cancels
        self._background: set[asyncio.Task] = set()

    async def request(self, job_id: str) -> None:
        """Ask whichever worker holds the job to stop."""
        await self._cancels.put(job_id, b"1")
        await self._nc.publish(subjects.cancel(job_id), b"")

    async def close_queued(self, job_id: str, zone: str) -> None:
        """Stop a job no worker holds: mark it, then log its cancel here."""
        await self.request(job_id)
        await publish_event(self._js, JobCancelled(job_id=job_id, zone=zone,
                                                   reason="cancelled before it started"), zone)

    def in_background(self, job_id: str) -> None:
        """:meth:`request`, for a caller that cannot wait (a stream's last breath)."""
        task = asyncio.get_running_loop().create_task(self.request(job_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
