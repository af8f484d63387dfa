"""``n`` > 1: one job per choice, answered as one completion.

Each choice is a job of its own (held, run, recounted and billed like any
other), so a call with ``n=3`` costs what three calls cost, and its ``usage``
adds up all three. Choices of a seeded call get seeds ``seed``, ``seed+1``, ...
(the same seed would give the same text ``n`` times); an ``Idempotency-Key``
names choice ``i``'s job as ``<key>#<i>``. The sync body lists every choice by
its index; a stream interleaves the choices' chunks, each re-indexed, under
the first choice's id, and ends with one usage chunk (when asked) and one
``[DONE]``. A choice that fails fails the call: the choices that ran are
charged for what they produced, as a hung-up call is.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from api.answers import Body, Stream

DONE = b"data: [DONE]\n\n"
_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens")


def choice_calls(call, n: int) -> list:
    """The ``n`` one-choice calls that make up ``call``."""
    body, key = call.body, call.idempotency_key
    calls = []
    for i in range(n):
        seed = body.seed
        if seed is not None:
            seed = seed + i if seed + i < 2**63 else seed - i
        calls.append(replace(call, body=body.model_copy(update={"n": 1, "seed": seed}),
                             idempotency_key=f"{key}#{i}" if key else None))
    return calls


async def fan_out(one: Callable[..., Awaitable], who, call, n: int):
    """Run ``n`` choices of ``call`` through ``one`` (one job each) and answer once."""
    answers = await asyncio.gather(*(one(who, c) for c in choice_calls(call, n)),
                                   return_exceptions=True)
    failed = [a for a in answers if isinstance(a, BaseException)]
    if failed:
        for answer in answers:  # streams that opened stop their jobs
            if isinstance(answer, Stream):
                await answer.chunks.aclose()
        raise failed[0]
    headers = {**answers[0].headers,
               "X-Inferbus-Job": ",".join(a.headers.get("X-Inferbus-Job", "") for a in answers)}
    if isinstance(answers[0], Stream):
        return Stream(interleaved([a.chunks for a in answers]), headers)
    return Body(merged([a.body for a in answers]), headers)


def merged(bodies: list[dict]) -> dict:
    """One completion body holding every choice of ``bodies``, usage summed."""
    body = dict(bodies[0])
    body["choices"] = [{**b["choices"][0], "index": i} for i, b in enumerate(bodies)]
    body["usage"] = _summed(b.get("usage") for b in bodies)
    return body


def _summed(usages) -> dict:
    total = {k: 0 for k in _USAGE}
    for usage in usages:
        for k in _USAGE:
            total[k] += (usage or {}).get(k) or 0
    return total


async def interleaved(streams: list[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """The chunks of every choice's stream as they come, re-indexed; one usage
    chunk (the sum) and one ``[DONE]`` at the end."""
    queue: asyncio.Queue[tuple[int, bytes | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[bytes]) -> None:
        try:
            async for event in stream:
                await queue.put((i, event))
        finally:
            await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    usages, first_id, open_streams = [], None, len(streams)
    try:
        while open_streams:
            i, event = await queue.get()
            if event is None:
                open_streams -= 1
                continue
            for line in event.split(b"\n\n"):
                if not line.startswith(b"data: ") or line == DONE.strip():
                    continue
                body = json.loads(line[6:])
                if "choices" not in body:  # an error object: passed on as it is
                    yield line + b"\n\n"
                    continue
                first_id = first_id or body.get("id")
                if not body["choices"] and "usage" in body:
                    usages.append(body)
                    continue
                body["id"] = first_id
                for choice in body["choices"]:
                    choice["index"] = i
                yield b"data: " + json.dumps(body).encode() + b"\n\n"
        if usages:
            total = {**usages[0], "id": first_id, "usage": _summed(u["usage"] for u in usages)}
            yield b"data: " + json.dumps(total).encode() + b"\n\n"
        yield DONE
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:  # a choice's stream stops its job when closed unfinished
            await stream.aclose()
