"""The ledger: the only code that changes money.

An ``eventsourcing`` application over :mod:`bus.ledger.domain`. A command reads,
decides, and saves every aggregate it changed in ONE ``save()`` (one
transaction); reservations and resolutions go through the group commands of
:mod:`bus.ledger.grouped` (a single call is a group of one). Concurrency is optimistic: the store refuses a second event with
the same aggregate version; the command then re-reads and retries (bounded,
with jitter). In one process, every load and command of an account runs under
that account's striped lock, so a thread pool does not fight itself;
conflicts come from other processes sharing the database. While its database
is down, calls fail within seconds (:mod:`bus.ledger.persistence`).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping, TypeVar

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.persistence import (DatabaseError, OperationalError, RecordConflictError,
                                       Recording)
from eventsourcing.utils import Environment, get_topic
import psycopg
from psycopg import sql

from bus.config import Settings
from bus.events import Event
from bus.ledger.commands import Refund, Reserve, Settle
from bus.ledger.contracts import (MONEY_TOPICS, AccountView, ReservationView, Resolution,
                                  account_view, reservation_view, to_bus_event)
from bus.ledger.domain import (Account, Deposit, LedgerConflict, account_id, deposit_receipt_id,
                               replay, reservation_id)
from bus.ledger.grouped import GroupCommands, one
from bus.ledger.persistence import Outage, guarded, ledger_env

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ATTEMPTS = 50  # generous: only other processes, or a racing resolution, conflict
LOCK_STRIPES = 64
SNAPSHOT_INTERVAL = 200  # account events between snapshots: bounds a cold load
OUTAGE_S = 2.0  # operational errors this long into a command: the database is down


class Ledger(GroupCommands, Application):
    """Credits in integer micro-credits. Persistence comes only from ``env``
    (eventsourcing keys such as ``PERSISTENCE_MODULE``); none means in-memory."""

    name = "Ledger"
    # Cached accounts are fast-forwarded with one indexed SELECT per load, so
    # another process's writes are still seen (and conflicts detected).
    env = {"IS_SNAPSHOTTING_ENABLED": "y", "AGGREGATE_CACHE_MAXSIZE": "10000"}

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._stripes = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self.outage = Outage()  # open() arms it for PostgreSQL
        super().__init__(dict(env) if env is not None else None)

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # The base class also reads os.environ; the ledger's persistence must
        # come only from the mapping it is given.
        return Environment(name, {**type(self).env, **(env or {})})

    @classmethod
    def open(cls, settings: Settings) -> Ledger:
        """SQLite at ``settings.sqlite_path("ledger")`` when ``database_url`` is
        unset, else PostgreSQL (schema from the URL's ``search_path`` option)."""
        env = ledger_env(settings)
        if schema := env.get("POSTGRES_SCHEMA"):  # eventsourcing does not create it
            with psycopg.connect(settings.database_url or "", autocommit=True) as conn, \
                    contextlib.suppress(psycopg.errors.UniqueViolation):  # made meanwhile
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(schema)))
        for attempt in itertools.count(1):
            try:
                ledger = cls(env)
                ledger.outage = Outage(settings.database_url)
                return ledger
            except DatabaseError:  # e.g. another process creating the same tables
                if attempt == 5:
                    raise
                time.sleep(0.2 + random.random() * 0.3)

    @guarded
    def deposit(self, account: str, amount: int, deposit_id: str | None = None) -> AccountView:
        """Add credits (``amount`` > 0, else ValueError). With ``deposit_id``, a
        repeated deposit is a no-op."""
        def attempt(_: int) -> AccountView:
            with self._serialized(account):
                acct = self._account(account)
                if deposit_id is not None and self._load(deposit_receipt_id(deposit_id)):
                    return account_view(account, acct)
                acct = acct or Account(name=account)
                acct.deposit(amount, deposit_id)
                receipt = Deposit(deposit_id, account, amount) if deposit_id else None
                self.save(acct, receipt)
                return account_view(account, acct)
        return self._retry(attempt)

    @guarded
    def reserve(self, account: str, job_id: str, amount: int, *, key_id: str, zone: str,
                deadline: datetime, request_hash: str = "") -> ReservationView:
        """Hold ``amount`` for ``job_id``. Raises :class:`InsufficientCredits`
        (recording nothing) when the balance is short. A job already reserved
        returns its existing reservation unchanged (no second hold)."""
        return one(self._reserve_group([Reserve(account, job_id, amount, key_id, zone,
                                                deadline, request_hash)])[0])

    @guarded
    def settle(self, job_id: str, actual: int, *, operator: str | None = None,
               node_id: str | None = None, points: int = 0) -> Resolution:
        """Debit ``min(actual, reserved)``, refund the rest, and award ``points``
        RCP to ``operator`` (not to the job's own account), in one save.
        At most once per job: a resolved reservation returns ``already=True``."""
        return one(self._resolve_group([Settle(job_id, actual, operator, node_id, points)])[0])

    @guarded
    def refund(self, job_id: str, reason: str) -> Resolution:
        """Return the whole reservation. At most once per job, like :meth:`settle`."""
        return one(self._resolve_group([Refund(job_id, reason)])[0])

    @guarded
    def account(self, account: str) -> AccountView:
        """Zeros for an account the ledger has never seen."""
        # Locked: eventsourcing copies a cached aggregate after releasing its
        # fast-forward lock, so a concurrent load could expose a half-applied event.
        with self._serialized(account):
            return account_view(account, self._account(account))

    @guarded
    def reservation(self, job_id: str) -> ReservationView | None:
        """The job's reservation in its current state, None if never reserved."""
        res = self._load(reservation_id(job_id))
        return reservation_view(res) if res is not None else None

    @guarded
    def accounts(self) -> list[AccountView]:
        """Every account known to the ledger, by name (scans the log: for audits)."""
        names, after, topic = [], 0, get_topic(Account.Opened)
        while page := self.recorder.select_notifications(
                start=after, limit=500, topics=[topic], inclusive_of_start=False):
            names += [self.mapper.to_domain_event(n).name for n in page]  # type: ignore
            after = page[-1].id
        return [self.account(name) for name in sorted(names)]

    @guarded
    def bus_events(self, after: int, limit: int = 500) -> list[tuple[int, Event, str]]:
        """``(notification id, bus contract, zone)`` for the money events after
        notification id ``after``, in log order. Other events are filtered out
        in the query (ids have gaps); empty means no money event after ``after``."""
        page = self.recorder.select_notifications(
            start=after, limit=limit, topics=list(MONEY_TOPICS), inclusive_of_start=False)
        return [(n.id, *to_bus_event(n.topic, self.mapper.to_domain_event(n))) for n in page]

    @guarded
    def max_notification_id(self) -> int:
        """The id of the last stored event (0 when empty): where the log ends now."""
        return self.recorder.max_notification_id() or 0

    def _account(self, name: str) -> Account | None:
        try:
            return self.repository.get(account_id(name), projector_func=replay)
        except AggregateNotFoundError:
            return None

    def _load(self, aggregate_id: Any) -> Any:
        # Reservations and receipts (1-2 events) skip the cache: no churn there.
        return replay(None, self.events.get(aggregate_id))

    @contextlib.contextmanager
    def _serialized(self, *accounts: str | None) -> Iterator[None]:
        # Sorted stripe order: two commands locking two accounts cannot deadlock.
        stripes = sorted({hash(a) % LOCK_STRIPES for a in accounts if a is not None})
        with contextlib.ExitStack() as stack:
            for i in stripes:
                stack.enter_context(self._stripes[i])
            yield

    def _retry(self, attempt: Callable[[int], T]) -> T:
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
