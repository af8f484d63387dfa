"""The audit's referral (I8) and subscription (I9) checks flag what the ledger
never writes: a self-referral, a second link, a reward paid twice or to the
wrong referrer or for an unpaid job, a period renewed twice."""
from datetime import datetime, timezone

from bus.events import (CreditsDebited, CreditsRefunded, CreditsReserved, ReferralLinked,
                        ReferralRewarded, SubscriptionRenewed)
from projections.invariants import Checker
from projections.replay import Delivery

DEADLINE = datetime(2030, 1, 1, tzinfo=timezone.utc)


def replayed(*events) -> list[str]:
    checker = Checker()
    checker.observe_raw([Delivery(i, f"events.global.{type(e).__name__}",
                                  e.model_dump_json().encode()) for i, e in enumerate(events, 1)])
    checker.finish(grace_s=3600)
    return [line for line in checker.v.lines if line.startswith(("I8", "I9"))]


def reward(job_id: str, referrer: str = "alice", points: int = 5) -> ReferralRewarded:
    return ReferralRewarded(referrer=referrer, account="bob", job_id=job_id, points=points,
                            zone="eu")


def test_a_self_referral_and_a_second_link_are_flagged():
    found = replayed(ReferralLinked(account="a", referrer="a", code="x"),
                     ReferralLinked(account="b", referrer="c", code="y"),
                     ReferralLinked(account="b", referrer="d", code="z"))
    assert len(found) == 2 and "itself" in found[0] and "linked again" in found[1]


def test_a_reward_for_an_unpaid_job_to_an_unlinked_referrer_twice_is_flagged():
    found = replayed(ReferralLinked(account="bob", referrer="alice", code="x"),
                     CreditsReserved(account="bob", job_id="j", key_id="k", amount=10, zone="eu",
                                     deadline=DEADLINE),
                     CreditsRefunded(account="bob", job_id="j", amount=10, zone="eu",
                                     reason="failed"),
                     reward("j"), reward("j", referrer="mallory"))
    assert any("referred by alice" in f for f in found)  # mallory is not bob's referrer
    assert any("paid 2 times" in f for f in found)
    assert any("not completed and paid" in f for f in found)


def test_a_period_renewed_twice_is_flagged():
    renewed = SubscriptionRenewed(account="a", plan="p", term=0, period=1, credits=1,
                                  renews_at=DEADLINE)
    assert len(replayed(renewed, renewed.model_copy(update={"event_id": "again"}))) == 1


def test_a_reward_for_a_debit_without_a_completion_is_flagged():
    # Paid, but no JobCompleted: a cancel's charge earns no referral reward.
    found = replayed(ReferralLinked(account="bob", referrer="alice", code="x"),
                     CreditsReserved(account="bob", job_id="j", key_id="k", amount=10, zone="eu",
                                     deadline=DEADLINE),
                     CreditsDebited(account="bob", job_id="j", amount=10, zone="eu"),
                     CreditsRefunded(account="bob", job_id="j", amount=0, zone="eu",
                                     reason="settled"), reward("j"))
    assert found == ["I8 job j: referral reward to alice, but the job was not completed and paid"]
