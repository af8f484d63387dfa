"""Isolating a poison event: one that parses but that the store can never apply.

When a whole batch fails to apply, the projector cannot tell a database outage
from one bad event that fails every time it is applied (a value the SQL layer
rejects, say): both raise. An outage must be waited out and nothing skipped; a
poison event must be set aside, or it stalls every read model behind it for
good. :func:`isolate` tells them apart by applying smaller parts:

* First a probe: an empty batch, one transaction that locks and reads the
  position (a step that only fails when the store does). If it fails, the
  store is down: nothing more is tried and the caller retries with backoff.
* Otherwise the batch is bisected: each half is applied on its own (and
  committed with its own position), a failing half split again, down to
  single events.
* A single event that fails is tried once more, each failure followed by a
  probe. Only when it fails twice while the probe succeeds both times is it
  poison: the position moves past it, in a transaction of its own, and the
  caller dead-letters it. A probe failing at any point means an outage again,
  and so does a second failure that only says another transaction was in the
  way (:func:`passing`): partitions writing one PostgreSQL store can deadlock
  on the shared totals rows they add to, and such an event is retried, never
  set aside.

What was committed before an outage is kept and reported, so the caller's
position stays exactly where the store's is.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from projections.replay import Delivery
from projections.store import Store, read_position, write_position


log = logging.getLogger("inferbus.projections")

Apply = Callable[[Store, Sequence[Delivery], str], Any]


class StoreDown(Exception):
    """The probe failed: the store itself is failing, so nothing is poison."""


@dataclass
class Isolation:
    """What :func:`isolate` did: the parts it committed, in order, the events it
    moved past as poison with their reasons, and the error that stopped it if
    the store turned out to be down (then the rest is still to apply)."""

    outcomes: list[Any] = field(default_factory=list)
    poisoned: list[tuple[Delivery, str]] = field(default_factory=list)
    position: int = 0  # the last stream sequence committed here (0: none)
    error: Exception | None = None


def isolate(store: Store, batch: Sequence[Delivery], projection: str,
            apply: Apply) -> Isolation:
    """Apply ``batch`` (which just failed as a whole) in smaller parts with
    ``apply`` (the projector's ``apply_batch``), moving past any poison event
    (sync: callers run it in a thread). Never raises for a store error: it
    stops and returns it in ``error``."""
    result = Isolation()
    try:
        _probe(store, projection, apply)  # cheap, and spares an outage a bisection
        _settle(store, list(batch), projection, apply, result)
    except StoreDown as down:  # its cause is the store's own error
        result.error = down
    return result


def _settle(store: Store, part: list[Delivery], projection: str, apply: Apply,
            result: Isolation) -> None:
    """Apply ``part``, bisecting it on failure; record what committed."""
    try:
        outcome = apply(store, part, projection)
    except Exception as exc:
        if len(part) > 1:
            middle = len(part) // 2
            _settle(store, part[:middle], projection, apply, result)
            _settle(store, part[middle:], projection, apply, result)
        else:
            _single(store, part[0], projection, apply, result, exc)
        return
    result.outcomes.append(outcome)
    result.position = max(result.position, outcome.position)


def _single(store: Store, delivery: Delivery, projection: str, apply: Apply,
            result: Isolation, first: Exception) -> None:
    """One event failed alone: poison only if it fails again while the store
    demonstrably works (a probe succeeds after each failure)."""
    _probe(store, projection, apply)
    try:
        outcome = apply(store, [delivery], projection)
    except Exception as exc:
        _probe(store, projection, apply)
        if passing(exc):  # in another transaction's way twice: retried later, whole
            raise StoreDown(f"stream sequence {delivery.seq} met another transaction's "
                            f"lock twice: {type(exc).__name__}: {exc}") from exc
        reason = f"cannot be applied: {type(exc).__name__}: {exc}"
        log.error("projection %s: stream sequence %d on %s fails while the store works "
                  "(first: %s: %s); setting it aside: %s", projection, delivery.seq,
                  delivery.subject, type(first).__name__, first, reason)
        result.position = max(result.position, _move_past(store, delivery.seq, projection))
        result.poisoned.append((delivery, reason))
        return
    # The first failure was passing (a lock timeout, a conflict): nothing is poison.
    result.outcomes.append(outcome)
    result.position = max(result.position, outcome.position)


# What says only that another transaction was in the way, never anything about the
# event: PostgreSQL's serialization failure, deadlock and lock timeout (exact codes:
# the rest of class 40 could come from an event's content, and retrying such an
# event would stall its partition), and SQLite's SQLITE_BUSY and SQLITE_LOCKED.
_PASSING_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_PASSING_SQLITE_CODES = frozenset({5, 6})


def passing(exc: BaseException) -> bool:
    """Whether ``exc`` says nothing about the event it was applying: another
    transaction was in the way (see ``_PASSING_SQLSTATES``)."""
    if isinstance(exc, sqlite3.Error):  # its primary code is the low byte
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _PASSING_SQLITE_CODES
    return getattr(exc, "sqlstate", None) in _PASSING_SQLSTATES  # psycopg's errors


def _probe(store: Store, projection: str, apply: Apply) -> None:
    """Raise :class:`StoreDown` unless an empty batch applies: a write
    transaction that locks and reads the position, through the same path as
    every event, yet depending on no event's content."""
    try:
        apply(store, [], projection)
    except Exception as exc:
        raise StoreDown(f"store probe failed: {type(exc).__name__}: {exc}") from exc


def _move_past(store: Store, seq: int, projection: str) -> int:
    """Advance the stored position to ``seq`` (never backwards: another
    projector on the store may be ahead) and return the position now stored."""
    try:
        with store.transaction() as tx:
            position = read_position(tx, projection, lock=True)
            if seq > position:
                write_position(tx, projection, seq)
                position = seq
    except Exception as exc:  # the store failed right after the probe: an outage
        raise StoreDown(f"moving past {seq} failed: {type(exc).__name__}: {exc}") from exc
    return position
