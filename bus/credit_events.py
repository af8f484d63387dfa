"""Money events: amounts are integer micro-credits (``bus.credits.MICRO``).

The ledger (``ledger/``) is the only writer; its relay puts each on the log.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from bus.bounds import MAX_MICRO, Hash, Id, Micro, Name, Text
from bus.contracts import Event
from bus.subjects import GLOBAL


class CreditsDeposited(Event):
    type: Literal["CreditsDeposited"] = "CreditsDeposited"
    account: Id
    amount: int = Field(gt=0, le=MAX_MICRO)
    zone: Name = GLOBAL


class CreditsReserved(Event):
    """The worst-case cost of a job, held before the job is published."""

    type: Literal["CreditsReserved"] = "CreditsReserved"
    account: Id
    job_id: Id
    key_id: Id
    amount: Micro
    zone: Name
    deadline: datetime
    request_hash: Hash = ""


class CreditsDebited(Event):
    """The job's actual cost, taken from the reservation (at most once per job)."""

    type: Literal["CreditsDebited"] = "CreditsDebited"
    account: Id
    job_id: Id
    amount: Micro
    zone: Name


class CreditsRefunded(Event):
    """What a reservation returns: the rest after a debit, or all of it.
    Exactly one per reservation; it is what closes the reservation."""

    type: Literal["CreditsRefunded"] = "CreditsRefunded"
    account: Id
    job_id: Id
    amount: Micro
    zone: Name
    reason: Text


class RCPAwarded(Event):
    """Contribution points for the operator of the node that completed a job."""

    type: Literal["RCPAwarded"] = "RCPAwarded"
    operator: Id
    job_id: Id
    node_id: Id
    points: Micro
    zone: Name


class CreditsReimbursed(Event):
    """A debit given back: the compensating event for a job whose work failed its
    spot check (the reservation stays closed; the account's spending shrinks)."""

    type: Literal["CreditsReimbursed"] = "CreditsReimbursed"
    account: Id
    job_id: Id
    amount: Micro
    zone: Name
    reason: Text


class RCPRevoked(Event):
    """The compensating event of an :class:`RCPAwarded` for work that failed its check."""

    type: Literal["RCPRevoked"] = "RCPRevoked"
    operator: Id
    job_id: Id
    node_id: Id
    points: Micro
    zone: Name
    reason: Text
