"""A node whose location failed its check gets no strict-residency job: the gate,
serving on the service user, answers the node (on its own nkey user) "wait" for a
strict job of its own zone's queue, without a strike, while it still runs an
ordinary one; a node whose location was verified runs strict jobs."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import pytest

from bus import subjects
from bus.events import ChatMessage, JobSubmitted, NodeStrike, Sampling
from bus.geolocation import GeoIP
from bus.node_location import bounds_of
from bus.publish import enqueue_job
from bus.streams import ensure_work_consumer
from cli import node_grants
from gate import node_requests
from gate.usage import Counters, WordCounter
from tests.eventlog import read_log
from tests.locations import LONDON, MODEL, NEW_YORK, heartbeat, located_network
from tests.natsauth import connect_as
from tests.stack import wait_until
from verifier.location import LocationChecker
from workers.gate_client import GateClient
from workers.pull_loop import JobSource

pytestmark = pytest.mark.asyncio


def a_job(job_id: str, zone: str, strict: bool) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="alice", key_id="k", model=MODEL, kind="chat",
                        messages=(ChatMessage(role="user", content="hi"),),
                        sampling=Sampling(max_tokens=4), zone=zone, route="zone", strict=strict,
                        subcloud="resident" if strict else None,
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


async def node(net, name: str, zone: str, at):
    """Node ``name`` on its own user: heartbeat put, its zone queue's source ready."""
    nc, refusals = await connect_as(net.server.url, net.settings.data_dir, net.seed(name))
    await (await nc.jetstream().key_value("nodes")).put(net.ids[name],
                                                        heartbeat(net.ids[name], zone, at))
    await ensure_work_consumer(net.js, zone, MODEL, ack_wait_s=30)
    source = await JobSource(nc, subjects.JOBS_STREAM,
                             subjects.consumer_name(zone, MODEL)).start()
    return nc, refusals, source, GateClient(nc, net.ids[name])


async def take(source, job_id: str):
    """The delivery of ``job_id`` (others taken meanwhile are put back at once)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for msg in await source.take(1):
            if JobSubmitted.model_validate_json(msg.data).job_id == job_id:
                return msg
            await msg.nak()
    raise AssertionError(f"{job_id} was never delivered")


async def test_the_gate_gives_a_strict_job_only_to_a_node_whose_location_checked_out(tmp_path):
    async with located_network(tmp_path) as net:
        counters = Counters(tmp_path / "models")
        counters.add(MODEL, WordCounter())
        stop = asyncio.Event()
        gate = asyncio.create_task(node_requests.serve(net.settings, net.service, stop, counters))
        na_nc, na_refusals, na_jobs, na_gate = await node(net, "na-1", "na", NEW_YORK)
        eu_nc, _, eu_jobs, eu_gate = await node(net, "eu-1", "eu", LONDON)
        try:
            s = net.settings
            checker = LocationChecker(net.grants, net.nodes, GeoIP(s.geoip_db), s.layout(),
                                      bounds_of(s), s.zone_table())
            await asyncio.sleep(0.3)  # the gate filed the admin's grants and follows them
            await checker.check(net.sys, net.book.all())
            # The book follows the bucket through a watch: give it the verdicts' updates.
            await wait_until(lambda: net.book.get(net.ids["na-1"]).location != "unchecked"
                             and net.book.get(net.ids["eu-1"]).location != "unchecked")
            assert net.book.get(net.ids["na-1"]).location == "failed"  # loopback is in GB
            assert net.book.get(net.ids["eu-1"]).location == "verified"
            await asyncio.sleep(0.3)  # the gate's grant book follows the bucket
            listed = await asyncio.to_thread(node_grants.table, net.settings)  # `nodes list`
            na_line = next(line for line in listed.splitlines() if line.startswith("na-1 "))
            assert "failed (connects from GB (zone eu), outside its granted zone na" in na_line

            await enqueue_job(net.js, a_job("strict-na", "na", strict=True))
            held = await take(na_jobs, "strict-na")
            refused = await na_gate.lease("acquire", held, "strict-na")
            assert refused.action == "wait" and "verified location" in refused.reason
            await held.nak()
            await enqueue_job(net.js, a_job("plain-na", "na", strict=False))
            assert (await na_gate.lease("acquire", await take(na_jobs, "plain-na"),
                                        "plain-na")).action == "run"

            await enqueue_job(net.js, a_job("strict-eu", "eu", strict=True))
            assert (await eu_gate.lease("acquire", await take(eu_jobs, "strict-eu"),
                                        "strict-eu")).action == "run"
            await asyncio.sleep(0.3)
            strikes = [e for _, e in await read_log(net.js) if isinstance(e, NodeStrike)]
            assert strikes == []  # asking for a job of its own queue is no offence
            assert na_refusals.seen == []
        finally:
            stop.set()
            await gate
            await na_nc.close()
            await eu_nc.close()
