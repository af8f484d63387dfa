"""Reading a range of the EVENTS stream fast and in order: rebuilds and audits.

:func:`read_stream` uses an ephemeral pull consumer without acks: a replay has
nothing to acknowledge and nothing to redeliver. Each pull request
(:class:`bus.pull.Pull`) asks for a bounded batch, so the server never sends
more than the reader holds (memory stays bounded however long the log), and
the request for the next batch goes out before the current one is handed
over, so the server keeps delivering while the caller applies it. Messages
arrive through a subscription callback: nats-py's ``next_msg`` costs a task
per message and caps a replay near 16,000 events/s on a small machine, the
callback path runs at the client's own speed.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus import subjects
from bus.pull import Pull, stream_sequence

BATCH = 2000


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a replay runs. A replay
    allocates several objects per event and keeps a growing state (the audit's
    per-job facts): the collector, run every few hundred allocations, walks the
    young ones each time and, now and then, all of that state, ~10% of a
    replay's time. Nothing a replay makes forms cycles that must go before it
    ends; the collector resumes (and catches up) afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Delivery:
    """One event as the stream delivered it."""

    seq: int
    subject: str
    data: bytes


async def read_stream(js: JetStreamContext, first: int, last: int, *, batch: int = BATCH,
                      timeout: float = 30.0) -> AsyncIterator[list[Delivery]]:
    """Yield the messages with stream sequences ``first..last``, in order, in
    lists of at most ``batch``. Ends early if the stream ends before ``last``;
    raises TimeoutError if the server answers nothing for ``timeout`` seconds."""
    if last < first:
        return
    info = await js.add_consumer(subjects.EVENTS_STREAM, ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first,
        ack_policy=AckPolicy.NONE, filter_subject=subjects.all_events(), mem_storage=True,
        num_replicas=1, inactive_threshold=timeout))
    # nats-py keeps the connection in js._nc: its JetStream API has no raw pull.
    pull = await Pull(js._nc, subjects.EVENTS_STREAM, info.name).start()
    # Everything up to `last` is stored already: each request is no_wait, so the
    # server sends what it has and ends it at once rather than lingering.
    patience = time.monotonic() + timeout
    try:
        seq = first - 1
        await pull.request(min(batch, last - seq))
        while seq < last:
            if not await pull.wait(timeout):
                raise TimeoutError(f"no events from the stream after sequence {seq} "
                                   f"for {timeout}s")
            status, msgs = pull.status, pull.messages
            if status and status[:3] == "503" and not msgs and time.monotonic() < patience:
                # On a cluster a new consumer can take a moment to have a leader: no
                # responders yet. Ask again rather than fail the whole replay.
                await asyncio.sleep(0.1)
                await pull.request(min(batch, last - seq))
                continue
            if status and status[:3] not in ("404", "408"):  # 409: consumer gone, ...
                raise RuntimeError(f"event replay failed after sequence {seq}: {status}")
            if not msgs:
                return  # the request ended empty: the stream ends before `last`
            tail = stream_sequence(msgs[-1])
            if tail < last:
                await pull.request(min(batch, last - tail))  # before handing `msgs` over
            out = []
            for msg in msgs:
                sseq = stream_sequence(msg)
                if sseq > last:
                    break
                out.append(Delivery(sseq, msg.subject, msg.data))
            seq = tail
            yield out
    finally:
        with contextlib.suppress(Exception):
            await pull.close()
        with contextlib.suppress(Exception):
            await js.delete_consumer(subjects.EVENTS_STREAM, info.name)
