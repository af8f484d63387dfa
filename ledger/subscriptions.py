"""Subscriptions on the ledger: admin-defined plans that grant credits per period.

``define_plan`` (``inferbus plans create``), ``start_subscription`` (grants
the first period's credits in the same save), ``cancel_subscription`` (the
paid period runs out, then it lapses) and ``renew_due``, which the renewal
clock (:mod:`ledger.renewals`) calls for each subscription whose period ended:
it renews it, granting the period's credits, or lapses a cancelled one.

Every grant is an ordinary ``Deposited`` account event (with a ``Deposit``
receipt ``subscription:<account>:<term>:<period>``), so the balance rules and
the audit count it as any deposit. The aggregates and why a period renews
exactly once: :mod:`ledger.plans`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from eventsourcing.persistence import RecordConflictError
from eventsourcing.utils import get_topic

from bus.subjects import check_token
from ledger.domain import Account, Deposit
from ledger.persistence import guarded
from ledger.plans import (CANCELLED, Plan, Subscription, grant_id, plan_id,
                          subscription_id)

MAX_CATCH_UP = 100  # periods renewed in one call (a clock stopped for long catches up in steps)
# What the renewal clock reads to know when each subscription is next due.
SCHEDULE_TOPICS = tuple(get_topic(e) for e in (
    Subscription.Opened, Subscription.Started, Subscription.Renewed, Subscription.Lapsed))


@dataclass(frozen=True)
class PlanView:
    name: str
    credits: int  # micro-credits per period
    period_s: float


@dataclass(frozen=True)
class SubscriptionView:
    """``status``: ``active``, ``cancelled`` (runs until ``renews_at``, then lapses)
    or ``lapsed`` (``renews_at`` None)."""

    account: str
    plan: str
    credits: int  # micro-credits per period
    period_s: float
    status: str
    renews_at: datetime | None
    term: int
    period: int


def _view(sub: Subscription) -> SubscriptionView:
    return SubscriptionView(sub.account, sub.plan or "", sub.credits, sub.period_s, sub.status,
                            None if sub.status == "lapsed" else sub.renews_at, sub.term,
                            sub.period)


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(timezone.utc)


class Subscriptions:
    """The subscription commands of :class:`ledger.application.Ledger` (a mixin)."""

    @guarded
    def define_plan(self, name: str, credits: int, period_s: float) -> PlanView:
        """A new plan; ValueError for a name in use or a bad amount or period."""
        check_token(name, "plan name")
        exists = ValueError(f"plan {name!r} exists already")
        if self.load(plan_id(name)) is not None:
            raise exists
        plan = Plan(name, credits, period_s)
        try:
            self.save(plan)
        except RecordConflictError:  # defined meanwhile by another process
            raise exists from None
        return PlanView(name, credits, period_s)

    @guarded
    def plan(self, name: str) -> PlanView | None:
        plan = self.load(plan_id(name))
        return PlanView(plan.name, plan.credits, plan.period_s) if plan is not None else None

    @guarded
    def start_subscription(self, account: str, plan_name: str,
                           now: datetime | None = None) -> SubscriptionView:
        """Subscribe ``account`` to ``plan_name`` and grant its first period's credits."""
        check_token(account, "account")
        plan = self.directory.plan(plan_name)  # a ledger in shards keeps plans in its first
        if plan is None:
            raise ValueError(f"no plan {plan_name!r}: `inferbus plans create` it first")

        def attempt(_: int) -> SubscriptionView:
            with self.serialized(account):
                sub = self.load(subscription_id(account)) or Subscription(account)
                sub.start(plan, _now(now))
                acct = self.load_account(account) or Account(name=account)
                grant = grant_id(account, sub.term, 0)
                acct.deposit(plan.credits, grant)
                self.save(sub, acct, Deposit(grant, account, plan.credits))
                return _view(sub)
        return self.retry(attempt)

    @guarded
    def cancel_subscription(self, account: str) -> SubscriptionView:
        """Stop renewing: the period paid for runs to its end, then it lapses."""
        def attempt(_: int) -> SubscriptionView:
            sub = self.load(subscription_id(account))
            if sub is None:
                raise ValueError(f"account {account!r} has no subscription")
            sub.cancel()
            self.save(sub)
            return _view(sub)
        return self.retry(attempt)

    @guarded
    def subscription(self, account: str) -> SubscriptionView | None:
        """The account's subscription as it stands; None if it never had one."""
        sub = self.load(subscription_id(account))
        return _view(sub) if sub is not None and sub.term >= 0 else None

    @guarded
    def renew_due(self, account: str, now: datetime | None = None) -> SubscriptionView | None:
        """Renew every period of ``account``'s subscription that ended by ``now``
        (at most ``MAX_CATCH_UP``), granting each one's credits, or lapse it if it
        was cancelled. Nothing due: nothing changes. Safe to call from many processes."""
        def attempt(_: int) -> SubscriptionView | None:
            with self.serialized(account):
                sub = self.load(subscription_id(account))
                if sub is None or not sub.due(_now(now)):
                    return None if sub is None else _view(sub)
                acct, receipts = None, []
                while sub.due(_now(now)) and len(receipts) < MAX_CATCH_UP:
                    if sub.status == CANCELLED:
                        sub.lapse()
                        break
                    sub.renew()
                    acct = acct or self.load_account(account) or Account(name=account)
                    grant = grant_id(account, sub.term, sub.period)
                    acct.deposit(sub.credits, grant)
                    receipts.append(Deposit(grant, account, sub.credits))
                self.save(sub, acct, *receipts)
                return _view(sub)
        return self.retry(attempt)

    @guarded
    def schedule_changes(self, after: int, limit: int = 500
                         ) -> list[tuple[int, str, str, datetime | None]]:
        """``(notification id, account, what, renews_at)`` for subscription events
        after ``after`` (``what``: Opened, Started, Renewed or Lapsed): what the
        renewal clock needs to know when each subscription is next due."""
        page = self.recorder.select_notifications(
            start=after, limit=limit, topics=list(SCHEDULE_TOPICS), inclusive_of_start=False)
        out = []
        for n in page:
            e = self.mapper.to_domain_event(n)
            what = type(e).__name__
            out.append((n.id, getattr(e, "account", ""), what, getattr(e, "renews_at", None)))
        return out
