"""The gate's world: a real nats-server, the gate serving on it, two granted
nodes in eu (A, operator op-a, tier 2; B, op-b) and one in na, and helpers to
queue a job and take it off a queue as a node's worker does."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import nats
import pytest

from bus import signing, subjects
from bus.config import Settings
from bus.events import ChatMessage, JobSubmitted, Sampling
from bus.grants import NodeGrant, put_grant
from bus.publish import enqueue_job
from bus.streams import (cancels_bucket, claims_bucket, ensure_streams, ensure_work_consumer,
                         grants_bucket)
from gate import node_requests
from gate.usage import Counters, WordCounter
from tests.eventlog import read_log
from workers.gate_client import GateClient

MODEL = "echo"


def a_job(job_id: str, words: str = "one two three", max_tokens: int = 8, queue: str = "eu",
          reply_to: str | None = None, zone: str = "eu", **kw) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="alice", key_id="k", model=MODEL, kind="chat",
                        messages=(ChatMessage(role="user", content=words),),
                        sampling=Sampling(max_tokens=max_tokens), zone=zone, route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5),
                        reply_to=reply_to, queue=queue, **kw)


@pytest.fixture
async def gate_world(request, fresh_nats, tmp_path):
    """``indirect`` params: ``{"lapse_s": S}`` for a gate slower to take a node for dead."""
    options = getattr(request, "param", {})
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    await ensure_streams(js)
    settings = Settings(data_dir=tmp_path, nats_url=fresh_nats.url)
    await claims_bucket(js, 600)
    cancels = await cancels_bucket(js, 600)
    grants = await grants_bucket(js)
    keys = {n: signing.load_or_create_key(tmp_path / f"{n}.key") for n in ("A", "B", "C")}
    ids = {n: signing.node_id(k) for n, k in keys.items()}
    for name, zone, operator, tier in (("A", "eu", "op-a", 2), ("B", "eu", "op-b", 1),
                                       ("C", "na", "op-c", 1)):
        await put_grant(grants, NodeGrant(node_id=ids[name], node_name=name, operator=operator,
                                          zone=zone, models=(MODEL,), tier=tier))
    counters = Counters(tmp_path / "models")
    counters.add(MODEL, WordCounter())
    stop = asyncio.Event()
    serving = asyncio.create_task(node_requests.serve(settings, nc, stop, counters,
                                                      **options))
    await asyncio.sleep(0.3)  # subscribed

    async def take(queue: str):
        """The next job on ``queue`` as a worker pulls it (a real delivery)."""
        consumer = await ensure_work_consumer(js, queue, MODEL, 30)
        sub = await js.pull_subscribe_bind(consumer, subjects.JOBS_STREAM)
        (msg,) = await sub.fetch(1, timeout=5)
        return msg

    async def queue(job: JobSubmitted, on: str | None = None):
        await enqueue_job(js, job, on)

    world = SimpleNamespace(nc=nc, js=js, keys=keys, ids=ids, cancels=cancels, grants=grants,
                            take=take, queue=queue, gate={n: GateClient(nc, ids[n]) for n in ids},
                            log=lambda: read_log(js))
    yield world
    stop.set()
    await serving
    await nc.close()
