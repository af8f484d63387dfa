"""Account events: referrals and subscriptions (see ``docs/referrals.md``).

Like the money events (:mod:`bus.credit_events`) the ledger (``ledger/``) is
their only writer and its relay puts each on the log, on ``global``. The
credits a subscription grants travel as an ordinary ``CreditsDeposited`` beside
its ``SubscriptionStarted``/``SubscriptionRenewed``, so every balance rule
counts them as deposits; a referral reward is RCP on the referrer's account,
told apart from a node's ``RCPAwarded`` by its own type.
"""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from bus.bounds import MAX_MICRO, Id, Micro, Name, Text
from bus.contracts import Event

MAX_PERIOD_S = 10 * 366 * 86400  # a plan's period: at most ten years


class ReferralLinked(Event):
    """``account`` signed up with ``referrer``'s code: at most once per account,
    never to itself, never closing a cycle."""

    type: Literal["ReferralLinked"] = "ReferralLinked"
    account: Id
    referrer: Id
    code: Name


class ReferralRewarded(Event):
    """RCP for ``referrer`` on a paid, completed job of the account it referred
    (at most one per job)."""

    type: Literal["ReferralRewarded"] = "ReferralRewarded"
    referrer: Id
    account: Id  # the referred account, whose job paid
    job_id: Id
    points: Micro
    zone: Name


class ReferralRewardRevoked(Event):
    """The compensating event of a :class:`ReferralRewarded` whose job's work
    failed its spot check (its debit was reimbursed)."""

    type: Literal["ReferralRewardRevoked"] = "ReferralRewardRevoked"
    referrer: Id
    account: Id
    job_id: Id
    points: Micro
    zone: Name
    reason: Text


class PlanDefined(Event):
    """An admin-defined subscription plan: ``credits`` (micro) granted per period."""

    type: Literal["PlanDefined"] = "PlanDefined"
    plan: Name
    credits: int = Field(gt=0, le=MAX_MICRO)
    period_s: float = Field(gt=0, le=MAX_PERIOD_S)


class SubscriptionStarted(Event):
    """``account`` subscribed to ``plan``; the first period's credits are deposited
    with it. ``term`` counts the account's subscriptions (0 for the first)."""

    type: Literal["SubscriptionStarted"] = "SubscriptionStarted"
    account: Id
    plan: Name
    term: int = Field(ge=0)
    credits: int = Field(gt=0, le=MAX_MICRO)
    period_s: float = Field(gt=0, le=MAX_PERIOD_S)
    renews_at: datetime


class SubscriptionRenewed(Event):
    """Period ``period`` (1, 2, ...) of the account's term began; its credits are
    deposited with it. At most one per (account, term, period)."""

    type: Literal["SubscriptionRenewed"] = "SubscriptionRenewed"
    account: Id
    plan: Name
    term: int = Field(ge=0)
    period: int = Field(ge=1)
    credits: int = Field(gt=0, le=MAX_MICRO)
    renews_at: datetime


class SubscriptionCancelled(Event):
    """Asked to stop: the period paid for runs to its end, then it lapses."""

    type: Literal["SubscriptionCancelled"] = "SubscriptionCancelled"
    account: Id
    plan: Name
    term: int = Field(ge=0)
    ends_at: datetime


class SubscriptionLapsed(Event):
    """The term ended without renewal: no further credits."""

    type: Literal["SubscriptionLapsed"] = "SubscriptionLapsed"
    account: Id
    plan: Name
    term: int = Field(ge=0)


ACCOUNT_EVENTS = (ReferralLinked, ReferralRewarded, ReferralRewardRevoked, PlanDefined,
                  SubscriptionStarted, SubscriptionRenewed, SubscriptionCancelled,
                  SubscriptionLapsed)
