"""Server-sent events: one job's live replies as OpenAI stream chunks.

The stream opens once a node has started the job (so the headers can say
where it runs), sends every new piece of text as a chunk, then the finish
chunk, the usage chunk when asked for, and ``data: [DONE]``. A stream that
outruns its client (deltas pile up while a chunk is being sent) goes out in
fewer, larger chunks instead of falling further behind; nothing is lost,
repeated or reordered, and text a lost live delta missed comes from the
logged outcome. A job that ends without a result, or a deadline passed, ends
the stream with an OpenAI error object.
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Callable

from api.errors import APIError, outcome_error
from api.protocol import chunk_body
from api.reply_router import JobReplies, Reply
from bus.events import JobCompleted, JobSubmitted
from bus.replies import Delta, Finished, Started

DONE = b"data: [DONE]\n\n"


def event(body: dict) -> bytes:
    """One SSE event carrying ``body`` as JSON."""
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _text_so_far(replies: JobReplies, sent: int) -> tuple[Reply, str]:
    """The next reply, with every reply already waiting after it: the text new
    beyond ``sent`` they carry, and the last of them."""
    reply, pieces = await replies.next(), []
    while True:
        if isinstance(reply, Delta) and reply.offset + len(reply.text) > sent:
            pieces.append(reply.text[max(sent - reply.offset, 0):])
            sent += len(pieces[-1])
        if isinstance(reply, Finished) or (waiting := replies.waiting()) is None:
            return reply, "".join(pieces)
        reply = waiting


async def chunks(job: JobSubmitted, created: int, include_usage: bool, replies: JobReplies,
                 first: Started | Finished, abandoned: Callable[[JobSubmitted], None]
                 ) -> AsyncIterator[bytes]:
    """The SSE stream of ``job`` from its ``first`` reply on. It owns ``replies``
    and closes them; a client that goes away before the end is reported to
    ``abandoned`` (which stops the job: what ran is charged)."""

    def chunk(**kw) -> bytes:
        return event(chunk_body(job.kind, job.job_id, job.model, created, **kw))

    sent, finished = 0, False
    try:
        if job.kind == "chat":
            yield chunk(first=True)
        reply = first
        while not isinstance(reply, Finished):
            reply, text = await _text_so_far(replies, sent)
            if text:
                sent += len(text)
                yield chunk(text=text)
        outcome = reply.event
        if not isinstance(outcome, JobCompleted):
            yield event(outcome_error(outcome).body())
        else:
            if len(outcome.text) > sent:  # a lost live delta: the log has the whole text
                yield chunk(text=outcome.text[sent:])
            yield chunk(finish_reason=outcome.finish_reason)
            if include_usage:
                yield chunk(usage=outcome.usage)
        yield DONE
        finished = True
    except APIError as exc:
        yield event(exc.body()) + DONE
    finally:
        replies.close()
        if not finished:  # the client went away mid-stream
            abandoned(job)
