"""Group commit: many ledger commands, one ``save()`` (one transaction).

A job's reservation and its resolution each cost the database one write
transaction; at load, writers queue for the database's write lock (SQLite's
file lock, PostgreSQL's table lock on inserts), so commands/s is bounded by
transactions/s. A group applies many commands under all their accounts'
locks (taken in one sorted order: two groups cannot deadlock) and writes
every changed aggregate at once.

Each command keeps the meaning it has alone: a short account refuses its own
reservation and records nothing for it; a job already reserved is answered
with its existing reservation; a reservation resolves at most once (later
tries, in the same group or after it, answer ``already=True``). Outcomes come
back per command, in order, an exception *instance* where that command alone
failed. A conflict with another process (the store refuses a stale version)
fails the whole save, which changes nothing, and the group is re-read and
retried as a whole; a database outage fails the whole call. Nothing is ever
half-applied.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, TypeVar, Union

from bus.ledger.commands import Reserve, Resolve
from bus.ledger.contracts import (ReservationView, Resolution, UnknownReservation,
                                  reservation_view, resolution)
from bus.ledger.domain import Account, InsufficientCredits, Reservation, replay, reservation_id
from bus.ledger.loading import select_many
from bus.ledger.persistence import guarded

if TYPE_CHECKING:
    from bus.ledger.app import Ledger

T = TypeVar("T")
Reserved = Union[ReservationView, InsufficientCredits]
Resolved = Union[Resolution, UnknownReservation]


def one(outcome: T | Exception) -> T:
    """A group-of-one's outcome as a plain call's: returned, or raised."""
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class Accounts:
    """The accounts one group attempt works on: each loaded at most once, so
    every command of the group changes the same object."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.loaded: dict[str, Account] = {}

    def __call__(self, name: str) -> Account:
        if name not in self.loaded:
            self.loaded[name] = self.ledger._account(name) or Account(name=name)
        return self.loaded[name]


class GroupCommands:
    """``reserve_many`` and ``resolve_many`` for :class:`bus.ledger.app.Ledger`."""

    @guarded
    def reserve_many(self: Ledger, requests: Sequence[Reserve]) -> list[Reserved]:
        """Apply every :class:`Reserve` in one save. Per request, in order: its
        reservation (new, or the job's existing one) or the InsufficientCredits
        that refused it. A job named twice holds once; later mentions get the
        first one's outcome."""
        return self._reserve_group(requests)

    @guarded
    def resolve_many(self: Ledger, commands: Sequence[Resolve]) -> list[Resolved]:
        """Apply every :class:`Settle`/:class:`Refund` in one save. Per command, in
        order: its Resolution (``already=True`` when the reservation was resolved
        before it, by an earlier command of the group included), or
        UnknownReservation for a job never reserved."""
        return self._resolve_group(commands)

    def _reserve_group(self: Ledger, requests: Sequence[Reserve]) -> list[Reserved]:
        jobs = list(dict.fromkeys(r.job_id for r in requests))

        def attempt(n: int) -> list[Reserved]:
            with self._serialized(*{r.account for r in requests}):
                # First try is optimistic, as a single reserve: new jobs have no
                # reservation, and a repeated one makes the save conflict, after
                # which every job of the group is looked up.
                outcome: dict[str, Reserved] = {}
                if n:
                    outcome = {j: reservation_view(r)
                               for j, r in self._reservations(jobs).items() if r is not None}
                accounts, made = Accounts(self), []
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
        return self._retry(attempt)

    def _reservations(self: Ledger, jobs: Sequence[str]) -> dict[str, Reservation | None]:
        """Each job's reservation as stored now (None: never reserved), in one query."""
        ids = {reservation_id(j): j for j in jobs}
        stored = select_many(self.recorder, list(ids))
        if stored is None:  # in memory
            return {j: self._load(i) for i, j in ids.items()}
        return {j: replay(None, map(self.mapper.to_domain_event, stored.get(i, ())))
                for i, j in ids.items()}

    def _resolve_group(self: Ledger, commands: Sequence[Resolve]) -> list[Resolved]:
        def attempt(_: int) -> list[Resolved]:
            held = self._reservations(list(dict.fromkeys(c.job_id for c in commands)))
            names = {res.account for res in held.values() if res is not None
                     and res.status == "pending"}
            names.update(a for c in commands for a in c.accounts)
            # A reservation read above may be resolved by another thread before
            # we hold the locks: its save then conflicts on the reservation's
            # version (or the account refuses: LedgerConflict) and the retry
            # reads it resolved.
            with self._serialized(*names):
                accounts, resolved, outcomes = Accounts(self), [], []
                for c in commands:
                    res = held[c.job_id]
                    if res is None:
                        outcomes.append(UnknownReservation(c.job_id))
                    elif res.status != "pending":
                        outcomes.append(resolution(res, already=True))
                    else:
                        c.apply(res, accounts(res.account), accounts)
                        resolved.append(res)
                        outcomes.append(resolution(res, already=False))
                if resolved:
                    self.save(*resolved, *accounts.loaded.values())
                return outcomes
        return self._retry(attempt)
