"""The pull loop's timing around the doorbell, with a queue and a bell of its own."""
from __future__ import annotations

import asyncio
import time

from workers.pull_loop import SAFETY_POLL_S, Doorbell, pull_loop


class LateQueue:
    """A queue whose job is announced (rung) before it can be pulled: the first
    probe after the ring finds nothing, as when JetStream has not stored it yet."""

    def __init__(self) -> None:
        self.probes, self.job = 0, None

    async def take(self, n: int) -> list:
        self.probes += 1
        found, self.job = ([self.job] if self.job else []), None
        return found


async def test_a_job_rung_before_it_can_be_pulled_is_taken_at_once_not_at_the_safety_poll():
    queue, bell, stop, taken = LateQueue(), Doorbell(None, []), asyncio.Event(), []

    async def run(msg) -> None:
        taken.append(time.monotonic())
        stop.set()

    loop = asyncio.create_task(pull_loop([queue], bell, run, stop))
    await asyncio.sleep(0.05)  # idle, asleep on the bell
    rung = time.monotonic()
    bell.ring()
    await asyncio.sleep(0.002)  # the probe the ring woke finds nothing yet...
    queue.job = "job"  # ...then the stream holds it
    await asyncio.wait_for(loop, 5)
    assert taken and taken[0] - rung < SAFETY_POLL_S / 4


class SlowQueue:
    """A queue a gateway away: every probe takes ``delay`` seconds, and finds nothing."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def take(self, n: int) -> list:
        await asyncio.sleep(self.delay)
        return []


async def test_a_job_in_hand_starts_before_a_far_queue_is_asked_for_more():
    near, far, bell, stop, started = LateQueue(), SlowQueue(0.5), Doorbell(None, []), \
        asyncio.Event(), []
    near.job = "job"

    async def run(msg) -> None:
        started.append(time.monotonic())
        stop.set()

    begun = time.monotonic()
    loop = asyncio.create_task(pull_loop([near, far], bell, run, stop, max_jobs=4))
    await asyncio.wait_for(loop, 5)
    assert started and started[0] - begun < 0.25  # not after the far queue's 0.5 s


class CountingQueue:
    """A queue that holds ``jobs`` and records when it was asked."""

    def __init__(self, name: str, asked: list, jobs: list | None = None) -> None:
        self.name, self.asked, self.jobs = name, asked, jobs or []

    async def take(self, n: int) -> list:
        self.asked.append(self.name)
        found, self.jobs = self.jobs[:n], self.jobs[n:]
        return found


async def test_a_ring_from_the_global_pool_asks_it_before_the_emptier_queues():
    asked, stop = [], asyncio.Event()
    own, zone, pool = (CountingQueue("own", asked), CountingQueue("zone", asked),
                       CountingQueue("global", asked))
    bell = Doorbell(None, ["jobs.eu.own.m", "jobs.eu.m", "jobs.global.m"])

    async def run(msg) -> None:
        stop.set()

    loop = asyncio.create_task(pull_loop([own, zone, pool], bell, run, stop))
    await asyncio.sleep(0.05)  # idle: probed everything once, asleep on the bell
    asked.clear()
    pool.jobs = ["job"]
    bell.ring(2)
    await asyncio.wait_for(loop, 5)
    assert asked[0] == "global"


async def test_an_unknown_ring_still_asks_in_order_of_preference():
    asked, stop = [], asyncio.Event()
    own, pool = CountingQueue("own", asked), CountingQueue("global", asked)
    bell = Doorbell(None, ["jobs.eu.own.m", "jobs.global.m"])

    async def run(msg) -> None:
        stop.set()

    loop = asyncio.create_task(pull_loop([own, pool], bell, run, stop))
    await asyncio.sleep(0.05)
    asked.clear()
    pool.jobs = ["job"]
    bell.ring()
    await asyncio.wait_for(loop, 5)
    assert asked[:2] == ["own", "global"]


async def test_on_stop_a_job_that_never_ends_is_given_the_grace_then_stopped(monkeypatch):
    monkeypatch.setattr("workers.pull_loop.STOP_GRACE_S", 0.2)
    queue, bell, stop, ended = LateQueue(), Doorbell(None, []), asyncio.Event(), []
    queue.job = "job"

    async def run(msg) -> None:  # reporting to a gate that is gone: retried for ever
        stop.set()
        try:
            await asyncio.sleep(3600)
        finally:
            ended.append(time.monotonic())

    stopped = time.monotonic()
    await asyncio.wait_for(pull_loop([queue], bell, run, stop), 5)
    assert ended and ended[0] - stopped >= 0.2  # it had its grace, then was stopped


async def test_on_stop_a_job_that_ends_within_the_grace_runs_to_its_end():
    queue, bell, stop, ended = LateQueue(), Doorbell(None, []), asyncio.Event(), []
    queue.job = "job"

    async def run(msg) -> None:
        stop.set()
        await asyncio.sleep(0.1)
        ended.append("reported")

    await asyncio.wait_for(pull_loop([queue], bell, run, stop), 5)
    assert ended == ["reported"]


async def test_a_turn_that_emptied_every_queue_sleeps_on_the_bell_rather_than_asking_again():
    asked, stop = [], asyncio.Event()
    own, pool = CountingQueue("own", asked), CountingQueue("global", asked, ["job"])
    bell, ran = Doorbell(None, ["jobs.eu.own.m", "jobs.global.m"]), []

    async def run(msg) -> None:
        ran.append(msg)
        await stop.wait()  # still running: its slot stays taken, the others free

    loop = asyncio.create_task(pull_loop([own, pool], bell, run, stop, max_jobs=4))
    await asyncio.sleep(0.1)
    assert ran == ["job"] and asked == ["own", "global"]  # one probe each, then asleep
    pool.jobs = ["next"]
    bell.ring(1)
    await asyncio.sleep(0.1)
    assert ran == ["job", "next"]
    stop.set()
    await asyncio.wait_for(loop, 5)
