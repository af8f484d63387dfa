"""Routes the live replies of workers to the request that waits for each job.

One core-NATS subscription per API instance (``replies.<instance>``); each
waiting request registers a queue under its job id *before* the job is
queued, so no reply can arrive unrouted.
"""
from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from bus import subjects
from bus.events import new_id
from bus.replies import Delta, Finished, Started, parse_reply

log = logging.getLogger("inferbus.api")


class ReplyRouter:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.subject = subjects.replies(new_id()[:16])
        self._waiting: dict[str, asyncio.Queue[Started | Delta | Finished]] = {}
        self._sub = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self.subject, cb=self._route)

    async def stop(self) -> None:
        if self._sub:
            await self._sub.unsubscribe()

    def expect(self, job_id: str) -> asyncio.Queue[Started | Delta | Finished]:
        queue: asyncio.Queue[Started | Delta | Finished] = asyncio.Queue()
        self._waiting[job_id] = queue
        return queue

    def forget(self, job_id: str) -> None:
        self._waiting.pop(job_id, None)

    async def _route(self, msg: Msg) -> None:
        try:
            reply = parse_reply(msg.data)
        except ValidationError:
            log.warning("malformed reply dropped")
            return
        job_id = reply.event.job_id if isinstance(reply, Finished) else reply.job_id
        queue = self._waiting.get(job_id)
        if queue is not None:
            queue.put_nowait(reply)
