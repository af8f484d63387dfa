"""The credit read models, applied with the job projection under one position,
against a real nats-server on SQLite and (when configured) PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bus.credits import MICRO
from bus.events import (ChatMessage, CreditsDebited, CreditsDeposited, CreditsRefunded,
                        CreditsReserved, JobCancelled, JobCompleted, JobStarted, JobSubmitted,
                        RCPAwarded, Sampling, Usage)
from bus.publish import publish_event
from projections.audit import snapshot
from projections.rebuild import rebuild
from tests import readmodels as views
from tests.integration.projecting import project

pytestmark = pytest.mark.asyncio
NOW = datetime.now(timezone.utc)
USAGE = Usage(prompt_tokens=10, completion_tokens=20)


async def publish(js, *events, zone: str = "eu") -> int:
    seq = 0
    for event in events:
        seq = (await publish_event(js, event, zone)).seq
    return seq


def reserved(job: str, amount: int = MICRO, account: str = "acme", key: str = "key-1",
             deadline: datetime = NOW + timedelta(minutes=5)) -> CreditsReserved:
    return CreditsReserved(account=account, job_id=job, key_id=key, amount=amount, zone="eu",
                           deadline=deadline)


def submitted(job: str, account: str = "acme", key: str = "key-1") -> JobSubmitted:
    return JobSubmitted(job_id=job, account=account, key_id=key, model="m", kind="chat",
                        messages=(ChatMessage(role="user", content="hi"),),
                        sampling=Sampling(max_tokens=32), zone="eu", route="zone",
                        deadline=NOW + timedelta(minutes=5))


def completed(job: str, usage: Usage = USAGE) -> JobCompleted:
    return JobCompleted(job_id=job, model="m", node_id="node-a", operator="op", zone="eu",
                        attempt=1, text="ok", finish_reason="stop", usage=usage,
                        input_hash="i", output_hash="o", signature="s")


def debited(job: str, amount: int, account: str = "acme") -> CreditsDebited:
    return CreditsDebited(account=account, job_id=job, amount=amount, zone="eu")


def refunded(job: str, amount: int, account: str = "acme") -> CreditsRefunded:
    return CreditsRefunded(account=account, job_id=job, amount=amount, zone="eu", reason="settled")


async def test_settled_job_moves_account_reservation_key_and_operator(store, js) -> None:
    last = await publish(
        js, CreditsDeposited(account="acme", amount=10 * MICRO), reserved("j1"), submitted("j1"),
        JobStarted(job_id="j1", node_id="node-a", zone="eu", attempt=1), completed("j1"),
        debited("j1", 300_000), refunded("j1", 700_000),
        RCPAwarded(operator="op", job_id="j1", node_id="node-a", points=20, zone="eu"))
    await project(store, js, last)

    acct = views.account_view(store, "acme")
    assert (acct.deposited, acct.held, acct.spent, acct.refunded, acct.rcp) == (
        10 * MICRO, 0, 300_000, 700_000, 0)
    assert acct.balance == 10 * MICRO - 300_000
    res = views.get_reservation(store, "j1")
    assert (res.status, res.amount, res.debited, res.refunded, res.key_id) == (
        "settled", MICRO, 300_000, 700_000, "key-1")
    assert res.resolved_at is not None and res.deadline.tzinfo is not None
    assert views.job_cost(store, "j1") == 300_000
    key = views.key_usage(store, "key-1")
    assert (key.account, key.jobs, key.prompt_tokens, key.completion_tokens, key.spent) == (
        "acme", 1, 10, 20, 300_000)
    assert views.operator_rcp(store, "op") == views.OperatorRcpRow("op", 20, 1)
    assert views.account_view(store, "op").rcp == 20
    assert views.get_job(store, "j1").status == "completed"
    assert views.position(store) == last  # one position for jobs and credits


async def test_pending_reservation_holds_credits_and_has_no_cost_yet(store, js) -> None:
    last = await publish(js, CreditsDeposited(account="acme", amount=5 * MICRO),
                         reserved("j1", 2 * MICRO), submitted("j1"))
    await project(store, js, last)

    acct = views.account_view(store, "acme")
    assert (acct.held, acct.balance) == (2 * MICRO, 3 * MICRO)
    assert views.get_reservation(store, "j1").status == "pending"
    assert views.job_cost(store, "j1") is None
    assert views.job_cost(store, "never-reserved") is None
    assert views.account_view(store, "nobody") is None


async def test_full_refund_closes_reservation_at_zero_cost(store, js) -> None:
    last = await publish(js, CreditsDeposited(account="acme", amount=MICRO), reserved("j1"),
                         submitted("j1"), refunded("j1", MICRO))
    await project(store, js, last)

    res = views.get_reservation(store, "j1")
    assert (res.status, res.debited, res.refunded) == ("refunded", 0, MICRO)
    assert views.job_cost(store, "j1") == 0
    acct = views.account_view(store, "acme")
    assert (acct.held, acct.spent, acct.refunded, acct.balance) == (0, 0, MICRO, MICRO)


async def test_expired_reservations_are_pending_ones_past_deadline_and_grace(store, js) -> None:
    last = await publish(
        js, CreditsDeposited(account="acme", amount=10 * MICRO),
        reserved("late", deadline=NOW - timedelta(minutes=2)),
        reserved("later", deadline=NOW - timedelta(minutes=1)),
        reserved("in-grace", deadline=NOW - timedelta(seconds=10)),
        reserved("future", deadline=NOW + timedelta(minutes=1)),
        reserved("closed", deadline=NOW - timedelta(minutes=3)), refunded("closed", MICRO))
    await project(store, js, last)

    assert views.expired_reservations(store, NOW, grace_s=30) == ["late", "later"]
    assert views.expired_reservations(store, NOW + timedelta(hours=1), grace_s=30) == [
        "late", "later", "in-grace", "future"]


async def test_usage_counts_each_jobs_first_outcome_once(store, js) -> None:
    # The relay may log a reservation after the job's own events: the key then
    # comes from the job row. A second result and a late cancel count nothing.
    last = await publish(
        js, CreditsDeposited(account="acme", amount=10 * MICRO),
        submitted("j1"), completed("j1"), reserved("j1"), completed("j1", Usage(
            prompt_tokens=99, completion_tokens=99)),
        JobCancelled(job_id="j1", zone="eu", reason="late", usage=USAGE),
        submitted("j2", key="key-2"), reserved("j2", key="key-2"),
        JobCancelled(job_id="j2", zone="eu", reason="client went away", model="m",
                     usage=Usage(prompt_tokens=3, completion_tokens=4)),
        debited("j2", 11_000), refunded("j2", MICRO - 11_000))
    await project(store, js, last)

    one, two = views.key_usage(store, "key-1"), views.key_usage(store, "key-2")
    assert (one.jobs, one.prompt_tokens, one.completion_tokens, one.spent) == (1, 10, 20, 0)
    assert (two.jobs, two.prompt_tokens, two.completion_tokens, two.spent) == (1, 3, 4, 11_000)


async def test_debit_and_refund_without_reservation_are_recorded_not_dropped(store, js) -> None:
    last = await publish(js, debited("ghost", 5), refunded("ghost", 7))
    await project(store, js, last)

    res = views.get_reservation(store, "ghost")
    assert (res.amount, res.debited, res.refunded, res.status) == (0, 5, 7, "settled")
    acct = views.account_view(store, "acme")
    assert (acct.held, acct.spent, acct.refunded) == (-12, 5, 7)


async def test_rebuild_of_jobs_and_credits_equals_the_live_model(stores, js) -> None:
    live = stores("live")
    events = [CreditsDeposited(account="acme", amount=50 * MICRO)]
    for i in range(20):
        job = f"job-{i:02d}"
        events += [reserved(job), submitted(job), completed(job)]
        events += [debited(job, 1000 * i), refunded(job, MICRO - 1000 * i)] if i % 4 else []
    last = await publish(js, *events)
    await project(live, js, last)

    rebuilt = stores("rebuilt")
    assert await rebuild(rebuilt, js, timeout=30) == last
    live_position, live_rows = snapshot(live)
    rebuilt_position, rebuilt_rows = snapshot(rebuilt)
    assert live_position == rebuilt_position == {"jobs": last}
    assert len(live_rows["reservations"]) == 20 and len(live_rows["jobs"]) == 20
    assert views.account_view(rebuilt, "acme") == views.account_view(live, "acme")
    assert views.key_usage(rebuilt, "key-1") == views.key_usage(live, "key-1")
    for i in range(20):
        job = f"job-{i:02d}"
        assert views.get_reservation(rebuilt, job) == views.get_reservation(live, job)
    for table in ("accounts", "reservations", "key_usage", "operator_rcp"):
        assert rebuilt_rows[table] == live_rows[table]
    with pytest.raises(ValueError, match="empty store"):
        await rebuild(live, js)


async def test_reopening_a_store_keeps_its_credit_tables(stores, js) -> None:
    first = stores("same")
    last = await publish(js, CreditsDeposited(account="acme", amount=MICRO))
    await project(first, js, last)
    first.close()
    again = stores("same")  # schema creation runs again: a no-op
    assert views.account_view(again, "acme").deposited == MICRO
