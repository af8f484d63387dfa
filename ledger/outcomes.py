"""What the ledger answers: an account or a reservation as it stands, and how
a resolution ended. Plain frozen values, independent of eventsourcing."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ledger.domain import Account, Reservation


class UnknownReservation(KeyError):
    """No reservation was ever made for this job."""

    def __str__(self) -> str:
        return f"no reservation for job {self.args[0]!r}"


@dataclass(frozen=True)
class AccountView:
    """An account's credits; ``balance`` (:func:`bus.credits.available`) is what
    it can still reserve."""

    account: str
    balance: int
    held: int
    spent: int
    deposited: int
    rcp: int


@dataclass(frozen=True)
class ReservationView:
    """A job's hold as it stands; once resolved, ``debited + refunded == amount``."""

    job_id: str
    account: str
    key_id: str
    amount: int
    zone: str
    deadline: datetime
    request_hash: str
    status: Literal["pending", "settled", "refunded", "revoked"]
    debited: int
    refunded: int


@dataclass(frozen=True)
class Resolution:
    """How a reservation ended (``rcp``: points awarded to the operator).
    ``already`` is True when this call changed nothing because the reservation
    had been resolved before; the rest then describes that earlier outcome.
    ``transfers``: what it owes accounts of other ledger shards
    (:class:`ledger.transfers.Transfer`), the same however often it is asked."""

    job_id: str
    status: Literal["settled", "refunded", "revoked"]
    debited: int
    refunded: int
    rcp: int
    already: bool
    transfers: tuple = ()


def account_view(name: str, a: Account | None) -> AccountView:
    if a is None:
        return AccountView(name, 0, 0, 0, 0, 0)
    return AccountView(name, a.balance, a.held, a.spent, a.deposited, a.rcp)


def reservation_view(r: Reservation) -> ReservationView:
    return ReservationView(r.job_id, r.account, r.key_id, r.amount, r.zone, r.deadline,
                           r.request_hash, r.status, r.debited, r.refunded)


def resolution(r: Reservation, already: bool, transfers: tuple = ()) -> Resolution:
    return Resolution(r.job_id, r.status, r.debited, r.refunded, r.rcp, already, transfers)
