"""How the ledger keeps its books: the eventsourcing machinery under its commands.

A command reads, decides, and saves every aggregate it changed in ONE
``save()`` (one transaction). Concurrency is optimistic: the store refuses a
second event with the same aggregate version; :meth:`Bookkeeping.retry` then
re-reads and tries again (bounded, with jitter). In one process, every load
and command of an account runs under that account's striped lock
(:meth:`Bookkeeping.serialized`), so a thread pool does not fight itself;
conflicts come from other processes sharing the database. While its database
is down, calls fail within seconds (:mod:`ledger.persistence`).

Persistence comes only from the ``env`` mapping (eventsourcing keys such as
``PERSISTENCE_MODULE``, from :func:`ledger.persistence.ledger_env`), never
from ``os.environ``; none means in-memory.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterator, Mapping, TypeVar

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (DatabaseError, OperationalError, RecordConflictError,
                                       Recording)
from eventsourcing.utils import Environment
from psycopg import sql

from bus.config import Settings
from bus.partitions import shard_of_account
from ledger.domain import Account, LedgerConflict, account_id, replay
from ledger.persistence import Outage, ledger_env

log = logging.getLogger("inferbus.ledger")
T = TypeVar("T")
B = TypeVar("B", bound="Bookkeeping")

MAX_ATTEMPTS = 50  # generous: only other processes, or a racing resolution, conflict
LOCK_STRIPES = 64
SNAPSHOT_INTERVAL = 200  # account events between snapshots: bounds a cold load
OUTAGE_S = 2.0  # operational errors this long into a command: the database is down


class Bookkeeping(Application):
    """An eventsourcing application tuned for many small, hot accounts."""

    # Cached accounts are fast-forwarded with one indexed SELECT per load, so
    # another process's writes are still seen (and conflicts detected).
    env = {"IS_SNAPSHOTTING_ENABLED": "y", "AGGREGATE_CACHE_MAXSIZE": "10000"}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self.outage = Outage()  # open() arms it for PostgreSQL
        # account -> its referrer, as learnt from loads: a link never changes once
        # made, so resolutions lock the referrer before they award it (ledger.referrals)
        self.referrers: dict[str, str] = {}
        self.shard, self.shards = 0, 1  # which of how many ledger shards (bus.partitions)
        # Where a command looks up other accounts (referral codes and links): this
        # ledger, or every shard's (ledger.shards.Shards sets itself).
        self.directory: Any = self
        super().__init__(dict(env) if env is not None else None)

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # The base class also reads os.environ; the ledger's persistence must
        # come only from the mapping it is given.
        return Environment(name, {**type(self).env, **(env or {})})

    def foreign(self, account: str) -> bool:
        """Whether ``account``'s money lives in another shard than this one."""
        return self.shards > 1 and shard_of_account(account, self.shards) != self.shard

    @classmethod
    def open(cls: type[B], settings: Settings, shard: int = 0) -> B:
        """SQLite at ``settings.sqlite_path("ledger")`` when ``database_url`` is
        unset, else PostgreSQL (schema from the URL's ``search_path`` option);
        shard ``shard`` of ``settings.ledger_partitions`` (``ledger_env``)."""
        env = ledger_env(settings, shard)
        if schema := env.get("POSTGRES_SCHEMA"):  # eventsourcing does not create it
            with psycopg.connect(settings.database_url or "", autocommit=True) as conn, \
                    contextlib.suppress(psycopg.errors.UniqueViolation):  # made meanwhile
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(schema)))
        for attempt in itertools.count(1):
            try:
                books = cls(env)
                books.outage = Outage(settings.database_url)
                books.shard, books.shards = shard, settings.ledger_partitions
                return books
            except DatabaseError:  # e.g. another process creating the same tables
                if attempt == 5:
                    raise
                time.sleep(0.2 + random.random() * 0.3)

    def load_account(self, name: str) -> Account | None:
        """The account as stored now (cached, fast-forwarded); None if never opened."""
        try:
            return self.repository.get(account_id(name), projector_func=replay)
        except AggregateNotFoundError:
            return None

    def load(self, aggregate_id: Any) -> Any:
        """A small aggregate (a reservation, a receipt) as stored now, or None."""
        # Reservations and receipts (1-2 events) skip the cache: no churn there.
        return replay(None, self.events.get(aggregate_id))

    @contextlib.contextmanager
    def serialized(self, *accounts: str | None) -> Iterator[None]:
        """Hold the locks of ``accounts`` (None entries ignored) in this process."""
        # Sorted stripe order: two commands locking two accounts cannot deadlock.
        stripes = sorted({hash(a) % LOCK_STRIPES for a in accounts if a is not None})
        with contextlib.ExitStack() as stack:
            for i in stripes:
                stack.enter_context(self._stripes[i])
            yield

    def retry(self, attempt: Callable[[int], T]) -> T:
        """``attempt(n)`` until it does not conflict; n counts the tries before."""
        started = time.monotonic()
        for n in itertools.count():
            try:
                return attempt(n)
            except (RecordConflictError, LedgerConflict, OperationalError) as exc:
                # Stale state, or SQLite busy / pool exhausted: re-read and retry.
                # A database still failing after OUTAGE_S is down: say so (the
                # API answers 503) rather than hold the caller for 50 attempts.
                down = isinstance(exc, OperationalError) and \
                    time.monotonic() - started > OUTAGE_S
                if n + 1 == MAX_ATTEMPTS or down:
                    raise
                log.debug("ledger retry %d after %s", n + 1, exc)
                time.sleep(random.uniform(0, min(0.05, 0.0005 * 2 ** n)))

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[Any]]:
        # As the base class, minus its per-object runtime Protocol checks (the
        # costliest part of a save in profiles): we only ever save aggregates.
        processing = ProcessingEvent()
        for obj in objs:
            if obj is not None:
                processing.events.extend(obj.collect_events())
                processing.aggregates[obj.id] = obj
        processing.saved_kwargs.update(kwargs)
        recordings = self._record(processing)
        self._take_snapshots(processing)
        self._notify(recordings)
        return recordings

    def _record(self, processing_event: ProcessingEvent[Any]) -> list[Recording[Any]]:
        recordings = super()._record(processing_event)
        # The base class caches saved aggregates only when not fast-forwarding;
        # we fast-forward (other processes write) AND cache what we stored, so the
        # next load skips our own events. The cache is never ahead of the database.
        if self.repository.cache is not None:
            for agg_id, agg in processing_event.aggregates.items():
                if isinstance(agg, Account):
                    self.repository.cache.put(agg_id, agg)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[Any]) -> None:
        # Snapshot the account in hand (just saved: exactly the stored state), not a
        # re-read as the base class does; a failure must not fail a committed command.
        if self.snapshots is None:
            return
        saved = Counter(e.originator_id for e in processing_event.events)
        for agg_id, agg in processing_event.aggregates.items():
            if isinstance(agg, Account) and agg.version % SNAPSHOT_INTERVAL < saved[agg_id]:
                try:  # this save crossed a multiple of the interval
                    self.snapshots.put([Account.Snapshot.take(agg)])
                except Exception:  # noqa: BLE001
                    log.warning("ledger: snapshot of account %s failed", agg.name, exc_info=True)
