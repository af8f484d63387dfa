"""Subscription aggregates: a ``Plan`` per plan name, a ``Subscription`` per account.

A subscription goes ``active`` (``Started``: the first period's credits are
granted with it) -> ``Renewed`` at each period's end (its credits granted
again) -> on ``cancel`` ``cancelled`` (the period paid for runs out) ->
``Lapsed`` at that period's end. A lapsed account may start again: a new
``term``. Periods fall on exact multiples of the plan's period after the
start, so a late renewal does not shift the ones after it.

Exactly one renewal per period: ``renew`` is decided on the aggregate's
current version, and the store's unique ``(id, version)`` refuses a second
writer of the same period (the ledger re-reads and finds it renewed); the
credits' deposit id is ``subscription:<account>:<term>:<period>`` besides.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from ledger.domain import LEDGER_NAMESPACE

ACTIVE, CANCELLED, LAPSED = "active", "cancelled", "lapsed"


def plan_id(name: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"plan:{name}")


def subscription_id(account: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"subscription:{account}")


def grant_id(account: str, term: int, period: int) -> str:
    """The deposit id of one period's credits: at most one deposit per period."""
    return f"subscription:{account}:{term}:{period}"


class Plan(Aggregate):
    """``credits`` micro-credits granted every ``period_s`` seconds."""

    @staticmethod
    def create_id(name: str) -> UUID:
        return plan_id(name)

    @event("Defined")
    def __init__(self, name: str, credits: int, period_s: float) -> None:
        if credits <= 0 or period_s <= 0:
            raise ValueError("a plan grants positive credits over a positive period")
        self.name, self.credits, self.period_s = name, credits, period_s


class Subscription(Aggregate):
    """One account's subscription, across its terms (``term`` -1: never started)."""

    @staticmethod
    def create_id(account: str) -> UUID:
        return subscription_id(account)

    @event("Opened")
    def __init__(self, account: str) -> None:
        self.account = account
        self.term = -1
        self.status = LAPSED
        self.plan: str | None = None
        self.credits = self.period = 0
        self.period_s = 0.0
        self.started_at: datetime | None = None
        self.renews_at: datetime | None = None

    def start(self, plan: Plan, now: datetime) -> None:
        if self.status != LAPSED:
            raise ValueError(f"account {self.account!r} is subscribed to {self.plan!r} already "
                             f"({self.status}); cancel it and let it lapse first")
        self._started(account=self.account, plan=plan.name, term=self.term + 1,
                      credits=plan.credits, period_s=plan.period_s, started_at=now,
                      renews_at=now + timedelta(seconds=plan.period_s))

    @event("Started")
    def _started(self, account: str, plan: str, term: int, credits: int, period_s: float,
                 started_at: datetime, renews_at: datetime) -> None:
        self.plan, self.term, self.credits, self.period_s = plan, term, credits, period_s
        self.started_at, self.renews_at = started_at, renews_at
        self.period, self.status = 0, ACTIVE

    def due(self, now: datetime) -> bool:
        """Whether a period ended at or before ``now`` and awaits its renewal or lapse."""
        return self.status != LAPSED and self.renews_at is not None and self.renews_at <= now

    def renew(self) -> None:
        """Begin the next period (the caller grants its credits)."""
        assert self.status == ACTIVE and self.started_at is not None
        period = self.period + 1
        self._renewed(account=self.account, plan=self.plan, term=self.term, period=period,
                      credits=self.credits, renews_at=self.started_at + timedelta(
                          seconds=self.period_s * (period + 1)))

    @event("Renewed")
    def _renewed(self, account: str, plan: str, term: int, period: int, credits: int,
                 renews_at: datetime) -> None:
        self.period, self.renews_at = period, renews_at

    def cancel(self) -> None:
        if self.status != ACTIVE:
            raise ValueError(f"account {self.account!r} has no active subscription"
                             + (f" ({self.plan} is {self.status})" if self.plan else ""))
        self._cancelled(account=self.account, plan=self.plan, term=self.term,
                        ends_at=self.renews_at)

    @event("Cancelled")
    def _cancelled(self, account: str, plan: str, term: int, ends_at: datetime) -> None:
        self.status = CANCELLED

    def lapse(self) -> None:
        assert self.status == CANCELLED
        self._lapsed(account=self.account, plan=self.plan, term=self.term)

    @event("Lapsed")
    def _lapsed(self, account: str, plan: str, term: int) -> None:
        self.status = LAPSED
