"""The ledger on real stores: a SQLite file and PostgreSQL (each PostgreSQL test
in a schema of its own, dropped afterwards). Concurrency is real: threads, and
two processes each with its own ``Ledger`` on the same database."""
from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from bus.config import Settings
from bus.credits import MICRO
from bus.events import CreditsDebited, CreditsRefunded
from ledger import AccountView, InsufficientCredits, Ledger
from tests.integration.ledgers import backend  # noqa: F401 - the fixture

DEADLINE = datetime(2030, 1, 1, tzinfo=timezone.utc)
COST = 3 * MICRO


def reserve(ledger: Ledger, job_id: str, amount: int = COST, account: str = "alice"):
    return ledger.reserve(account, job_id, amount, key_id="k1", zone="eu", deadline=DEADLINE,
                          request_hash=f"h-{job_id}")


def assert_balanced(view: AccountView) -> None:
    assert view.deposited == view.balance + view.held + view.spent  # I2
    assert min(view.balance, view.held, view.spent) >= 0


def test_arithmetic_survives_reopening(backend):
    ledger = backend.open()
    assert type(ledger.recorder).__module__ == f"eventsourcing.{backend.name}"
    ledger.deposit("alice", 10 * MICRO, deposit_id="d1")
    reserve(ledger, "j1")
    reserve(ledger, "j2")
    reserve(ledger, "j3")
    ledger.settle("j1", MICRO, operator="bob", node_id="n1", points=4)
    ledger.refund("j2", "job_failed")
    events = ledger.bus_events(0)
    ledger.close()

    again = backend.open()
    assert again.account("alice") == AccountView("alice", 10 * MICRO - MICRO - COST, COST, MICRO,
                                                 10 * MICRO, 0)
    assert again.account("bob").rcp == 4
    assert [again.reservation(j).status for j in ("j1", "j2", "j3")] == \
        ["settled", "refunded", "pending"]
    assert again.bus_events(0) == events  # same ids, same timestamps
    assert again.settle("j1", 0).already and again.refund("j2", "again").already
    assert again.deposit("alice", 10 * MICRO, deposit_id="d1").deposited == 10 * MICRO
    assert reserve(again, "j3").status == "pending" and again.account("alice").held == COST
    assert not again.settle("j3", COST).already
    assert [v.account for v in again.accounts()] == ["alice", "bob"]
    assert_balanced(again.account("alice"))


def test_many_events_reload_through_snapshots(backend):
    ledger = backend.open()
    ledger.deposit("alice", 1000 * MICRO)
    for i in range(80):  # 241 account events: one snapshot on the way
        reserve(ledger, f"j{i}", 2 * MICRO)
        ledger.settle(f"j{i}", MICRO)
    expected = ledger.account("alice")
    ledger.close()
    assert backend.open().account("alice") == expected == AccountView(
        "alice", 920 * MICRO, 0, 80 * MICRO, 1000 * MICRO, 0)


def test_concurrent_reserves_never_overspend(backend):
    ledger = backend.open()
    ledger.deposit("alice", 10 * COST)
    start = threading.Barrier(50)

    def attempt(i: int) -> bool:
        start.wait()
        try:
            reserve(ledger, f"job-{i}")
            return True
        except InsufficientCredits:
            return False

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert results.count(True) == 10 and results.count(False) == 40
    view = ledger.account("alice")
    assert (view.held, view.balance) == (10 * COST, 0)
    assert_balanced(view)


def _reserve_in_child(settings: Settings, first: int, start, results) -> None:
    """Child process: its own Ledger, 25 reserves from threads."""
    ledger = Ledger.open(settings)
    ok = refused = 0
    lock = threading.Lock()

    def attempt(i: int) -> None:
        nonlocal ok, refused
        try:
            reserve(ledger, f"job-{i}")
            with lock:
                ok += 1
        except InsufficientCredits:
            with lock:
                refused += 1

    start.wait(timeout=60)
    with ThreadPoolExecutor(25) as pool:
        list(pool.map(attempt, range(first, first + 25)))
    ledger.close()
    results.put((ok, refused))


def test_concurrent_reserves_from_two_processes_never_overspend(backend):
    ledger = backend.open()  # creates the tables before the children race
    ledger.deposit("alice", 10 * COST)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with pool threads
    start, results = ctx.Barrier(2), ctx.Queue()
    children = [ctx.Process(target=_reserve_in_child, args=(backend.settings, first, start,
                                                            results)) for first in (0, 25)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert sum(ok for ok, _ in outcomes) == 10
    assert sum(refused for _, refused in outcomes) == 40
    view = ledger.account("alice")
    assert (view.held, view.balance) == (10 * COST, 0)
    assert_balanced(view)
    assert len([j for j in range(50) if ledger.reservation(f"job-{j}")]) == 10


def test_settle_and_refund_racing_resolve_once(backend):
    ledger = backend.open()
    ledger.deposit("alice", 200 * COST)
    race = threading.Barrier(2)

    def settle(job: str):
        race.wait()
        return ledger.settle(job, MICRO, operator="bob", node_id="n1", points=1)

    def refund(job: str):
        race.wait()
        return ledger.refund(job, "cancelled")

    settled = 0
    with ThreadPoolExecutor(2) as pool:
        for i in range(200):
            job = f"race-{i}"
            reserve(ledger, job)
            one, two = pool.submit(settle, job), pool.submit(refund, job)
            outcomes = [one.result(timeout=30), two.result(timeout=30)]
            assert sorted(o.already for o in outcomes) == [False, True], outcomes
            winner = next(o for o in outcomes if not o.already)
            assert all(o.status == winner.status for o in outcomes)
            assert winner.debited + winner.refunded == COST
            res = ledger.reservation(job)
            assert res.status == winner.status and res.debited + res.refunded == COST
            settled += winner.status == "settled"

    view = ledger.account("alice")
    assert view.held == 0 and view.spent == settled * MICRO
    assert ledger.account("bob").rcp == settled
    assert_balanced(view)
    refunds: dict[str, int] = {}
    debits: dict[str, int] = {}
    after = 0
    while batch := ledger.bus_events(after, limit=500):
        for _, event, _ in batch:
            if isinstance(event, CreditsRefunded):
                assert event.job_id not in refunds  # exactly one refund per reservation
                refunds[event.job_id] = event.amount
            elif isinstance(event, CreditsDebited):
                assert event.job_id not in debits  # at most one debit
                debits[event.job_id] = event.amount
        after = batch[-1][0]
    assert len(refunds) == 200 and len(debits) == settled
    assert all(refunds[j] + debits.get(j, 0) == COST for j in refunds)
