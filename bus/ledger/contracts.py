"""The ledger's outward shapes: the views and outcomes its API returns, and
the mapping of its stored money events to the bus contracts.

Only ``Account`` events move money; each maps to exactly one bus event whose
``event_id`` is derived from the stored event's identity (aggregate id and
version), so republishing the same stored event is deduplicated by JetStream,
and whose ``occurred_at`` is the stored event's timestamp.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Literal
from uuid import uuid5

from eventsourcing.utils import get_topic

from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReserved,
                        Event, RCPAwarded)
from bus.ledger.domain import Account, Reservation

GLOBAL_ZONE = "global"


class UnknownReservation(KeyError):
    """No reservation was ever made for this job."""

    def __str__(self) -> str:
        return f"no reservation for job {self.args[0]!r}"


@dataclass(frozen=True)
class AccountView:
    """``balance = deposited - held - spent``: what can still be reserved."""

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
    status: Literal["pending", "settled", "refunded"]
    debited: int
    refunded: int


@dataclass(frozen=True)
class Resolution:
    """How a reservation ended (``rcp``: points awarded to the operator).
    ``already`` is True when this call changed nothing because the reservation
    had been resolved before; the rest then describes that earlier outcome."""

    job_id: str
    status: Literal["settled", "refunded"]
    debited: int
    refunded: int
    rcp: int
    already: bool


def account_view(name: str, a: Account | None) -> AccountView:
    if a is None:
        return AccountView(name, 0, 0, 0, 0, 0)
    return AccountView(name, a.balance, a.held, a.spent, a.deposited, a.rcp)


def reservation_view(r: Reservation) -> ReservationView:
    return ReservationView(r.job_id, r.account, r.key_id, r.amount, r.zone, r.deadline,
                           r.request_hash, r.status, r.debited, r.refunded)


def resolution(r: Reservation, already: bool) -> Resolution:
    return Resolution(r.job_id, r.status, r.debited, r.refunded, r.rcp, already)


def bus_event_id(originator_id: Any, version: int) -> str:
    """The same stored event always gets the same id."""
    return uuid5(originator_id, str(version)).hex


def _base(e: Any) -> dict[str, Any]:
    return {"event_id": bus_event_id(e.originator_id, e.originator_version),
            "occurred_at": e.timestamp}


def _deposited(e: Any) -> tuple[Event, str]:
    return CreditsDeposited(**_base(e), account=e.account, amount=e.amount,
                            zone=GLOBAL_ZONE), GLOBAL_ZONE


def _reserved(e: Any) -> tuple[Event, str]:
    return CreditsReserved(**_base(e), account=e.account, job_id=e.job_id, key_id=e.key_id,
                           amount=e.amount, zone=e.zone, deadline=e.deadline,
                           request_hash=e.request_hash), e.zone


def _debited(e: Any) -> tuple[Event, str]:
    return CreditsDebited(**_base(e), account=e.account, job_id=e.job_id, amount=e.amount,
                          zone=e.zone), e.zone


def _refunded(e: Any) -> tuple[Event, str]:
    return CreditsRefunded(**_base(e), account=e.account, job_id=e.job_id, amount=e.amount,
                           zone=e.zone, reason=e.reason), e.zone


def _rcp_awarded(e: Any) -> tuple[Event, str]:
    return RCPAwarded(**_base(e), operator=e.account, job_id=e.job_id, node_id=e.node_id,
                      points=e.points, zone=e.zone), e.zone


# Stored topic -> mapper. Topics name classes in bus.ledger.domain: renaming one
# would orphan its stored history.
MAPPERS: dict[str, Callable[[Any], tuple[Event, str]]] = {
    get_topic(Account.Deposited): _deposited,
    get_topic(Account.Reserved): _reserved,
    get_topic(Account.Debited): _debited,
    get_topic(Account.Refunded): _refunded,
    get_topic(Account.RCPAwarded): _rcp_awarded,
}
MONEY_TOPICS: tuple[str, ...] = tuple(MAPPERS)


def to_bus_event(topic: str, domain_event: Any) -> tuple[Event, str]:
    """``(contract, zone to publish on)`` for a stored money event."""
    return MAPPERS[topic](domain_event)
