"""A node that falls silent while it holds a job has its job moved, within a
second, to where a live node takes it: its zone, or global when it was the
zone's only node, or its zone when the job was sent to that node's own queue."""
from __future__ import annotations

import asyncio
import time

from bus import subjects
from bus.events import JobEscalated
from tests.integration.gate.conftest import a_job


async def pinging(world, *nodes: str) -> asyncio.Event:
    stop = asyncio.Event()
    for node in nodes:
        asyncio.create_task(world.gate[node].ping(stop))
    await asyncio.sleep(0.2)
    return stop


async def moved_to(world, queue: str, job_id: str, by: str) -> float:
    """Seconds until a copy of ``job_id`` on ``queue`` is leased by node ``by``."""
    msg = await world.take(queue)
    lease = await world.gate[by].lease("acquire", msg, job_id)
    assert (lease.action, lease.took_over, lease.attempt) == ("run", True, 2)
    return time.monotonic()


async def test_a_silent_nodes_job_goes_to_a_live_node_of_its_zone_within_a_second(gate_world):
    w = gate_world
    stop = await pinging(w, "A", "B")
    await w.queue(a_job("k1"))
    assert (await w.gate["A"].lease("acquire", await w.take("eu"), "k1")).action == "run"
    await asyncio.sleep(0.2)
    w.gate["A"]._alive = subjects.node_says("0" * 64, subjects.NODE_ALIVE)  # A goes silent
    silent = time.monotonic()
    assert await moved_to(w, "eu", "k1", "B") - silent < 1.0
    stop.set()


async def test_the_only_node_of_a_zone_dying_sends_its_job_to_global(gate_world):
    w = gate_world
    stop = await pinging(w, "A")  # eu is alive; C (na's only node) never pings
    await w.queue(a_job("k2", queue="na", zone="na", then=(subjects.GLOBAL,)))
    assert (await w.gate["C"].lease("acquire", await w.take("na"), "k2")).action == "run"
    await moved_to(w, subjects.GLOBAL, "k2", "A")
    escalations = [e for _, e in await w.log() if isinstance(e, JobEscalated)]
    assert [(e.from_queue, e.to) for e in escalations] == [("na", subjects.GLOBAL)]
    stop.set()


async def test_a_job_sent_to_a_dead_nodes_own_queue_goes_to_the_next_node_of_its_route(
        gate_world):
    w = gate_world
    stop = await pinging(w, "B")
    own, next_node = subjects.node_queue(w.ids["A"], "eu"), subjects.node_queue(w.ids["B"], "eu")
    await w.queue(a_job("k3", queue=own, then=(next_node, subjects.GLOBAL)))
    assert (await w.gate["A"].lease("acquire", await w.take(own), "k3")).action == "run"
    await moved_to(w, next_node, "k3", "B")
    stop.set()


async def test_a_strict_job_never_leaves_its_route_however_its_node_dies(gate_world):
    w = gate_world
    stop = await pinging(w, "A")  # a live eu node, which takes global jobs
    await w.queue(a_job("k5", queue="na", zone="na"))  # strict: its route is na alone
    assert (await w.gate["C"].lease("acquire", await w.take("na"), "k5")).action == "run"
    await asyncio.sleep(1.0)  # C is silent: dead
    copy = await w.take("na")  # back on na, waiting for a live na node
    assert copy.metadata.sequence.stream > 1
    escalations = [e for _, e in await w.log() if isinstance(e, JobEscalated)]
    assert escalations == []
    stop.set()


async def test_a_node_that_wakes_up_after_losing_its_job_cannot_log_it(gate_world):
    w = gate_world
    stop = await pinging(w, "B")
    await w.queue(a_job("k4"))
    msg = await w.take("eu")
    await w.gate["A"].lease("acquire", msg, "k4")  # A never pings: it is dead to the gate
    await moved_to(w, "eu", "k4", "B")
    assert (await w.gate["A"].lease("renew", msg, "k4")).action == "stop"
    stop.set()
