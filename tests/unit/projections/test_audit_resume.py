"""The invariant checker's state survives a checkpoint: loaded from its bytes,
a checker holds what it held, and folding more events into it ends where one
fed from the first event ends."""
from datetime import datetime, timedelta, timezone

import pytest
from nacl.signing import SigningKey

from bus.events import (CreditsDebited, JobSubmitted, ReferralLinked, ReferralRewarded,
                        SpotChecked, SubcloudCreated, SubscriptionLapsed, SubscriptionRenewed)
from bus.signing import node_id
from projections import audit_resume
from projections.audit_state import Job
from projections.invariants import Checker
from projections.replay import Delivery
from tests.histories import credit_history

NOW = datetime.now(timezone.utc)
KEYS = [SigningKey(bytes([i]) * 32) for i in range(1, 4)]


def deliveries(events, first: int = 1) -> list[Delivery]:
    return [Delivery(i, f"events.{zone}.{type(e).__name__}", e.model_dump_json().encode())
            for i, (zone, e) in enumerate(events, first)]


def log() -> list[tuple[str, object]]:
    """A consistent history and the facts only the residency, referral,
    subscription and spot-check folds keep."""
    history = credit_history(3, jobs=60, accounts=5, nodes=KEYS).events
    job = next(e for _, e in history if isinstance(e, JobSubmitted))
    return [("global", SubcloudCreated(name="vault", zones=("eu",), strict=True)),
            ("eu", job.model_copy(update={"job_id": "strict-1", "subcloud": "vault",
                                          "strict": True, "messages": None, "prompt": None})),
            ("global", ReferralLinked(account="acct-001", referrer="acct-002", code="c")),
            ("eu", ReferralRewarded(referrer="acct-002", account="acct-001", job_id="job-000001",
                                    points=4, zone="eu")),
            ("global", SubscriptionRenewed(account="acct-003", plan="p", term=1, period=2,
                                           credits=5, renews_at=NOW)),
            ("global", SubscriptionLapsed(account="acct-003", plan="p", term=1)),
            ("eu", SpotChecked(job_id="job-000002", node_id=node_id(KEYS[0]), zone="eu",
                               attempt=1, passed=False, reason="x",
                               occurred_at=NOW - timedelta(minutes=1))),
            *history]


def state(checker: Checker) -> dict:
    slots = lambda obj: {s: getattr(obj, s) for s in obj.__slots__}  # noqa: E731
    checks = checker.account_checks
    return {"events": checker.events, "jobs": {k: slots(j) for k, j in checker.jobs.items()},
            "accounts": {k: slots(a) for k, a in checker.accounts.items()},
            "residency": (checker.residency.subclouds, checker.residency.strict),
            "checks": (checks.referrer, checks.rewards, checks.revoked, checks.renewed,
                       checks.lapsed)}


def test_a_loaded_state_equals_the_dumped_one() -> None:
    checker = Checker()
    checker.observe_raw(deliveries(log()))
    assert checker.residency.strict and checker.account_checks.rewards  # the test sees them

    loaded = audit_resume.load(audit_resume.dump(checker))

    assert state(loaded) == state(checker)


def test_folding_the_rest_into_a_loaded_state_ends_as_one_pass_does() -> None:
    events = log()
    paid = next(e for _, e in events if isinstance(e, CreditsDebited))
    events.append(("eu", paid.model_copy(update={"event_id": "again"})))  # a violation late
    whole, half = Checker(), Checker()
    whole.observe_raw(deliveries(events))
    cut = len(events) // 2
    half.observe_raw(deliveries(events[:cut]))

    resumed = audit_resume.load(audit_resume.dump(half))
    resumed.observe_raw(deliveries(events[cut:], first=cut + 1))

    for checker in (whole, resumed):
        checker.finish(NOW, grace_s=60)
    assert resumed.v.lines == whole.v.lines and whole.v.lines
    assert state(resumed) == state(whole)


def test_the_state_of_an_audit_with_violations_is_not_kept() -> None:
    events = log()
    paid = next(e for _, e in events if isinstance(e, CreditsDebited))
    checker = Checker()
    checker.observe_raw(deliveries([*events, ("eu", paid.model_copy(
        update={"event_id": "again"}))]))
    with pytest.raises(ValueError, match="without violations"):
        audit_resume.dump(checker)


def test_the_fingerprint_names_the_shapes_it_depends_on(monkeypatch) -> None:
    before = audit_resume.fingerprint()
    monkeypatch.setattr(Job, "__slots__", (*Job.__slots__, "new_fact"))
    assert audit_resume.fingerprint() != before
