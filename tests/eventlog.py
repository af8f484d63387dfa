"""Reading the whole event log in tests: every (subject, event), in stream order."""
from __future__ import annotations

import asyncio

import nats
from nats.js import JetStreamContext

from bus import subjects
from bus.events import Event, parse_event


async def read_log(js: JetStreamContext) -> list[tuple[str, Event]]:
    sub = await js.subscribe(subjects.all_events(), ordered_consumer=True)
    total = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
    found = []
    for _ in range(total):
        msg = await sub.next_msg(timeout=5)
        found.append((msg.subject, parse_event(msg.data)))
    await sub.unsubscribe()
    return found


def job_log(url: str, job_id: str) -> list[tuple[str, Event]]:
    """One job's events (its money events included) on the server at ``url``."""
    async def read() -> list[tuple[str, Event]]:
        nc = await nats.connect(url)
        try:
            return [(s, e) for s, e in await read_log(nc.jetstream())
                    if getattr(e, "job_id", None) == job_id]
        finally:
            await nc.close()
    return asyncio.run(read())
