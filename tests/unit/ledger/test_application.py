"""The credit ledger's arithmetic and at-most-once rules, in memory (POPO)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bus.config import Settings
from bus.credits import MICRO
from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReserved,
                        RCPAwarded, parse_event)
from ledger import (AccountView, InsufficientCredits, Ledger, Resolution, UnknownReservation,
                    ledger_env)
from ledger.domain import account_id, replay
from ledger.outcomes import account_view

DEADLINE = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def reserve(ledger: Ledger, job_id: str, amount: int, account: str = "alice", **kw):
    kw = {"key_id": "key1", "zone": "eu", "deadline": DEADLINE, **kw}
    return ledger.reserve(account, job_id, amount, **kw)


def assert_balanced(view: AccountView) -> None:
    """I2: every deposited credit is available, held or spent; none negative."""
    assert view.deposited == view.balance + view.held + view.spent
    assert min(view.balance, view.held, view.spent) >= 0


def test_deposit_reserve_settle_arithmetic(ledger):
    assert ledger.deposit("alice", 10 * MICRO) == AccountView("alice", 10 * MICRO, 0, 0,
                                                              10 * MICRO, 0)
    view = reserve(ledger, "j1", 3 * MICRO, request_hash="h1")
    assert (view.status, view.amount, view.account, view.request_hash) == \
        ("pending", 3 * MICRO, "alice", "h1")
    assert ledger.account("alice") == AccountView("alice", 7 * MICRO, 3 * MICRO, 0, 10 * MICRO, 0)

    outcome = ledger.settle("j1", 1 * MICRO, operator="bob", node_id="n1", points=7)
    assert outcome == Resolution("j1", "settled", 1 * MICRO, 2 * MICRO, 7, already=False)
    assert ledger.account("alice") == AccountView("alice", 9 * MICRO, 0, 1 * MICRO, 10 * MICRO, 0)
    assert ledger.account("bob") == AccountView("bob", 0, 0, 0, 0, 7)
    assert ledger.reservation("j1").status == "settled"
    assert_balanced(ledger.account("alice"))


def test_refund_returns_the_whole_reservation(ledger):
    ledger.deposit("alice", 5 * MICRO)
    reserve(ledger, "j1", 2 * MICRO)
    outcome = ledger.refund("j1", "job_failed")
    assert outcome == Resolution("j1", "refunded", 0, 2 * MICRO, 0, already=False)
    assert ledger.account("alice") == AccountView("alice", 5 * MICRO, 0, 0, 5 * MICRO, 0)
    assert ledger.reservation("j1").refunded == 2 * MICRO


def test_deposit_must_be_positive_and_deposit_id_makes_it_idempotent(ledger):
    for amount in (0, -1):
        with pytest.raises(ValueError):
            ledger.deposit("alice", amount)
    assert ledger.account("alice").deposited == 0
    ledger.deposit("alice", 3 * MICRO, deposit_id="stripe-1")
    again = ledger.deposit("alice", 3 * MICRO, deposit_id="stripe-1")
    assert again.deposited == 3 * MICRO
    ledger.deposit("alice", 1 * MICRO, deposit_id="stripe-2")
    assert ledger.account("alice").deposited == 4 * MICRO


def test_reserve_refused_when_short_records_nothing(ledger):
    ledger.deposit("alice", 1 * MICRO)
    before = ledger.max_notification_id()
    with pytest.raises(InsufficientCredits) as refused:
        reserve(ledger, "j1", 1_500_000)
    assert (refused.value.account, refused.value.needed, refused.value.available) == \
        ("alice", 1_500_000, 1 * MICRO)
    assert "1.5 credits" in str(refused.value) and "1 available" in str(refused.value)
    assert ledger.max_notification_id() == before
    assert ledger.reservation("j1") is None
    with pytest.raises(InsufficientCredits):
        reserve(ledger, "j2", 1, account="nobody")
    assert ledger.account("nobody") == AccountView("nobody", 0, 0, 0, 0, 0)


def test_repeated_reserve_of_a_job_is_one_hold(ledger):
    ledger.deposit("alice", 10 * MICRO)
    first = reserve(ledger, "j1", 4 * MICRO, request_hash="h1")
    again = reserve(ledger, "j1", 4 * MICRO, request_hash="h1")
    other = reserve(ledger, "j1", 9 * MICRO, request_hash="h2")  # unchanged: caller compares
    assert first == again == other and other.request_hash == "h1"
    assert ledger.account("alice").held == 4 * MICRO


def test_repeated_reserve_is_answered_even_when_the_balance_is_now_short(ledger):
    ledger.deposit("alice", 4 * MICRO)
    first = reserve(ledger, "j1", 4 * MICRO)
    assert reserve(ledger, "j1", 4 * MICRO) == first


@pytest.mark.parametrize("first, second", [("settle", "settle"), ("settle", "refund"),
                                           ("refund", "settle"), ("refund", "refund")])
def test_a_reservation_resolves_once(ledger, first, second):
    ledger.deposit("alice", 10 * MICRO)
    reserve(ledger, "j1", 4 * MICRO)

    def resolve(how):
        if how == "settle":
            return ledger.settle("j1", 3 * MICRO, operator="bob", node_id="n1", points=5)
        return ledger.refund("j1", "cancelled")

    one = resolve(first)
    two = resolve(second)
    assert not one.already and two.already
    assert two == Resolution(one.job_id, one.status, one.debited, one.refunded, one.rcp, True)
    spent = 3 * MICRO if first == "settle" else 0
    assert ledger.account("alice") == AccountView("alice", 10 * MICRO - spent, 0, spent,
                                                  10 * MICRO, 0)
    assert ledger.account("bob").rcp == (5 if first == "settle" else 0)


def test_settle_caps_actual_at_reserved(ledger):
    ledger.deposit("alice", 10 * MICRO)
    reserve(ledger, "j1", 2 * MICRO)
    outcome = ledger.settle("j1", 5 * MICRO)
    assert (outcome.debited, outcome.refunded) == (2 * MICRO, 0)
    assert ledger.account("alice") == AccountView("alice", 8 * MICRO, 0, 2 * MICRO, 10 * MICRO, 0)


def test_rcp_not_awarded_to_the_jobs_own_account(ledger):
    ledger.deposit("alice", 10 * MICRO)
    reserve(ledger, "j1", 2 * MICRO)
    assert ledger.settle("j1", MICRO, operator="alice", node_id="n1", points=9).rcp == 0
    assert ledger.account("alice").rcp == 0
    reserve(ledger, "j2", 2 * MICRO)
    assert ledger.settle("j2", MICRO, operator="bob", node_id="n1", points=0).rcp == 0
    assert ledger.settle("j2", MICRO, operator="bob", node_id="n1", points=3).already
    assert ledger.account("bob") == AccountView("bob", 0, 0, 0, 0, 0)


def test_unknown_job_and_bad_amounts_raise(ledger):
    with pytest.raises(UnknownReservation):
        ledger.settle("nope", 1)
    with pytest.raises(KeyError):
        ledger.refund("nope", "x")
    ledger.deposit("alice", MICRO)
    with pytest.raises(ValueError):
        reserve(ledger, "j1", -1)
    reserve(ledger, "j1", 1)
    with pytest.raises(ValueError):
        ledger.settle("j1", -1)


def test_bus_events_are_the_exact_sequence_with_deterministic_ids(ledger):
    ledger.deposit("alice", 10 * MICRO)
    reserve(ledger, "j1", 4 * MICRO, request_hash="h1")
    reserve(ledger, "j2", 1 * MICRO, zone="na")
    ledger.settle("j1", 3 * MICRO, operator="bob", node_id="n1", points=5)
    ledger.refund("j2", "job_failed")
    ledger.settle("j2", 1)  # already refunded: nothing recorded

    events = ledger.bus_events(0)
    assert [type(e) for _, e, _ in events] == [
        CreditsDeposited, CreditsReserved, CreditsReserved,
        CreditsDebited, CreditsRefunded, RCPAwarded, CreditsRefunded]
    assert [e.zone for _, e, _ in events] == ["global", "eu", "na", "eu", "eu", "eu", "na"]
    assert {zone for _, _, zone in events} == {"global"}  # accounts are global: so is their log
    ids = [n for n, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    _, deposited, _ = events[0]
    assert (deposited.account, deposited.amount, deposited.zone) == ("alice", 10 * MICRO, "global")
    _, reserved, _ = events[1]
    assert (reserved.job_id, reserved.key_id, reserved.amount, reserved.deadline,
            reserved.request_hash) == ("j1", "key1", 4 * MICRO, DEADLINE, "h1")
    _, rcp, _ = events[5]
    assert (rcp.operator, rcp.job_id, rcp.node_id, rcp.points) == ("bob", "j1", "n1", 5)
    assert events[6][1].reason == "job_failed" and events[4][1].reason == "settled"

    # Per reservation: exactly one refund, at most one debit, debit + refund == reserved.
    for job, reserved_amount in (("j1", 4 * MICRO), ("j2", 1 * MICRO)):
        refunds = [e.amount for _, e, _ in events
                   if isinstance(e, CreditsRefunded) and e.job_id == job]
        debits = [e.amount for _, e, _ in events
                  if isinstance(e, CreditsDebited) and e.job_id == job]
        assert len(refunds) == 1 and len(debits) <= 1
        assert sum(refunds) + sum(debits) == reserved_amount

    # Deterministic: reading again gives the same ids and timestamps; the JSON
    # round-trips through the bus parser; `after` and `limit` page the log.
    again = ledger.bus_events(0)
    assert [e.model_dump() for _, e, _ in again] == [e.model_dump() for _, e, _ in events]
    assert all(parse_event(e.model_dump_json()) == e for _, e, _ in events)
    assert ledger.bus_events(ids[2], limit=2) == events[3:5]
    assert ledger.bus_events(ids[-1]) == []
    assert ledger.max_notification_id() >= ids[-1]


def test_settle_with_nothing_to_debit_still_writes_both_events(ledger):
    ledger.deposit("alice", MICRO)
    reserve(ledger, "j1", MICRO)
    ledger.settle("j1", 0)
    kinds = [(type(e).__name__, e.amount) for _, e, _ in ledger.bus_events(0)
             if getattr(e, "job_id", None) == "j1"]
    assert kinds == [("CreditsReserved", MICRO), ("CreditsDebited", 0),
                     ("CreditsRefunded", MICRO)]


def test_accounts_lists_every_known_account(ledger):
    ledger.deposit("carol", MICRO)
    ledger.deposit("alice", 2 * MICRO)
    reserve(ledger, "j1", MICRO, account="alice")
    ledger.settle("j1", MICRO, operator="bob", node_id="n1", points=1)
    views = ledger.accounts()
    assert [v.account for v in views] == ["alice", "bob", "carol"]
    for view in views:
        assert_balanced(view)


def test_long_histories_are_snapshotted_and_reload_correctly(ledger):
    ledger.deposit("alice", 1000 * MICRO)
    for i in range(150):  # 3 events per job: crosses the snapshot interval twice
        reserve(ledger, f"j{i}", 2 * MICRO)
        ledger.settle(f"j{i}", MICRO)
    expected = AccountView("alice", 850 * MICRO, 0, 150 * MICRO, 1000 * MICRO, 0)
    assert ledger.account("alice") == expected
    snapshots = list(ledger.snapshots.get(account_id("alice")))
    assert len(snapshots) >= 2
    # A cold load: the latest snapshot plus the events after it.
    latest = snapshots[-1]
    cold = replay(None, [latest, *ledger.events.get(account_id("alice"),
                                                    gt=latest.originator_version)])
    assert account_view("alice", cold) == expected


def test_env_is_the_only_source_of_persistence(monkeypatch, tmp_path):
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.sqlite")  # must be ignored
    assert type(Ledger().recorder).__module__ == "eventsourcing.popo"
    env = ledger_env(Settings(data_dir=tmp_path / "new", database_url=None))
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"
    assert env["SQLITE_DBNAME"] == str(tmp_path / "new" / "ledger.sqlite3")
    assert (tmp_path / "new").is_dir()
    pg = ledger_env(Settings(database_url="postgresql://u:p%40ss@db.example:6543/credits"
                                          "?options=-csearch_path%3Dt_ledger_1"))
    assert {k: pg[k] for k in ("PERSISTENCE_MODULE", "POSTGRES_DBNAME", "POSTGRES_HOST",
                               "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD",
                               "POSTGRES_SCHEMA")} == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": "credits",
        "POSTGRES_HOST": "db.example", "POSTGRES_PORT": "6543", "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": "p@ss", "POSTGRES_SCHEMA": "t_ledger_1"}
    assert int(pg["POSTGRES_LOCK_TIMEOUT"]) > 0
    assert "POSTGRES_SCHEMA" not in ledger_env(Settings(database_url="postgresql://h/db"))
