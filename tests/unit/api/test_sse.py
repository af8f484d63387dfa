"""A stream that outruns its client: the deltas waiting when the next chunk is
made go out as one SSE chunk, with nothing lost, repeated or reordered."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

from api import sse
from api.reply_router import ReplyRouter
from bus.events import JobCompleted, JobSubmitted, Sampling, Usage
from bus.replies import Delta, Finished, Started


def job() -> JobSubmitted:
    return JobSubmitted(job_id="j1", account="a", key_id="k", model="m", kind="completion",
                        sampling=Sampling(max_tokens=8), prompt="hi", zone="eu",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=1),
                        route="zone", reply_to="replies.x")


def completed(text: str) -> JobCompleted:
    return JobCompleted(job_id="j1", model="m", node_id="n", operator="o", zone="eu",
                        attempt=1, text=text, finish_reason="length",
                        usage=Usage(prompt_tokens=1, completion_tokens=4),
                        input_hash="i", output_hash="o", signature="s")


def texts(replies: list) -> list[str]:
    async def stream() -> list[bytes]:
        watch = ReplyRouter(None).watch("j1", job().deadline)
        for reply in replies:  # all waiting before the first chunk is made
            watch._queue.put_nowait(reply)
        first = Started(job_id="j1", zone="eu", attempt=1)
        return [c async for c in sse.chunks(job(), 0, False, watch, first, lambda _: None)]
    chunks = [c.decode()[len("data: "):].strip() for c in asyncio.run(stream())]
    bodies = [json.loads(c) for c in chunks if c != "[DONE]"]
    return [b["choices"][0]["text"] for b in bodies if b["choices"] and b["choices"][0]["text"]]


def delta(offset: int, text: str) -> Delta:
    return Delta(job_id="j1", offset=offset, text=text, attempt=1)


def test_deltas_waiting_together_go_out_as_one_chunk():
    assert texts([delta(0, "Hel"), delta(3, "lo"), delta(5, " wor"), delta(9, "ld"),
                  Finished(event=completed("Hello world"))]) == ["Hello world"]


def test_repeated_text_in_waiting_deltas_is_sent_once():
    assert texts([delta(0, "Hello"), delta(3, "lo w"), delta(5, " world"),
                  Finished(event=completed("Hello world"))]) == ["Hello world"]
