"""The ledger: the only code that changes money.

Deposits, per-job reservations that settle (debit the actual cost, refund the
rest, award RCP to the serving operator) or refund in full, each at most once.
Reservations and resolutions run as groups (a single call is a group of one):
many commands (:mod:`ledger.commands`) applied under all their accounts' locks
and written in one ``save()``, since at load writers queue for the database's
write lock and commands/s is bounded by transactions/s.

Each command of a group keeps the meaning it has alone: a short account
refuses its own reservation and records nothing for it; a job already
reserved is answered with its existing reservation; a reservation resolves at
most once (later tries, in the same group or after it, answer
``already=True``). Outcomes come back per command, in order, an exception
*instance* where that command alone failed. A conflict with another process
fails the whole save, which changes nothing, and the group is re-read and
retried as a whole; a database outage fails the whole call. Nothing is ever
half-applied. How the books are kept (one save, retries, locks, cache,
snapshots) is :mod:`ledger.bookkeeping`.
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable, Sequence, TypeVar, Union

from eventsourcing.utils import get_topic

from bus.events import Event
from ledger.bookkeeping import Bookkeeping
from ledger.bulk_load import select_many
from ledger.commands import Refund, Reserve, Resolve, Revoke, Settle
from ledger.domain import (Account, Deposit, InsufficientCredits, LedgerConflict, Reservation,
                           deposit_receipt_id, replay, reservation_id)
from ledger.log_events import MONEY_TOPICS, to_bus_event
from ledger.outcomes import (AccountView, ReservationView, Resolution, UnknownReservation,
                             account_view, reservation_view, resolution)
from ledger.persistence import guarded
from ledger.referrals import Referrals
from ledger.subscriptions import Subscriptions
from ledger.transfers import Transfers, owed

T = TypeVar("T")
Reserved = Union[ReservationView, InsufficientCredits]
Resolved = Union[Resolution, UnknownReservation]


def returned_or_raised(outcome: T | Exception) -> T:
    """A group-of-one's outcome as a plain call's: returned, or raised."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class Ledger(Bookkeeping, Referrals, Subscriptions, Transfers):
    """Credits in integer micro-credits. ``Ledger()`` is in memory;
    ``Ledger.open(settings)`` is SQLite, or PostgreSQL when ``database_url`` is set.
    Referrals and subscriptions: :mod:`ledger.referrals`, :mod:`ledger.subscriptions`.
    One shard of several (:mod:`ledger.shards`) changes only its own accounts; what
    a resolution owes another shard's comes back as its ``transfers``
    (:mod:`ledger.transfers`)."""

    name = "Ledger"  # eventsourcing names its tables and settings after it

    @guarded
    def deposit(self, account: str, amount: int, deposit_id: str | None = None) -> AccountView:
        """Add credits (``amount`` > 0, else ValueError). With ``deposit_id``, a
        repeated deposit is a no-op."""
        def attempt(_: int) -> AccountView:
            with self.serialized(account):
                acct = self.load_account(account)
                if deposit_id is not None and self.load(deposit_receipt_id(deposit_id)):
                    return account_view(account, acct)
                acct = acct or Account(name=account)
                acct.deposit(amount, deposit_id)
                receipt = Deposit(deposit_id, account, amount) if deposit_id else None
                self.save(acct, receipt)
                return account_view(account, acct)
        return self.retry(attempt)

    @guarded
    def reserve(self, account: str, job_id: str, amount: int, *, key_id: str, zone: str,
                deadline: datetime, request_hash: str = "") -> ReservationView:
        """Hold ``amount`` for ``job_id``. Raises :class:`InsufficientCredits`
        (recording nothing) when the balance is short. A job already reserved
        returns its existing reservation unchanged (no second hold)."""
        return returned_or_raised(self._reserve_group(
            [Reserve(account, job_id, amount, key_id, zone, deadline, request_hash)])[0])

    @guarded
    def settle(self, job_id: str, actual: int, *, operator: str | None = None,
               node_id: str | None = None, points: int = 0) -> Resolution:
        """Debit ``min(actual, reserved)``, refund the rest, and award ``points``
        RCP to ``operator`` (not to the job's own account), in one save.
        At most once per job: a resolved reservation returns ``already=True``."""
        return returned_or_raised(self._resolve_group(
            [Settle(job_id, actual, operator, node_id, points)])[0])

    @guarded
    def refund(self, job_id: str, reason: str) -> Resolution:
        """Return the whole reservation. At most once per job, like :meth:`settle`."""
        return returned_or_raised(self._resolve_group([Refund(job_id, reason)])[0])

    @guarded
    def revoke(self, job_id: str, node_id: str, reason: str) -> Resolution:
        """Compensate ``node_id``'s work on a job that failed its check (see
        :class:`~ledger.commands.Revoke`). At most once per job."""
        return returned_or_raised(self._resolve_group([Revoke(job_id, node_id, reason)])[0])

    @guarded
    def reserve_many(self, requests: Sequence[Reserve]) -> list[Reserved]:
        """Apply every :class:`Reserve` in one save. Per request, in order: its
        reservation (new, or the job's existing one) or the InsufficientCredits
        that refused it. A job named twice holds once; later mentions get the
        first one's outcome."""
        return self._reserve_group(requests)

    @guarded
    def resolve_many(self, commands: Sequence[Resolve]) -> list[Resolved]:
        """Apply every :class:`Settle`/:class:`Refund` in one save. Per command, in
        order: its Resolution (``already=True`` when the reservation was resolved
        before it, by an earlier command of the group included), or
        UnknownReservation for a job never reserved."""
        return self._resolve_group(commands)

    @guarded
    def account(self, account: str) -> AccountView:
        """Zeros for an account the ledger has never seen."""
        # Locked: eventsourcing copies a cached aggregate after releasing its
        # fast-forward lock, so a concurrent load could expose a half-applied event.
        with self.serialized(account):
            return account_view(account, self.load_account(account))

    @guarded
    def reservation(self, job_id: str) -> ReservationView | None:
        """The job's reservation in its current state, None if never reserved."""
        res = self.load(reservation_id(job_id))
        return reservation_view(res) if res is not None else None

    @guarded
    def accounts(self) -> list[AccountView]:
        """Every account known to the ledger, by name (scans the log: for audits)."""
        return [self.account(name) for name in sorted(self.account_names())]

    @guarded
    def account_names(self, limit: int | None = None) -> list[str]:
        """The names of the accounts opened here, oldest first (the first ``limit``)."""
        names, after, topic = [], 0, get_topic(Account.Opened)
        while (limit is None or len(names) < limit) and (
                page := self.recorder.select_notifications(
                    start=after, limit=500, topics=[topic], inclusive_of_start=False)):
            names += [self.mapper.to_domain_event(n).name for n in page]  # type: ignore
            after = page[-1].id
        return names[:limit]

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

    def _reserve_group(self, requests: Sequence[Reserve]) -> list[Reserved]:
        jobs = list(dict.fromkeys(r.job_id for r in requests))

        def attempt(n: int) -> list[Reserved]:
            with self.serialized(*{r.account for r in requests}):
                # First try is optimistic, as a single reserve: new jobs have no
                # reservation, and a repeated one makes the save conflict, after
                # which every job of the group is looked up.
                outcome: dict[str, Reserved] = {}
                if n:
                    outcome = {j: reservation_view(r)
                               for j, r in self._reservations(jobs).items() if r is not None}
                accounts, made = _Accounts(self), []
                for r in requests:
                    if r.job_id in outcome:
                        continue
                    try:
                        made.append(r.apply(accounts(r.account)))
                        outcome[r.job_id] = reservation_view(made[-1])
                    except InsufficientCredits as exc:
                        outcome[r.job_id] = exc
                refused = [j for j, o in outcome.items() if isinstance(o, InsufficientCredits)]
                if refused and not n:  # a refused job may be a repeat: answer with its hold
                    for job, held in self._reservations(refused).items():
                        if held is not None:
                            outcome[job] = reservation_view(held)
                if made:
                    self.save(*accounts.loaded.values(), *made)
                return [outcome[r.job_id] for r in requests]
        return self.retry(attempt)

    def _resolve_group(self, commands: Sequence[Resolve]) -> list[Resolved]:
        def attempt(_: int) -> list[Resolved]:
            held = self._reservations(list(dict.fromkeys(c.job_id for c in commands)))
            names = set()
            for c in commands:
                if (res := held[c.job_id]) is not None and c.applies(res):
                    names.update((res.account, *c.accounts(res)))
            # A settlement may reward the job's account's referrer: lock the ones we
            # know (a link never changes once made); an unknown one is learnt by
            # _Accounts, which asks for a retry that locks it.
            names.update([self.referrers[n] for n in names if n in self.referrers])
            # A reservation read above may be resolved by another thread before
            # we hold the locks: its save then conflicts on the reservation's
            # version (or the account refuses: LedgerConflict) and the retry
            # reads it resolved.
            with self.serialized(*names):
                accounts, resolved, outcomes = _Accounts(self, locked=names), [], []
                for c in commands:
                    res = held[c.job_id]
                    if res is None:
                        outcomes.append(UnknownReservation(c.job_id))
                    elif not c.applies(res):
                        outcomes.append(resolution(res, True, owed(res, self.foreign)))
                    else:
                        c.apply(res, accounts(res.account), accounts)
                        resolved.append(res)
                        outcomes.append(resolution(res, False, owed(res, self.foreign)))
                if resolved:
                    self.save(*resolved, *accounts.loaded.values())
                return outcomes
        return self.retry(attempt)

    def _reservations(self, jobs: Sequence[str]) -> dict[str, Reservation | None]:
        """Each job's reservation as stored now (None: never reserved), in one query."""
        ids = {reservation_id(j): j for j in jobs}
        stored = select_many(self.recorder, list(ids))
        if stored is None:  # in memory
            return {j: self.load(i) for i, j in ids.items()}
        return {j: replay(None, map(self.mapper.to_domain_event, stored.get(i, ())))
                for i, j in ids.items()}


class _Accounts:
    """The accounts one group attempt works on: each loaded at most once, so
    every command of the group changes the same object. With ``locked``, an
    account outside it is refused (LedgerConflict: the attempt is retried, by
    then with its lock) instead of changed without this process's lock on it."""

    def __init__(self, ledger: Ledger, locked: set[str] | None = None) -> None:
        self.ledger, self.locked = ledger, locked
        self.loaded: dict[str, Account] = {}

    def __call__(self, name: str) -> Account:
        if self.ledger.foreign(name):
            return _ELSEWHERE  # its shard receives what it is owed (ledger.transfers)
        if name not in self.loaded:
            if self.locked is not None and name not in self.locked:
                raise LedgerConflict(f"account {name} is not locked yet")
            acct = self.ledger.load_account(name) or Account(name=name)
            if acct.referrer is not None:
                self.ledger.referrers[name] = acct.referrer
            self.loaded[name] = acct
        return self.loaded[name]


class _Elsewhere:
    """An account of another shard, as a command here sees it: what it is given
    is read off the reservation and received there (:func:`ledger.transfers.owed`)."""

    referrer = None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


_ELSEWHERE = _Elsewhere()
