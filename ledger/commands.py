"""Ledger commands as values, so that many can be applied in one save.

``Reserve`` holds credits for a job; ``Settle`` and ``Refund`` resolve a
reservation. Each checks its own arguments when constructed (ValueError), so a
bad command fails its caller before it can join a group, and knows how to
change the aggregates it is given; :class:`ledger.application.Ledger` decides which
aggregates those are, under which locks, and saves them.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Union

from bus.credits import MICRO
from ledger.domain import Account, Reservation


@dataclass(frozen=True)
class Reserve:
    """Hold ``amount`` of ``account``'s credits for ``job_id``."""

    account: str
    job_id: str
    amount: int
    key_id: str
    zone: str
    deadline: datetime
    request_hash: str = ""

    def __post_init__(self) -> None:
        if self.amount < 0:
            raise ValueError(f"a reservation cannot be negative, got {self.amount}")

    def apply(self, acct: Account) -> Reservation:
        """Hold on ``acct`` (InsufficientCredits, changing nothing, when short) and
        return the job's new reservation."""
        acct.reserve(self.job_id, self.key_id, self.amount, self.zone, self.deadline,
                     self.request_hash)
        return Reservation(self.job_id, self.account, self.key_id, self.amount, self.zone,
                           self.deadline, self.request_hash)


@dataclass(frozen=True)
class Settle:
    """Debit ``min(actual, reserved)``, refund the rest, award ``points`` RCP to
    ``operator`` (never to the job's own account), and ``referral_rate`` RCP per
    credit debited to the referrer of the job's account, if it has one (settlement
    sets it for completed jobs only: see ``bus.pricing.Pricing.referral_rate``)."""

    job_id: str
    actual: int
    operator: str | None = None
    node_id: str | None = None
    points: int = 0
    referral_rate: int = 0

    def __post_init__(self) -> None:
        if self.actual < 0 or self.points < 0 or self.referral_rate < 0:
            raise ValueError("actual cost, points and referral rate cannot be negative")

    def applies(self, res: Reservation) -> bool:
        return res.status == "pending"

    def accounts(self, res: Reservation) -> tuple[str, ...]:
        """Accounts this command may change besides the job's own."""
        return (self.operator,) if self.operator is not None else ()

    def apply(self, res: Reservation, acct: Account, account: Callable[[str], Account]) -> None:
        """Resolve pending ``res`` held on ``acct``; ``account(name)`` gives the
        operator's account to award (the same object for the same name)."""
        award = self.operator is not None and self.operator != res.account and self.points > 0
        debit = min(self.actual, res.amount)
        res.settle(debit, self.operator if award else None, self.node_id,
                   self.points if award else 0)
        acct.debit(self.job_id, debit, res.zone)
        acct.release(self.job_id, res.amount - debit, res.zone, reason="settled")
        if award:
            assert self.operator is not None
            account(self.operator).award_rcp(self.job_id, self.node_id or "", self.points,
                                             res.zone)
        referrer = acct.referrer
        reward = debit * self.referral_rate // MICRO
        if referrer is not None and referrer != res.account and reward > 0:
            res.note_referral(referrer=referrer, points=reward)
            account(referrer).reward_referral(account=referrer, referred=res.account,
                                              job_id=self.job_id, points=reward, zone=res.zone)


@dataclass(frozen=True)
class Refund:
    """Return the whole reservation."""

    job_id: str
    reason: str

    def applies(self, res: Reservation) -> bool:
        return res.status == "pending"

    def accounts(self, res: Reservation) -> tuple[str, ...]:
        return ()  # changes only the job's own account

    def apply(self, res: Reservation, acct: Account, account: Callable[[str], Account]) -> None:
        res.refund(self.reason)
        acct.release(self.job_id, res.amount, res.zone, reason=self.reason)


@dataclass(frozen=True)
class Revoke:
    """Compensate a job whose work failed its spot check: a settled reservation
    gives its debit back and its RCP is revoked (status ``revoked``); a pending one
    is refunded in full (its completion, if it comes later, then changes nothing).
    Only the work of ``node_id`` is revoked: another node's settlement stands."""

    job_id: str
    node_id: str
    reason: str

    def applies(self, res: Reservation) -> bool:
        return res.status == "pending" or (
            res.status == "settled" and getattr(res, "node_id", None) == self.node_id)

    def accounts(self, res: Reservation) -> tuple[str, ...]:
        if res.status != "settled":
            return ()
        return tuple(a for a in (getattr(res, "operator", None), res.referrer) if a)

    def apply(self, res: Reservation, acct: Account, account: Callable[[str], Account]) -> None:
        if res.status == "pending":
            return Refund(self.job_id, self.reason).apply(res, acct, account)
        res.revoke(self.reason)
        if res.debited:
            acct.reimburse(self.job_id, res.debited, res.zone, self.reason)
        if res.rcp and res.operator:
            account(res.operator).revoke_rcp(self.job_id, res.node_id or "", res.rcp, res.zone,
                                             self.reason)
        if res.referrer and res.referral_points:
            account(res.referrer).revoke_referral_reward(
                account=res.referrer, referred=res.account, job_id=self.job_id,
                points=res.referral_points, zone=res.zone, reason=self.reason)


Resolve = Union[Settle, Refund, Revoke]
