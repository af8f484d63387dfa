"""Server-sent events: one job's live replies as OpenAI stream chunks.

The stream opens once a node has started the job (so the headers can say
where it runs), sends every new piece of text as a chunk (with the log
probabilities of its tokens, when the job asked for them), then the finish
chunk, the usage chunk when asked for, and ``data: [DONE]``. A stream that
outruns its client (deltas pile up while a chunk is being sent) goes out in
fewer, larger chunks instead of falling further behind; nothing is lost,
repeated or reordered, and text a lost live delta missed comes from the
logged outcome. A job that ends without a result, or a deadline passed, ends
the stream with an OpenAI error object.

A tool job's text (:mod:`api.tools`) is held back while it may be a call: all
of it when a call is required, under ``auto`` until it opens with anything but
``{``. A held call goes out at the end as OpenAI streams one: a
``delta.tool_calls`` chunk with the call's index, id, type and name, one with
its arguments, and ``finish_reason: "tool_calls"``.
"""
from __future__ import annotations

import json
from typing import AsyncIterator, Callable

from api.errors import APIError, outcome_error
from api.logprob_shapes import tokens_after
from api.protocol import chunk_body
from api.reply_router import JobReplies, Reply
from api.tools import is_tool_job, must_call, parse_calls
from bus.events import JobCompleted, JobSubmitted
from bus.replies import Delta, Finished, Started
from bus.sampling import TokenLogprob

DONE = b"data: [DONE]\n\n"


def event(body: dict) -> bytes:
    """One SSE event carrying ``body`` as JSON."""
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _text_so_far(replies: JobReplies, sent: int
                       ) -> tuple[Reply, str, list[TokenLogprob]]:
    """The next reply, with every reply already waiting after it: the text new
    beyond ``sent`` they carry, its tokens' log probabilities, and the last reply."""
    reply, pieces, logprobs = await replies.next(), [], []
    while True:
        if isinstance(reply, Delta) and reply.offset + len(reply.text) > sent:
            overlap = max(sent - reply.offset, 0)
            pieces.append(reply.text[overlap:])
            sent += len(pieces[-1])
            logprobs.extend(tokens_after(reply.logprobs or (), overlap))
        if isinstance(reply, Finished) or (waiting := replies.waiting()) is None:
            return reply, "".join(pieces), logprobs
        reply = waiting


def _may_be_call(held: str, required: bool) -> bool:
    """Whether text held so far may still turn out to be a tool call."""
    return required or not held.strip() or held.lstrip().startswith("{")


def call_deltas(calls: list[dict]) -> list[list[dict]]:
    """OpenAI's ``delta.tool_calls`` for finished calls: the head of each (index, id,
    type, name, empty arguments), then its arguments."""
    out = []
    for i, call in enumerate(calls):
        out.append([{"index": i, "id": call["id"], "type": "function",
                     "function": {"name": call["function"]["name"], "arguments": ""}}])
        out.append([{"index": i, "function": {"arguments": call["function"]["arguments"]}}])
    return out


async def chunks(job: JobSubmitted, created: int, include_usage: bool, replies: JobReplies,
                 first: Started | Finished, abandoned: Callable[[JobSubmitted], None],
                 *, index: int = 0) -> AsyncIterator[bytes]:
    """The SSE stream of ``job`` (choice ``index`` of its call) from its ``first``
    reply on. It owns ``replies`` and closes them; a client that goes away before
    the end is reported to ``abandoned`` (which stops the job: what ran is charged)."""
    out = 0  # characters of text sent to the client

    def chunk(**kw) -> bytes:
        return event(chunk_body(job.kind, job.job_id, job.model, created, index=index, **kw))

    def text_chunk(text: str, logprobs: list[TokenLogprob]) -> bytes:
        nonlocal out
        body = chunk(text=text, logprobs=logprobs if job.sampling.logprobs is not None
                     else None, text_offset=out)
        out += len(text)
        return body

    received, tokens, finished = 0, 0, False  # text and tokens received from the node
    holding = job.kind == "chat" and is_tool_job(job.sampling)
    required = must_call(job.sampling)
    held, held_logprobs = "", []
    try:
        if job.kind == "chat":
            yield chunk(first=True)
        reply = first
        while not isinstance(reply, Finished):
            reply, text, logprobs = await _text_so_far(replies, received)
            received, tokens = received + len(text), tokens + len(logprobs)
            if holding:
                held, held_logprobs = held + text, held_logprobs + logprobs
                if _may_be_call(held, required):
                    continue
                holding, text, logprobs, held, held_logprobs = False, held, held_logprobs, "", []
            if text:
                yield text_chunk(text, logprobs)
        outcome = reply.event
        if not isinstance(outcome, JobCompleted):
            yield event(outcome_error(outcome).body())
        else:
            # A lost live delta: the log has the whole text and every token.
            tail, tail_logprobs = outcome.text[received:], list((outcome.logprobs or ())[tokens:])
            reason = outcome.finish_reason
            calls = parse_calls(outcome.text, job.job_id) if holding else None
            if calls:
                for delta in call_deltas(calls):
                    yield chunk(tool_calls=delta)
                reason = "tool_calls"
            elif held + tail or held_logprobs + tail_logprobs:
                yield text_chunk(held + tail, held_logprobs + tail_logprobs)
            yield chunk(finish_reason=reason)
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
