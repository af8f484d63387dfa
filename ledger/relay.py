"""Relays the ledger's money events onto the JetStream event log, in order,
each exactly once.

Every relayed message carries the ledger notification id it came from in a
header, and its ``Nats-Msg-Id`` is the event's deterministic id. On start the
relay reads the last relayed message back from the stream and resumes after
its notification id: the bus itself is the relay's position, so a crash
between a publish and any bookkeeping can neither lose nor repeat an event,
whatever the duplicate window.

Each batch read from the ledger goes to the log as one JetStream atomic batch
(one round trip, all or nothing), so the newest relayed event never has a
missing one before it. On a stream without ``allow_atomic`` (or a server
older than 2.12, which ignores it) the relay publishes one event at a time,
each awaiting its ack: the log then holds a gapless prefix of the batch at any
moment, which keeps the same promise.

On a one-replica file stream the server stages every atomic batch in a file
store of its own (a directory, its files, their syncs, then their removal):
2-3 ms of its CPU and 3-5 ms of wall time per batch on this project's
machines, against some 0.13 ms and 0.27 ms per event one at a time; the two
cross at about 16 events (``bench.relay_batches``). A quiet network relays a
few events at a time, so there batches under ``ATOMIC_FROM`` events go one
at a time. A replicated stream stages batches
in memory, and stays atomic throughout.
"""
from __future__ import annotations

import asyncio
import logging

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType

from bus import subjects
from bus.events import ACCOUNT_EVENTS, CREDIT_EVENTS
from bus.publish import ATOMIC_DISABLED, BatchRefused, publish_batch, publish_event

log = logging.getLogger("inferbus.relay")
NOTIFICATION_HEADER = "Inferbus-Ledger-Notification"
RELAYED = (*CREDIT_EVENTS, *ACCOUNT_EVENTS)  # every type the ledger logs (ledger.log_events)
IDLE_S = 0.05
ATOMIC_FROM = 16  # on a one-replica file stream: where an atomic batch costs less


async def last_relayed(js: JetStreamContext, shard: int | None = None) -> int:
    """The ledger notification id of the newest event on the log relayed from
    ``shard`` (None: a ledger of one shard); 0 if none."""
    info = await js.stream_info(subjects.EVENTS_STREAM)
    if info.state.messages == 0:
        return 0
    sub = await js.pull_subscribe(
        "", stream=subjects.EVENTS_STREAM, config=ConsumerConfig(
            filter_subjects=subjects.relayed_by_shard([e.__name__ for e in RELAYED], shard),
            deliver_policy=DeliverPolicy.LAST, ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0))
    try:
        # Nothing of this relay's on the log yet (a new shard, a log of other events):
        # say so at once rather than after a fetch's whole wait.
        if (await sub.consumer_info()).num_pending == 0:
            return 0
        msgs = await sub.fetch(1, timeout=2)
    except NatsTimeout:
        return 0
    finally:
        await sub.unsubscribe()
    return int((msgs[0].headers or {}).get(NOTIFICATION_HEADER, 0))


class Relay:
    """Moves the ledger's money events onto the log from a position on. ``atomic``
    turns off for good once the stream refuses atomic batches; batches under
    ``atomic_from`` events go one at a time (set from the stream by :meth:`run`)."""

    def __init__(self, ledger, js: JetStreamContext, limit: int = 500) -> None:
        self.ledger, self.js, self.limit = ledger, js, limit
        self.atomic, self.atomic_from = True, 1
        # A shard of several marks what it relays, and finds its position by that mark.
        self.shard: int | None = ledger.shard if getattr(ledger, "shards", 1) > 1 else None

    async def once(self, after: int) -> int:
        """Publish the next batch after notification ``after``; returns the new position."""
        batch = await asyncio.to_thread(self.ledger.bus_events, after, self.limit)
        if not batch:
            return after
        items = [(event, zone, {NOTIFICATION_HEADER: str(notification_id)})
                 for notification_id, event, zone in batch]
        if self.atomic and len(items) >= self.atomic_from:
            try:
                await publish_batch(self.js, items, shard=self.shard)
                return batch[-1][0]
            except BatchRefused as exc:
                if exc.err_code != ATOMIC_DISABLED:
                    raise
                log.warning("the event stream does not allow atomic batches; relaying one "
                            "event at a time")
                self.atomic = False
        for (notification_id, _, _), (event, zone, headers) in zip(batch, items):
            await publish_event(self.js, event, zone, headers=headers, shard=self.shard)
            after = notification_id
        return after

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, resuming where the log says it stopped."""
        position: int | None = None
        while not stop.is_set():
            try:
                if position is None:  # at start and after a failure, the log says where we are
                    position = await last_relayed(self.js, self.shard)
                    # A server older than 2.12 ignores allow_atomic (the stream shows it
                    # unset) and would store a batch's messages one by one: relay those
                    # one at a time.
                    info = await self.js.stream_info(subjects.EVENTS_STREAM)
                    self.atomic = bool(info.config.allow_atomic)
                    self.atomic_from = ATOMIC_FROM if (info.config.num_replicas or 1) == 1 \
                        and info.config.storage == StorageType.FILE else 1
                    log.info("ledger relay resuming after notification %d", position)
                moved = await self.once(position)
            except Exception:  # noqa: BLE001 - keep relaying once the bus or database is back
                # (a cluster electing a new stream leader fails the reads here too)
                log.exception("ledger relay failed; retrying")
                await asyncio.sleep(1.0)
                position = None
                continue
            if moved == position:
                try:
                    await asyncio.wait_for(stop.wait(), IDLE_S)
                except asyncio.TimeoutError:
                    pass
            position = moved
