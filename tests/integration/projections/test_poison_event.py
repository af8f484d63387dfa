"""A poison event (well-formed, but the store rejects it every time) against a
real nats-server and real stores: it is dead-lettered and the projector goes
on, while a store outage is waited out and nothing is dead-lettered.

Every test runs on SQLite and, when ``INFERBUS_TEST_DATABASE_URL`` points at a
PostgreSQL database, on PostgreSQL too (each test in its own schema).
"""
from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import nats
import psycopg
import pytest

from bus import subjects
from bus.events import DeadLetter, JobStarted, parse_event
from projections import job_status
from projections.poison import isolate
from projections.projector import apply_batch
from projections.replay import Delivery
from projections.store import SqliteStore, Store
from tests import readmodels as views
from tests.integration.projecting import publish, running, submitted

pytestmark = pytest.mark.asyncio

POISON = "poison"


def started(job_id: str, attempt: int = 1) -> JobStarted:
    return JobStarted(job_id=job_id, node_id="node-a", zone="eu", attempt=attempt)


@pytest.fixture
def poison_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store reject every ``JobStarted`` of job ``poison``: a real SQL
    error (a NOT NULL violation) on either backend, on every attempt."""
    real_apply = job_status.apply

    def apply(tx: Any, event: Any, log_zone: str | None = None) -> bool:
        if isinstance(event, JobStarted) and event.job_id == POISON:
            tx.execute("INSERT INTO jobs (job_id, status) VALUES (?, ?)", (event.job_id, None))
        return real_apply(tx, event, log_zone)

    monkeypatch.setattr(job_status, "apply", apply)


class Outage:
    """Makes ``store`` fail every transaction while ``down``, as a database
    that cannot be reached does; counts the refused attempts."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down, self.refused, self._real = False, 0, store.transaction
        monkeypatch.setattr(store, "transaction", self._transaction)

    def _transaction(self, *, write: bool = True) -> Any:
        if self.down:
            self.refused += 1
            raise ConnectionError("read-model database unreachable")
        return self._real(write=write)


@pytest.fixture
def outage(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    yield Outage(store, monkeypatch)


async def dead_letters(js: nats.js.JetStreamContext) -> list[DeadLetter]:
    """Everything on the dead-letter stream, oldest first."""
    count = (await js.stream_info(subjects.DEAD_LETTER_STREAM)).state.messages
    if not count:
        return []
    sub = await js.subscribe(subjects.all_dead_letters(), ordered_consumer=True)
    try:
        return [DeadLetter.model_validate_json((await sub.next_msg(timeout=5)).data)
                for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_an_event_the_store_cannot_apply_is_dead_lettered_and_the_projector_goes_on(
        store: Store, js, poison_starts) -> None:
    # Logged before the projector starts: one batch, the poison in its middle.
    await publish(js, submitted("before"), started("before"), submitted(POISON))
    poison_seq = await publish(js, started(POISON))
    last = await publish(js, submitted("after"), started("after"))
    async with running(store, js) as projector:
        await projector.wait_for(last)
        assert views.get_job(store, "after").status == "running"
        # Alone in its batch too, live: set aside, and the next job still shows.
        again = await publish(js, started(POISON, attempt=2))
        later = await publish(js, submitted("later"))
        await projector.wait_for(later)

    assert views.get_job(store, "before").status == "running"
    assert views.get_job(store, "later").status == "queued"
    assert views.get_job(store, POISON).status == "queued"  # its starts never applied
    assert views.position(store, "jobs") == projector.position == later
    assert (projector.poisoned, projector.malformed) == (2, 0)
    assert projector.applied == 6  # everything else, once

    letters = await dead_letters(js)
    assert [(d.consumer, d.stream_seq) for d in letters] == [("projector", poison_seq),
                                                              ("projector", again)]
    assert all(d.subject.startswith("events.eu.JobStarted.j") for d in letters)  # its slot
    assert all("status" in d.reason for d in letters)  # the store's own complaint
    kept = [parse_event(base64.b64decode(d.data)) for d in letters]  # the events as logged
    assert [(e.job_id, e.attempt) for e in kept] == [(POISON, 1), (POISON, 2)]

    # A restart resumes past the poison: nothing is tried or set aside again.
    async with running(store, js) as resumed:
        await resumed.wait_for(await publish(js, started("later")))
    assert (resumed.poisoned, resumed.stale, resumed.applied) == (0, 0, 1)
    assert len(await dead_letters(js)) == 2


async def test_a_store_outage_is_retried_and_nothing_is_dead_lettered(
        store: Store, js, outage: Outage) -> None:
    first = await publish(js, submitted("a"))
    async with running(store, js) as projector:
        await projector.wait_for(first)
        outage.down = True
        last = await publish(js, started("a"), submitted("b"), started("b"))
        async with asyncio.timeout(10):
            while outage.refused < 6:  # several retries, each one refused
                await asyncio.sleep(0.05)
        assert projector.position == first  # held, not skipped
        outage.down = False
        await projector.wait_for(last, timeout=15)

    assert [views.get_job(store, j).status for j in ("a", "b")] == ["running", "running"]
    assert views.position(store, "jobs") == last
    assert (projector.poisoned, projector.applied) == (0, 4)
    assert await dead_letters(js) == []


async def test_an_event_that_fails_once_is_applied_not_dead_lettered(
        store: Store, js, monkeypatch: pytest.MonkeyPatch) -> None:
    real_apply, failures = job_status.apply, []

    def apply(tx: Any, event: Any, log_zone: str | None = None) -> bool:
        if isinstance(event, JobStarted) and not failures:  # a passing conflict, say
            failures.append(event.job_id)
            raise RuntimeError("could not serialize access")
        return real_apply(tx, event, log_zone)

    monkeypatch.setattr(job_status, "apply", apply)
    last = await publish(js, submitted("a"), started("a"), submitted("b"))
    async with running(store, js) as projector:
        await projector.wait_for(last)

    assert failures == ["a"]
    assert views.get_job(store, "a").status == "running"
    assert (projector.poisoned, projector.applied) == (0, 3)
    assert await dead_letters(js) == []


def in_the_way(store: Store, tmp_path: Path) -> Exception:
    """What the store's own database raises when another transaction is in the
    way: PostgreSQL's deadlock, or SQLite's busy database, made by SQLite itself
    (a second writer on a file whose write lock is held)."""
    if not isinstance(store, SqliteStore):
        return psycopg.errors.DeadlockDetected("deadlock detected")
    holder = sqlite3.connect(tmp_path / "held.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        sqlite3.connect(tmp_path / "held.sqlite3", timeout=0,
                        isolation_level=None).execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as busy:
        return busy
    finally:
        holder.close()
    raise AssertionError("a second writer was let in")


async def test_an_event_in_another_transactions_way_is_retried_not_dead_lettered(
        store: Store, js, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Partitions sharing one PostgreSQL store add to the same totals rows and can
    deadlock: an event that keeps meeting such a conflict, alone included, is
    applied once it clears, never set aside."""
    conflict = in_the_way(store, tmp_path)
    real_apply, failures = job_status.apply, []

    def apply(tx: Any, event: Any, log_zone: str | None = None) -> bool:
        if isinstance(event, JobStarted) and len(failures) < 6:  # more than isolating tries
            failures.append(event.job_id)
            raise conflict
        return real_apply(tx, event, log_zone)

    monkeypatch.setattr(job_status, "apply", apply)
    last = await publish(js, submitted("a"), started("a"), submitted("b"))
    async with running(store, js) as projector:
        await projector.wait_for(last, timeout=20)

    assert len(failures) == 6
    assert views.get_job(store, "a").status == "running"
    assert (projector.poisoned, projector.applied) == (0, 3)
    assert await dead_letters(js) == []


def deliveries(*events: object, first: int = 1) -> list[Delivery]:
    return [Delivery(first + i, f"events.eu.{type(e).__name__}", e.model_dump_json().encode())
            for i, e in enumerate(events)]


async def test_isolating_moves_the_position_exactly_past_what_was_applied_or_set_aside(
        store: Store, poison_starts) -> None:
    batch = deliveries(submitted("a"), submitted(POISON), started(POISON), started("a"),
                       submitted("b"))
    with pytest.raises(Exception):
        apply_batch(store, batch)  # as a whole, it fails
    assert views.position(store, "jobs") == 0

    found = isolate(store, batch, "jobs", apply_batch)
    assert found.error is None
    assert [(d.seq, "status" in reason) for d, reason in found.poisoned] == [(3, True)]
    assert sum(o.applied for o in found.outcomes) == 4
    assert found.position == views.position(store, "jobs") == 5
    assert views.get_job(store, "a").status == "running"
    assert views.get_job(store, "b").status == "queued"


async def test_an_outage_while_isolating_keeps_what_committed_and_sets_nothing_aside(
        store: Store, outage: Outage) -> None:
    batch = deliveries(submitted("a"), started("a"), submitted("b"), started("b"))
    calls = []

    def apply_then_fail(store: Store, part: Any, projection: str = "jobs") -> Any:
        # The whole batch fails (as isolate's caller saw); the store works for
        # the probe and the first half, then goes down.
        calls.append([d.seq for d in part])
        if len(part) == len(batch):
            raise ConnectionError("connection reset")
        if calls[-1] == [3, 4]:
            outage.down = True
        return apply_batch(store, part, projection)

    found = isolate(store, batch, "jobs", apply_then_fail)
    assert calls[:3] == [[], [1, 2, 3, 4], [1, 2]]
    assert found.error is not None and found.poisoned == []
    outage.down = False
    assert found.position == views.position(store, "jobs") == 2
    assert views.get_job(store, "a").status == "running" and views.get_job(store, "b") is None
