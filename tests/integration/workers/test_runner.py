"""A worker that has sealed a job's lease must get its outcome onto the log even
when the bus is away for a while (a server restart, a stream leader election):
no other node will run the job again."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import nats

from bus import subjects
from bus.events import JobFailed
from bus.streams import ensure_streams
from tests.natsd import NatsServer
from workers.runner import JobRunner


async def test_outcome_is_logged_once_after_the_server_comes_back(tmp_path):
    server = NatsServer(tmp_path / "store").start()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        runner = JobRunner(nc, js, *([None] * 9))  # only the log is used here
        outcome = JobFailed(job_id="j1", node_id="n", zone="eu", code="x", message="y")
        server.stop()
        job = SimpleNamespace(job_id="j1", zone="eu")
        recording = asyncio.create_task(runner._record(outcome, job))
        await asyncio.sleep(1.5)
        assert not recording.done()  # still trying while the server is down
        server.start()
        await asyncio.wait_for(recording, 30)
        info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter="events.eu.JobFailed")
        assert info.state.subjects == {"events.eu.JobFailed": 1}
    finally:
        await nc.close()
        server.stop()
