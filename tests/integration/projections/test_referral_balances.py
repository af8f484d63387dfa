"""The referral read model (``referrals`` table, the referrer's ``rcp``), on
SQLite and PostgreSQL: who was referred when, and what each earned its referrer."""
from __future__ import annotations

import pytest

from bus.events import ReferralLinked, ReferralRewarded, ReferralRewardRevoked
from bus.publish import publish_event
from projections.balances import referrals_of
from tests import readmodels as views
from tests.integration.projecting import project

pytestmark = pytest.mark.asyncio


def reward(job: str, account: str, points: int) -> ReferralRewarded:
    return ReferralRewarded(referrer="rita", account=account, job_id=job, points=points,
                            zone="eu")


async def test_referred_accounts_and_their_rewards_are_listed_for_the_referrer(store, js):
    events = [ReferralLinked(account="ralph", referrer="rita", code="c1"),
              ReferralLinked(account="rosa", referrer="rita", code="c1"),
              ReferralLinked(account="ralph", referrer="mallory", code="c2"),  # first link stands
              reward("j1", "ralph", 7), reward("j2", "ralph", 5),
              ReferralRewardRevoked(referrer="rita", account="ralph", job_id="j2", points=5,
                                    zone="eu", reason="spot check failed")]
    last = 0
    for event in events:
        last = (await publish_event(js, event)).seq
    await project(store, js, last)
    rows = referrals_of(store, "rita")
    assert [(r["account"], r["rcp_earned"], r["jobs"]) for r in rows] == [
        ("ralph", 7, 1), ("rosa", 0, 0)]
    assert all(r["joined_at"] is not None for r in rows)
    assert referrals_of(store, "mallory") == []
    assert views.account_view(store, "rita").rcp == 7
