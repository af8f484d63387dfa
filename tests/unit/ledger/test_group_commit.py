"""Group commit in the ledger (in memory): many commands, one save, each with
the meaning it has alone; and the async front that forms the groups."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from eventsourcing.persistence import OperationalError

from bus.credits import MICRO
from bus.events import CreditsDebited, CreditsRefunded, CreditsReserved
from ledger import (InsufficientCredits, Ledger, Refund, Reserve, ReserveGroup, Settle,
                    UnknownReservation)

DEADLINE = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def hold(job_id: str, amount: int, account: str = "alice") -> Reserve:
    return Reserve(account, job_id, amount, key_id="k", zone="eu", deadline=DEADLINE)


def events_of(ledger: Ledger, kind: type) -> list:
    return [e for _, e, _ in ledger.bus_events(0) if isinstance(e, kind)]


def test_a_group_where_one_account_is_short_reserves_the_others_and_records_nothing_for_it(
        ledger):
    ledger.deposit("alice", 5 * MICRO)
    ledger.deposit("bob", MICRO)
    saves_before = ledger.max_notification_id()
    out = ledger.reserve_many([hold("a1", 2 * MICRO), hold("b1", 3 * MICRO, "bob"),
                               hold("a2", 3 * MICRO)])
    assert [o.status for o in (out[0], out[2])] == ["pending", "pending"]
    assert isinstance(out[1], InsufficientCredits) and out[1].account == "bob"
    assert ledger.account("alice").held == 5 * MICRO and ledger.account("alice").balance == 0
    assert ledger.account("bob").held == 0 and ledger.reservation("b1") is None
    assert [e.job_id for e in events_of(ledger, CreditsReserved)] == ["a1", "a2"]
    assert ledger.max_notification_id() == saves_before + 4  # 2 account + 2 reservation events


def test_a_short_account_refuses_only_what_no_longer_fits_in_group_order(ledger):
    ledger.deposit("alice", 5 * MICRO)
    out = ledger.reserve_many([hold("a1", 3 * MICRO), hold("a2", 3 * MICRO),
                               hold("a3", 2 * MICRO)])
    assert [type(o).__name__ for o in out] == ["ReservationView", "InsufficientCredits",
                                               "ReservationView"]
    assert out[1].available == 2 * MICRO


def test_the_same_job_twice_in_one_group_holds_once(ledger):
    ledger.deposit("alice", 10 * MICRO)
    first, again = ledger.reserve_many([hold("j1", 3 * MICRO), hold("j1", 3 * MICRO)])
    assert first == again
    assert ledger.account("alice").held == 3 * MICRO
    assert len(events_of(ledger, CreditsReserved)) == 1


def test_a_job_reserved_before_the_group_is_answered_with_its_reservation(ledger):
    ledger.deposit("alice", 3 * MICRO)
    held = ledger.reserve("alice", "j1", 3 * MICRO, key_id="k", zone="eu", deadline=DEADLINE)
    ledger.deposit("bob", 3 * MICRO)
    # alice is short now; the repeat is answered, not refused, and holds nothing more
    again, other = ledger.reserve_many([hold("j1", 3 * MICRO), hold("b1", MICRO, "bob")])
    assert again == held and other.status == "pending"
    ledger.deposit("alice", 10 * MICRO)  # now the repeat fits: its save conflicts, and the
    # group is retried whole, finding the hold
    again, other = ledger.reserve_many([hold("j1", MICRO), hold("b2", MICRO, "bob")])
    assert again == held and other.status == "pending"
    assert ledger.account("alice").held == 3 * MICRO and ledger.account("bob").held == 2 * MICRO
    assert len(events_of(ledger, CreditsReserved)) == 3


def test_a_group_resolution_with_a_repeated_outcome_resolves_once(ledger):
    ledger.deposit("alice", 10 * MICRO)
    ledger.reserve_many([hold("j1", 3 * MICRO), hold("j2", 2 * MICRO)])
    out = ledger.resolve_many([Settle("j1", MICRO, operator="op", node_id="n", points=5),
                               Refund("j1", "failed"),
                               Settle("j1", MICRO, operator="op", node_id="n", points=5),
                               Refund("j2", "expired")])
    assert [(o.status, o.already) for o in out] == [("settled", False), ("settled", True),
                                                    ("settled", True), ("refunded", False)]
    assert (out[1].debited, out[1].refunded) == (MICRO, 2 * MICRO)  # the earlier outcome
    view = ledger.account("alice")
    assert (view.held, view.spent, view.balance) == (0, MICRO, 9 * MICRO)
    assert ledger.account("op").rcp == 5
    assert [e.job_id for e in events_of(ledger, CreditsDebited)] == ["j1"]
    assert sorted(e.job_id for e in events_of(ledger, CreditsRefunded)) == ["j1", "j2"]
    assert all(o.already for o in ledger.resolve_many([Refund("j1", "x"), Refund("j2", "x")]))


def test_an_unknown_job_in_a_group_fails_alone(ledger):
    ledger.deposit("alice", 10 * MICRO)
    ledger.reserve_many([hold("j1", 3 * MICRO)])
    unknown, settled = ledger.resolve_many([Refund("nope", "x"), Settle("j1", MICRO)])
    assert isinstance(unknown, UnknownReservation) and not settled.already
    assert ledger.account("alice").spent == MICRO


def test_the_operator_paid_in_a_group_may_be_an_account_of_the_same_group(ledger):
    ledger.deposit("alice", 10 * MICRO)
    ledger.deposit("bob", 10 * MICRO)
    ledger.reserve_many([hold("a", 2 * MICRO), hold("b", 2 * MICRO, "bob")])
    ledger.resolve_many([Settle("a", MICRO, operator="bob", node_id="n", points=3),
                         Settle("b", MICRO, operator="alice", node_id="n", points=4)])
    alice, bob = ledger.account("alice"), ledger.account("bob")
    assert (alice.spent, alice.rcp, bob.spent, bob.rcp) == (MICRO, 4, MICRO, 3)


def test_a_group_crossing_the_snapshot_interval_reloads_the_same(ledger):
    ledger.deposit("alice", 1000 * MICRO)
    ledger.reserve_many([hold(f"j{i}", MICRO) for i in range(150)])
    ledger.resolve_many([Settle(f"j{i}", MICRO // 2) for i in range(150)])  # 300 more events
    expected = ledger.account("alice")
    ledger.repository.cache.cache.clear()
    assert ledger.account("alice") == expected
    assert (expected.held, expected.spent) == (0, 75 * MICRO)


def test_bad_commands_fail_when_made_before_joining_a_group():
    with pytest.raises(ValueError):
        hold("j", -1)
    with pytest.raises(ValueError):
        Settle("j", -1)
    with pytest.raises(ValueError):
        Settle("j", 1, points=-1)


async def test_concurrent_reserves_through_the_front_are_written_in_groups(ledger):
    ledger.deposit("alice", 10 * MICRO)
    front = ReserveGroup(ledger)
    alone = await front.reserve("alice", "first", MICRO, key_id="k", zone="eu",
                                deadline=DEADLINE)
    assert alone.status == "pending" and front.stats == (1, 1)  # alone: written at once
    calls = [front.reserve("alice", f"j{i}", MICRO, key_id="k", zone="eu", deadline=DEADLINE)
             for i in range(20)]
    out = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(not isinstance(o, Exception) for o in out) == 9  # 10 credits, 1 used above
    assert all(isinstance(o, InsufficientCredits) for o in out[9:])
    groups, reserved = front.stats
    assert reserved == 21 and groups < 21
    assert ledger.account("alice").balance == 0


async def test_an_outage_reaches_every_caller_of_its_group_and_changes_nothing(ledger):
    ledger.deposit("alice", 10 * MICRO)
    real = ledger.reserve_many
    down = True

    def flaky(requests):
        if down:
            raise OperationalError("database is down")
        return real(requests)

    ledger.reserve_many = flaky  # type: ignore[method-assign]
    front = ReserveGroup(ledger)
    out = await asyncio.gather(*(front.reserve("alice", f"j{i}", MICRO, key_id="k", zone="eu",
                                               deadline=DEADLINE) for i in range(5)),
                               return_exceptions=True)
    assert all(isinstance(o, OperationalError) for o in out)
    assert ledger.account("alice").held == 0
    down = False
    assert (await front.reserve("alice", "j0", MICRO, key_id="k", zone="eu",
                                deadline=DEADLINE)).status == "pending"
