"""Referrals on a real ledger and a real nats-server: sign-up links, the
referrer's share of a referred account's paid completed jobs, paid in the same
settlement as the debit, taken back with a failed spot check, and replayed by
the audit."""
import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from bus import signing
from bus.credits import MICRO
from bus.events import JobFailed, ReferralRewarded, SpotChecked
from bus.pricing import Pricing
from bus.publish import publish_event
from ledger import Ledger, Settle
from ledger.referrals import ReferralError, code_for
from tests.eventlog import read_log
from tests.integration.ledger.audited import audit_violations, relay_all
from tests.integration.ledger.settling import USAGE, completed, reserve, resolved, run_and_seal

RATE = Pricing().referral_rate()


async def settle_completed(world, job_id: str, account: str):
    reserve(world.ledger, job_id, account)
    await run_and_seal(world, job_id, world.key)
    await publish_event(world.js, completed(world.key, job_id), "eu")
    return await resolved(world.ledger, job_id)


async def test_a_referred_accounts_completed_job_earns_its_referrer_rcp_in_the_same_settlement(
        world):
    ledger = world.ledger
    ledger.sign_up("bob", ledger.referral_code("alice"))
    view = await settle_completed(world, "rj1", "bob")
    share = view.debited * RATE // MICRO
    assert share > 0 and ledger.account("alice").rcp == share
    assert ledger.account("op").rcp == USAGE.completion_tokens  # the node's award is its own
    assert ledger.account("bob").rcp == 0
    await relay_all(ledger, world.js)
    rewards = [e for _, e in await read_log(world.js) if isinstance(e, ReferralRewarded)]
    assert [(e.referrer, e.account, e.job_id, e.points) for e in rewards] == [
        ("alice", "bob", "rj1", share)]
    assert await audit_violations(ledger, world.js) == []


async def test_a_failed_job_earns_the_referrer_nothing(world):
    ledger = world.ledger
    ledger.sign_up("bob", ledger.referral_code("alice"))
    reserve(ledger, "rj2", "bob")
    await publish_event(world.js, JobFailed(job_id="rj2", zone="eu", code="worker_error",
                                            message="boom"), "eu")
    assert (await resolved(ledger, "rj2")).status == "refunded"
    assert ledger.account("alice").rcp == 0
    assert await audit_violations(ledger, world.js) == []


async def test_an_unreferred_accounts_job_rewards_no_one(world):
    view = await settle_completed(world, "rj3", "carol")
    assert view.status == "settled" and ledger_rcp_total(world.ledger) == USAGE.completion_tokens


def ledger_rcp_total(ledger) -> int:
    return sum(a.rcp for a in ledger.accounts())


async def test_a_failed_spot_check_takes_the_referral_reward_back_with_the_debit(world):
    ledger = world.ledger
    ledger.sign_up("bob", ledger.referral_code("alice"))
    await settle_completed(world, "rj4", "bob")
    assert ledger.account("alice").rcp > 0
    await publish_event(world.js, SpotChecked(
        job_id="rj4", node_id=signing.node_id(world.key), zone="eu", attempt=1, passed=False,
        reason="output differs"), "eu")
    for _ in range(200):
        if ledger.reservation("rj4").status == "revoked":
            break
        await asyncio.sleep(0.02)
    assert ledger.reservation("rj4").status == "revoked"
    assert ledger.account("alice").rcp == 0 and ledger.account("op").rcp == 0
    assert ledger.account("bob").spent == 0
    assert await audit_violations(ledger, world.js) == []


def test_self_referral_second_link_cycle_and_unknown_codes_are_refused():
    ledger = Ledger()
    ledger.sign_up("b", ledger.referral_code("a"))
    with pytest.raises(ReferralError, match="own referral code"):
        ledger.sign_up("z", ledger.referral_code("z"))
    with pytest.raises(ReferralError, match="exists already"):
        ledger.sign_up("b", ledger.referral_code("c"))
    with pytest.raises(ReferralError, match="cycle"):
        ledger.sign_up("a", ledger.referral_code("b"))  # a -> b -> a
    ledger.sign_up("c", ledger.referral_code("b"))
    with pytest.raises(ReferralError, match="cycle"):
        ledger.sign_up("a", ledger.referral_code("c"))  # a -> c -> b -> a
    with pytest.raises(ReferralError, match="unknown referral code"):
        ledger.sign_up("d", code_for("never-shown"))  # derived, but never registered
    assert [ledger.referrer_of(x) for x in "abcz"] == [None, "a", "b", None]
    ledger.sign_up("z")  # its refused sign-up opened nothing: it may sign up without a code
    with pytest.raises(ReferralError, match="exists already"):
        ledger.sign_up("z", ledger.referral_code("a"))


def test_an_account_that_paid_before_it_signs_up_cannot_be_linked_later():
    ledger = Ledger()
    ledger.deposit("old", 5 * MICRO)
    with pytest.raises(ReferralError, match="exists already"):
        ledger.sign_up("old", ledger.referral_code("a"))
    assert ledger.referrer_of("old") is None


def test_a_referral_reward_is_paid_once_per_job_whatever_repeats():
    ledger = Ledger()
    ledger.sign_up("bob", ledger.referral_code("alice"))
    ledger.deposit("bob", 10 * MICRO)
    ledger.reserve("bob", "j", 2 * MICRO, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) + timedelta(minutes=1))
    settle = Settle("j", MICRO, operator="op", node_id="n", points=5, referral_rate=RATE)
    first, again = ledger.resolve_many([settle, settle])
    assert not first.already and again.already
    assert ledger.account("alice").rcp == RATE  # one credit debited: RATE points, once
