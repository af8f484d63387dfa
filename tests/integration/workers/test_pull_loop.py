"""A worker's pull of its queue on a real JetStream work queue: as many jobs as it
has room for come in one request, and what it does not take stays queued."""
from __future__ import annotations

import json

from bus import subjects
from bus.streams import ensure_work_consumer
from workers.pull_loop import Doorbell, JobSource

MODEL = "m"


async def queue_jobs(js, n: int, zone: str = "eu") -> None:
    for i in range(n):
        await js.publish(subjects.jobs(zone, MODEL), json.dumps({"i": i}).encode())


async def source(js, zone: str = "eu") -> JobSource:
    consumer = await ensure_work_consumer(js, zone, MODEL, 30)
    return await JobSource(js._nc, subjects.JOBS_STREAM, consumer).start()


async def test_one_pull_takes_as_many_queued_jobs_as_there_is_room_for(js):
    await queue_jobs(js, 5)
    pull = await source(js)
    taken = await pull.take(3)
    assert [json.loads(m.data)["i"] for m in taken] == [0, 1, 2]
    # Fewer queued than asked: the request ends with what there is, at once.
    rest = await pull.take(10)
    assert [json.loads(m.data)["i"] for m in rest] == [3, 4]
    assert await pull.take(4) == []


async def test_jobs_taken_but_never_acked_are_not_lost(js):
    await queue_jobs(js, 2)
    pull = await source(js)
    first = await pull.take(1)
    await first[0].ack()
    assert len(await pull.take(5)) == 1  # the other one, still queued
    info = await js.consumer_info(subjects.JOBS_STREAM, subjects.consumer_name("eu", MODEL))
    assert info.num_ack_pending == 1  # taken, unacked: redelivered after ack_wait


async def test_a_pull_of_one_takes_the_oldest_job(js):
    await queue_jobs(js, 2)
    pull = await source(js)
    assert json.loads((await pull.take(1))[0].data)["i"] == 0
    assert json.loads((await pull.take(1))[0].data)["i"] == 1
    assert await pull.take(1) == []


async def test_a_job_queued_on_a_later_queue_rings_that_queue_first(js):
    queues = ["eu", "global"]
    bell = await Doorbell(js._nc, [subjects.jobs(q, MODEL) for q in queues]).start()
    bell.clear()
    await queue_jobs(js, 1, zone="global")  # the stream's publish is the ring
    assert await bell.wait(2)
    assert bell.rung_first(queues) == ["global", "eu"]
