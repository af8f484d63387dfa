"""Run the live projector over a test's stream: until it has committed a
position, or for as long as a test needs it; and the job events those tests log."""
from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import nats

from bus.events import ChatMessage, JobSubmitted, Sampling
from bus.publish import publish_event
from projections.projector import Projector
from projections.store import Store


async def project(store: Store, js, upto: int, timeout: float = 20.0) -> Projector:
    """Run the live projector until it has committed stream sequence ``upto``."""
    projector, stop = Projector(store, js), asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await projector.wait_for(upto, timeout=timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return projector


@contextlib.asynccontextmanager
async def running(store: Store, js: nats.js.JetStreamContext) -> AsyncIterator[Projector]:
    """The live projector, running while the block runs."""
    projector, stop = Projector(store, js), asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        yield projector
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def submitted(job_id: str) -> JobSubmitted:
    return JobSubmitted(
        job_id=job_id, account="acct-1", key_id="key-1", model="tiny", kind="chat",
        messages=(ChatMessage(role="user", content="hello?"),), sampling=Sampling(max_tokens=8),
        zone="eu", route="zone", deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


async def publish(js: nats.js.JetStreamContext, *events: object, zone: str = "eu") -> int:
    """Publish on the zone's events subjects; returns the last stream sequence."""
    seq = 0
    for event in events:
        seq = (await publish_event(js, event, zone)).seq
    return seq
