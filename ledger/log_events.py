"""The ledger's stored money events as bus contracts, for the relay onto the log.

Only ``Account`` events move money; each maps to exactly one bus event whose
``event_id`` is derived from the stored event's identity (aggregate id and
version), so republishing the same stored event is deduplicated by JetStream,
and whose ``occurred_at`` is the stored event's timestamp.
"""
from __future__ import annotations

from typing import Any, Callable
from uuid import uuid5

from eventsourcing.utils import get_topic

from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReimbursed,
                        CreditsReserved, Event, PlanDefined, RCPAwarded, RCPRevoked,
                        ReferralLinked, ReferralRewarded, ReferralRewardRevoked,
                        SubscriptionCancelled, SubscriptionLapsed, SubscriptionRenewed,
                        SubscriptionStarted)
from bus.subjects import GLOBAL
from ledger.domain import Account
from ledger.plans import Plan, Subscription


def bus_event_id(originator_id: Any, version: int) -> str:
    """The same stored event always gets the same id."""
    return uuid5(originator_id, str(version)).hex


def _base(e: Any) -> dict[str, Any]:
    return {"event_id": bus_event_id(e.originator_id, e.originator_version),
            "occurred_at": e.timestamp}


def _deposited(e: Any) -> tuple[Event, str]:
    return CreditsDeposited(**_base(e), account=e.account, amount=e.amount,
                            zone=GLOBAL), GLOBAL


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


def _reimbursed(e: Any) -> tuple[Event, str]:
    return CreditsReimbursed(**_base(e), account=e.account, job_id=e.job_id, amount=e.amount,
                             zone=e.zone, reason=e.reason), e.zone


def _rcp_revoked(e: Any) -> tuple[Event, str]:
    return RCPRevoked(**_base(e), operator=e.account, job_id=e.job_id, node_id=e.node_id,
                      points=e.points, zone=e.zone, reason=e.reason), e.zone


def _global(contract: type[Event], **renamed: str) -> Callable[[Any], tuple[Event, str]]:
    """A mapper of a stored referral or subscription event whose fields are the
    contract's (``renamed``: contract field -> stored field), logged on ``global``."""
    fields = [f for f in contract.model_fields if f not in ("type", "event_id", "occurred_at")]

    def mapper(e: Any) -> tuple[Event, str]:
        return contract(**_base(e), **{f: getattr(e, renamed.get(f, f)) for f in fields}), GLOBAL
    return mapper


# Stored topic -> mapper. Topics name classes in ledger.domain: renaming one
# would orphan its stored history.
MAPPERS: dict[str, Callable[[Any], tuple[Event, str]]] = {
    get_topic(Account.Deposited): _deposited,
    get_topic(Account.Reserved): _reserved,
    get_topic(Account.Debited): _debited,
    get_topic(Account.Refunded): _refunded,
    get_topic(Account.RCPAwarded): _rcp_awarded,
    get_topic(Account.Reimbursed): _reimbursed,
    get_topic(Account.RCPRevoked): _rcp_revoked,
    # Referrals: the stored events name the referrer ``account`` (the event's account).
    get_topic(Account.ReferralLinked): _global(ReferralLinked),
    get_topic(Account.ReferralRewarded): _global(ReferralRewarded, referrer="account",
                                                 account="referred"),
    get_topic(Account.ReferralRewardRevoked): _global(ReferralRewardRevoked, referrer="account",
                                                      account="referred"),
    get_topic(Plan.Defined): _global(PlanDefined, plan="name"),
    get_topic(Subscription.Started): _global(SubscriptionStarted),
    get_topic(Subscription.Renewed): _global(SubscriptionRenewed),
    get_topic(Subscription.Cancelled): _global(SubscriptionCancelled),
    get_topic(Subscription.Lapsed): _global(SubscriptionLapsed),
}
MONEY_TOPICS: tuple[str, ...] = tuple(MAPPERS)


def to_bus_event(topic: str, domain_event: Any) -> tuple[Event, str]:
    """``(contract, zone to publish on)`` for a stored money event: always
    ``global``, since accounts are global (the contract keeps the job's zone):
    the relay appends to the one global log, in one atomic batch, whatever
    regions the jobs ran in."""
    event, _ = MAPPERS[topic](domain_event)
    return event, GLOBAL
