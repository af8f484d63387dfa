"""The projector: applies the EVENTS stream to the read model exactly once.

Exactly-once comes from the position, not from acks: the stream sequence of
the last applied event is written to ``tracking`` in the same transaction as
the row changes. On start the projector reads it and consumes from
``position + 1`` with an ordered (ephemeral, unacked, gap-free) consumer; any
delivery at or below the stored position is skipped, so a redelivery, a
consumer reset or a second projector on the same store changes nothing.

Every read model of :data:`~projections.readmodels.PROJECTIONS` is applied to
each event in one transaction, under the partition's one position
(:mod:`projections.layout`). Events are applied in batches of what has arrived
(up to ``batch_max``). While fewer than ``LINGER_BELOW`` have, all a job's own
traffic (:data:`LINGERING`), the batch waits up to ``LINGER_S`` for more: a
job's seven or so events arrive milliseconds apart, and at one request in
flight a transaction and a thread hop per event cost the read models 1.2-2.2
ms more CPU per job, taken from the requests on the same cores. What a caller
reads back at once (a key made or revoked, a deposit) ends the wait. A malformed event is logged with its sequence and
skipped (the position moves past it; the message is set aside on the
dead-letter stream). A failing store is retried with backoff, holding the
batch, until it recovers or ``stop`` is set. A well-formed event that fails to
apply every time while the store works (a poison event) is found by applying
smaller parts of its batch, moved past and dead-lettered too
(:mod:`projections.poison`). :func:`serve` is the read-model service.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus import subjects
from bus.events import (SLOTTED_EVENTS, CreditsDebited, CreditsRefunded, CreditsReserved, Event,
                        RCPAwarded, parse_event)
from bus.publish import dead_letter
from bus.pull import stream_sequence
from bus.streams import patiently
from projections.poison import isolate
from projections.readmodels import POSITION, apply_all
from projections.replay import Delivery
from projections.store import Store, read_position, write_position

log = logging.getLogger("inferbus.projections")

BATCH_MAX = 500
BUFFER_MAX = 4 * BATCH_MAX  # events received and not yet applied, at most
POLL_S = 0.5  # how long an idle loop waits before looking at `stop` again
LINGER_S = 0.02  # a job's read models are at most this much later for it (module docstring)
LINGER_BELOW = 16
LINGERING = frozenset(e.__name__ for e in (*SLOTTED_EVENTS, CreditsReserved, CreditsDebited,
                                           CreditsRefunded, RCPAwarded))
RETRY_MAX_S = 5.0


Observer = Callable[[Delivery, Event | None], None]


@dataclass(frozen=True)
class BatchOutcome:
    position: int
    applied: int  # well-formed events past the old position (job or not)
    malformed: int
    stale: int  # deliveries at or below the stored position, ignored
    rejected: tuple[tuple[Delivery, str], ...] = ()  # malformed deliveries and why


def apply_batch(store: Store, deliveries: Sequence[Delivery], projection: str = POSITION,
                observe: Observer | None = None) -> BatchOutcome:
    """Apply ``deliveries`` to every projection, and the new position, in one
    transaction (sync). ``observe`` sees each delivery past the position with
    its parsed event (None if malformed), in order, inside the transaction."""
    applied = malformed = stale = 0
    rejected: list[tuple[Delivery, str]] = []
    # Decoded before the transaction: projectors of several partitions sharing one
    # SQLite file then hold its write lock only while they write.
    parsed: list[Event | ValueError] = []
    for d in deliveries:
        try:
            parsed.append(parse_event(d.data))
        except ValueError as exc:  # pydantic's ValidationError, bad JSON included
            parsed.append(exc)
    with store.transaction() as tx:
        position = start = read_position(tx, projection, lock=True)
        for d, event in zip(deliveries, parsed):
            if d.seq <= position:
                stale += 1
                continue
            if isinstance(event, ValueError):
                log.warning("skipping malformed event at stream sequence %d on %s: %s",
                            d.seq, d.subject, event)
                malformed += 1
                rejected.append((d, str(event)))
                event = None
            else:
                apply_all(tx, event, d.subject)
                applied += 1
            if observe is not None:
                observe(d, event)
            position = d.seq
        if position != start:
            write_position(tx, projection, position)
    return BatchOutcome(position, applied, malformed, stale, tuple(rejected))


class Projector:
    """Keeps one store's projections up to date with the EVENTS stream.

    ``position`` is the last stream sequence committed; ``applied``,
    ``malformed``, ``stale`` and ``poisoned`` (well-formed events moved past
    because they cannot be applied) count what this instance has processed."""

    def __init__(self, store: Store, js: JetStreamContext, *, projection: str = POSITION,
                 batch_max: int = BATCH_MAX, holds: Callable[[str], bool] | None = None,
                 check: Callable[[Any], None] | None = None) -> None:
        """``holds(subject)``: whether this projector's partition reads an event
        (default: every event); ``check(tx)``: run on the store before the first
        event (a layout check)."""
        self.store, self.js, self.projection, self.batch_max = store, js, projection, batch_max
        self._holds, self._check = holds, check
        self.position = 0
        self.applied = self.malformed = self.stale = self.poisoned = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stopped = False
        self._buffer: list[Delivery] = []
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and apply until ``stop`` is set."""
        self._stopped = False
        sub = None
        try:
            self.position = await asyncio.to_thread(self._stored_position)
            self._wake()
            log.info("projection %s resuming after stream sequence %d",
                     self.projection, self.position)
            # Patient: a cluster may be electing the stream's leader just now.
            sub = await patiently(lambda: self._subscribe(self.position), "projector consumer")
            while not stop.is_set():
                batch = await self._next_batch()
                if batch:
                    await self._apply(batch, stop)
        finally:
            self._stopped = True
            self._wake()  # fail the waiters now rather than at their timeout
            self._room.set()  # a callback waiting for room returns
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def wait_for(self, seq: int, timeout: float = 5.0) -> None:
        """Return once stream sequence ``seq`` is committed; raise TimeoutError
        after ``timeout`` seconds, RuntimeError if the projector stops first."""
        if self.position >= seq:
            return
        if self._stopped:
            raise RuntimeError(f"projector stopped at {self.position}, before {seq}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"projector at {self.position}, not {seq}, after {timeout}s") from None
        finally:
            self._waiters = [w for w in self._waiters if w[1] is not future]

    def _stored_position(self) -> int:
        with self.store.transaction(write=False) as tx:
            if self._check is not None:
                self._check(tx)
            return read_position(tx, self.projection)

    async def _subscribe(self, position: int) -> Any:
        if position == 0:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=position + 1)
        # Every event, each partition keeping its own (``holds``): a server filter of
        # several wildcard subjects cost the server ~0.1 ms per event delivered when
        # catching up (nats-server 2.15), against ~5 us for all. A callback rather
        # than next_msg: a task per message cost ~3x as much.
        sub = await self.js.subscribe(subjects.all_events(), stream=subjects.EVENTS_STREAM,
                                      ordered_consumer=True, config=config, cb=self._on_msg)
        # nats-py quirk: an ordered consumer that resets (missed heartbeats, gap)
        # before its first message restarts at its tracked sequence + 1, which
        # starts at 0, not at opt_start_seq: it would replay the whole log. Seed
        # the tracked sequence (private state; harmless if it ever disappears,
        # since stale deliveries are skipped anyway).
        jsi = getattr(getattr(sub, "_sub", None), "_jsi", None)
        if jsi is not None and getattr(jsi, "_sseq", position) < position:
            jsi._sseq = position
        return sub

    async def _on_msg(self, msg: Any) -> None:
        if self._holds is not None and not self._holds(msg.subject):
            return
        self._buffer.append(Delivery(stream_sequence(msg), msg.subject, msg.data))
        self._arrived.set()
        # Back-pressure: while the buffer is full this callback waits, the client
        # withholds its flow-control answers, and the server pauses the consumer.
        while len(self._buffer) >= BUFFER_MAX and not self._stopped:
            self._room.clear()
            await self._room.wait()

    async def _next_batch(self) -> list[Delivery]:
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), POLL_S)
        deadline = asyncio.get_running_loop().time() + LINGER_S
        while self._lingers() and (left := deadline - asyncio.get_running_loop().time()) > 0:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        batch, self._buffer = self._buffer[:self.batch_max], self._buffer[self.batch_max:]
        self._room.set()
        return batch

    def _lingers(self) -> bool:
        return 0 < len(self._buffer) < LINGER_BELOW and all(
            subjects.event_type_of(d.subject) in LINGERING for d in self._buffer)

    async def _apply(self, batch: list[Delivery], stop: asyncio.Event) -> None:
        delay = 0.1
        while batch:
            try:
                # Off the event loop: the NATS client must keep answering
                # heartbeats and flow control while the store commits.
                outcome = await asyncio.to_thread(apply_batch, self.store, batch, self.projection)
            except Exception as exc:
                log.warning("applying stream sequences %d..%d failed (%s: %s); applying it "
                            "in parts", batch[0].seq, batch[-1].seq, type(exc).__name__, exc)
            else:
                await self._committed(outcome)
                break
            # One event that can never apply must not stall every read model:
            # smaller parts find it, unless the store itself is down.
            found = await asyncio.to_thread(isolate, self.store, batch, self.projection,
                                            apply_batch)
            for outcome in found.outcomes:
                await self._committed(outcome)
            await self._set_aside(found.poisoned, found.position)
            if found.error is None:
                break
            log.error("applying stream sequences %d..%d failed; retrying in %.1fs",
                      batch[0].seq, batch[-1].seq, delay, exc_info=found.error)
            # What committed before the store failed stays committed: retry the rest.
            batch = [d for d in batch if d.seq > self.position]
            with contextlib.suppress(asyncio.TimeoutError):
                # Stopping mid-retry loses nothing: the next start resumes
                # from the stored position.
                await asyncio.wait_for(stop.wait(), delay)
                return
            delay = min(delay * 2, RETRY_MAX_S)

    async def _committed(self, outcome: BatchOutcome) -> None:
        """Take in a committed batch: dead-letter its malformed events, count it
        and wake whoever waits for its position."""
        for delivery, reason in outcome.rejected:  # after the commit: the log keeps the original
            with contextlib.suppress(Exception):
                await dead_letter(self.js, "projector", delivery.subject, delivery.seq, reason,
                                  delivery.data)
        self.position = max(self.position, outcome.position)
        self.applied += outcome.applied
        self.malformed += outcome.malformed
        self.stale += outcome.stale
        log.debug("projection %s at %d (+%d applied)", self.projection, self.position,
                  outcome.applied)
        self._wake()

    async def _set_aside(self, poisoned: Sequence[tuple[Delivery, str]], position: int) -> None:
        """Dead-letter the poison events the store has already moved past (up
        to ``position``), count them and wake the waiters."""
        for delivery, reason in poisoned:
            try:  # after the commit, as for malformed ones: the log keeps the original
                await dead_letter(self.js, "projector", delivery.subject, delivery.seq, reason,
                                  delivery.data)
            except Exception:
                log.exception("dead-lettering stream sequence %d failed", delivery.seq)
        self.poisoned += len(poisoned)
        self.position = max(self.position, position)
        self._wake()

    def _wake(self) -> None:
        for seq, future in self._waiters:
            if future.done():
                continue
            if seq <= self.position:
                future.set_result(None)
            elif self._stopped:
                future.set_exception(
                    RuntimeError(f"projector stopped at {self.position}, before {seq}"))

