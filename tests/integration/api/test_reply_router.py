"""An API instance's live replies on a real nats-server: a lease holder that
streams one text and returns another is struck on the log."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import nats

from api.reply_router import ReplyRouter
from bus import subjects
from bus.events import JobCompleted, NodeStrike, Usage, output_hash
from bus.replies import Delta, Finished, Started
from bus.streams import ensure_streams
from tests.eventlog import read_log

NODE = "a" * 64


async def test_a_holder_that_streams_a_text_it_does_not_return_is_struck(fresh_nats):
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    await ensure_streams(js)
    router = ReplyRouter(nc)
    await router.start()
    try:
        replies = router.watch("j", datetime.now(timezone.utc) + timedelta(minutes=1))
        started = Started(job_id="j", zone="eu", attempt=1, node_id=NODE)
        await nc.publish(router.subject, started.model_dump_json().encode())  # as the gate
        await nc.publish(subjects.node_live(NODE, router.subject),  # as the node
                         Delta(job_id="j", offset=0, text="Pay to Bob").model_dump_json().encode())
        await asyncio.sleep(0.2)  # the result comes after the gate's checks, well after
        done = JobCompleted(job_id="j", model="m", node_id=NODE, operator="op", zone="eu",
                            attempt=1, text="Pay to Alice", finish_reason="stop",
                            usage=Usage(prompt_tokens=1, completion_tokens=3), input_hash="i",
                            output_hash=output_hash("Pay to Alice"), signature="s")
        await nc.publish(router.subject, Finished(event=done).model_dump_json().encode())
        got = [await replies.next() for _ in range(3)]
        assert [type(r).__name__ for r in got] == ["Started", "Delta", "Finished"]
        strikes = []
        for _ in range(50):
            strikes = [e for _, e in await read_log(js) if isinstance(e, NodeStrike)]
            if strikes:
                break
            await asyncio.sleep(0.05)
        assert [(s.node_id, s.job_id) for s in strikes] == [(NODE, "j")]
        assert output_hash("Pay to Bob") in strikes[0].evidence
    finally:
        await router.stop()
        await nc.close()
