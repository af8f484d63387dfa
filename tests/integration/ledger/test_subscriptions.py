"""Subscriptions on a real ledger: the first period granted at the start, one
renewal per period however many clocks tick and restart, a cancelled one
lapsing at its period's end, and every grant a deposit the audit replays."""
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from bus.config import Settings
from bus.credits import MICRO
from bus.events import (SubscriptionCancelled, SubscriptionLapsed, SubscriptionRenewed,
                        SubscriptionStarted)
from ledger import Ledger
from ledger.renewals import RenewalClock
from tests.eventlog import read_log
from tests.integration.ledger.audited import audit_violations, relay_all

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
PERIOD = 60.0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def subscribed(ledger):
    ledger.define_plan("pro", 10 * MICRO, PERIOD)
    ledger.start_subscription("acme", "pro", now=T0)
    return ledger


def test_the_first_period_is_granted_at_the_start_and_each_later_one_once(subscribed):
    ledger, clock = subscribed, RenewalClock(subscribed)
    assert ledger.account("acme").deposited == 10 * MICRO
    assert clock.tick(at(59)) == 0
    clock.tick(at(60))
    clock.tick(at(61))
    assert ledger.account("acme").deposited == 20 * MICRO
    clock.tick(at(185))  # a clock that was away catches up: periods 2 and 3
    assert ledger.account("acme").deposited == 40 * MICRO
    view = ledger.subscription("acme")
    assert (view.status, view.period, view.renews_at) == ("active", 3, at(240))


def test_the_clock_reads_past_other_events_instead_of_rescanning_them(subscribed):
    clock = RenewalClock(subscribed)
    clock.tick(at(1))
    for i in range(5):
        subscribed.deposit(f"other{i}", MICRO)
    clock.tick(at(2))
    assert clock.position == subscribed.max_notification_id()


def test_two_clocks_and_a_restarted_one_renew_each_period_once(subscribed, tmp_path, fresh_nats):
    other = Ledger.open(Settings(data_dir=tmp_path, nats_url=fresh_nats.url))  # a 2nd process
    try:
        clocks = [RenewalClock(subscribed), RenewalClock(other)]
        with ThreadPoolExecutor(2) as pool:
            for seconds in (60, 120, 180):
                list(pool.map(lambda c: c.tick(at(seconds)), clocks))
        RenewalClock(other).tick(at(180))  # restarted: reads the schedule from the start
        assert subscribed.account("acme").deposited == 40 * MICRO
        assert other.subscription("acme").period == 3
    finally:
        other.close()


def test_a_cancelled_subscription_runs_out_its_period_then_lapses(subscribed):
    ledger, clock = subscribed, RenewalClock(subscribed)
    assert ledger.cancel_subscription("acme").status == "cancelled"
    clock.tick(at(59))
    assert ledger.subscription("acme").status == "cancelled"
    clock.tick(at(60))
    clock.tick(at(600))
    view = ledger.subscription("acme")
    assert (view.status, view.renews_at) == ("lapsed", None)
    assert ledger.account("acme").deposited == 10 * MICRO  # no credits after the cancel
    with pytest.raises(ValueError, match="no active subscription"):
        ledger.cancel_subscription("acme")
    again = ledger.start_subscription("acme", "pro", now=at(700))  # a new term
    assert (again.term, ledger.account("acme").deposited) == (1, 20 * MICRO)


def test_plans_and_starts_are_checked(subscribed):
    ledger = subscribed
    with pytest.raises(ValueError, match="exists already"):
        ledger.define_plan("pro", MICRO, PERIOD)
    with pytest.raises(ValueError, match="positive"):
        ledger.define_plan("free", 0, PERIOD)
    with pytest.raises(ValueError, match="no plan"):
        ledger.start_subscription("other", "gold")
    with pytest.raises(ValueError, match="subscribed to 'pro' already"):
        ledger.start_subscription("acme", "pro")
    with pytest.raises(ValueError, match="no subscription"):
        ledger.cancel_subscription("nobody")
    assert ledger.subscription("nobody") is None


async def test_subscription_events_reach_the_log_and_grants_replay_as_deposits(subscribed, js):
    ledger, clock = subscribed, RenewalClock(subscribed)
    clock.tick(at(60))
    ledger.cancel_subscription("acme")
    clock.tick(at(120))
    await relay_all(ledger, js)
    kinds = (SubscriptionStarted, SubscriptionRenewed, SubscriptionCancelled, SubscriptionLapsed)
    logged = [(s, e) for s, e in await read_log(js) if isinstance(e, kinds)]
    assert [type(e).__name__ for _, e in logged] == [k.__name__ for k in kinds]
    assert all(s.startswith("events.global.") for s, _ in logged)
    assert await audit_violations(ledger, js) == []  # I2 counts the 2 grants as deposits
