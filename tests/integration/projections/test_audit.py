"""``inferbus audit`` on a real nats-server, with the live read model on SQLite
and (when configured) PostgreSQL: a consistent history passes; each kind of
breach fails with a line that names the invariant, the job or account, and
what was expected against what was found."""
from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from bus.credits import MICRO
from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReimbursed,
                        CreditsReserved, Event, JobCancelled, JobCompleted, JobFailed, RCPAwarded,
                        RCPRevoked, SpotChecked, Usage, output_hash)
from bus.leases import Lease
from bus.pricing import Pricing, prompt_tokens_bound
from bus.publish import publish_event
from bus.signing import load_or_create_key, node_id, sign_result
from ledger import Ledger
from ledger.relay import Relay
from ledger.settlement import Settlement
from projections.audit import AuditReport, audit
from tests.histories import USAGE, History, credit_history, signed_job
from tests.integration.projecting import project

pytestmark = pytest.mark.asyncio
NOW = datetime.now(timezone.utc)


@pytest.fixture
def keys(tmp_path: Path) -> list[SigningKey]:
    return [load_or_create_key(tmp_path / "nodes" / f"node-{i}.key") for i in range(3)]


async def publish(js, events: list[tuple[str, Event]]) -> int:
    seq = 0
    for zone, event in events:
        seq = (await publish_event(js, event, zone)).seq
    return seq


@dataclasses.dataclass
class World:
    js: object
    stores: object
    keys: list[SigningKey]
    history: History

    def paid_job(self) -> tuple[str, str]:
        """(job id, account) of a completed job that was debited and awarded RCP."""
        awarded = {e.job_id for _, e in self.history.events if isinstance(e, RCPAwarded)}
        for _, e in self.history.events:
            if isinstance(e, CreditsDebited) and e.job_id in awarded:
                return e.job_id, e.account
        raise AssertionError("history without a paid job")

    async def audit(self, *extra: tuple[str, Event], ledger: list | None = None,
                    parallel: bool = True) -> AuditReport:
        last = await publish(self.js, list(self.history.events) + list(extra))
        live = self.stores("live")
        await project(live, self.js, last)
        return await audit(self.js, live, ledger, parallel=parallel)


@pytest.fixture
def world(js, stores, keys) -> World:
    return World(js, stores, keys, credit_history(11, jobs=40, accounts=6, nodes=keys))


def violations(report: AuditReport, rule: str) -> list[str]:
    assert not report.ok, report.render()
    assert "FAILED" in report.render()
    return [v for v in report.violations if v.startswith(rule + " ")]


async def test_consistent_randomized_history_passes(js, stores, keys) -> None:
    history = credit_history(7, jobs=300, accounts=12, nodes=keys)
    last = await publish(js, history.events)
    live = stores("live")
    await project(live, js, last)

    report = await audit(js, live, list(history.ledger.values()))

    assert report.ok, report.render()
    assert (report.events, report.live_position, report.stream_last) == (last, last, last)
    assert report.reservations >= 250 and report.open_reservations > 0
    assert report.accounts == len(history.ledger) and report.ledger_accounts == report.accounts
    assert "OK: I1 I2 I3 I4 I5 I6 I7 I8 I9 hold" in report.render()


async def test_in_process_and_parallel_rebuilds_report_alike(world: World) -> None:
    job, account = world.paid_job()
    double = ("eu", CreditsDebited(account=account, job_id=job, amount=5, zone="eu"))
    parallel = await world.audit(double)
    in_process = await audit(world.js, world.stores("live"), parallel=False)
    assert parallel.violations == in_process.violations and parallel.violations
    assert (parallel.events, parallel.jobs) == (in_process.events, in_process.jobs)


async def test_double_debit_is_reported(world: World) -> None:
    job, account = world.paid_job()
    report = await world.audit(("eu", CreditsDebited(account=account, job_id=job, amount=5,
                                                     zone="eu")))
    found = violations(report, "I1")
    assert any(f"job {job}: debited twice" in v for v in found), found
    assert any(f"job {job}: debit of 5" in v and "after its refund closed" in v for v in found)


async def test_reservation_never_refunded_is_reported(world: World) -> None:
    stale = CreditsReserved(account="acct-000", job_id="stuck", key_id="k", amount=1000,
                            zone="eu", deadline=NOW - timedelta(hours=1))
    report = await world.audit(("eu", stale))
    assert any(v.startswith("I1 job stuck: reservation of 1000 never closed")
               for v in violations(report, "I1"))


async def test_refund_that_breaks_debit_plus_refund_is_reported(world: World) -> None:
    report = await world.audit(*signed_job(world.keys[0], "greedy", "acme", "op-0", debit=300_000,
                                           award_to=("op-0", node_id(world.keys[0])),
                                           reserve=MICRO)[:-2],
                               ("eu", CreditsRefunded(account="acme", job_id="greedy",
                                                      amount=800_000, zone="eu", reason="x")))
    assert "I1 job greedy: debit 300000 + refund 800000 != reserved 1000000" in \
        violations(report, "I1")


async def test_rcp_to_another_node_or_operator_is_reported(world: World) -> None:
    honest, other = world.keys[0], world.keys[1]
    report = await world.audit(
        *signed_job(honest, "stolen", "acme", "op-0", award_to=("op-0", node_id(other))),
        *signed_job(honest, "rerouted", "acme", "op-0", award_to=("mallory", node_id(honest))))
    found = violations(report, "I4")
    assert any(v.startswith("I4 job stolen: RCP awarded to operator op-0 node "
                            f"{node_id(other)[:16]}, expected operator op-0") for v in found)
    assert any(v.startswith("I4 job rerouted: RCP awarded to operator mallory") for v in found)


async def test_rcp_awarded_twice_is_reported(world: World) -> None:
    key = world.keys[0]
    events = signed_job(key, "twice", "acme", "op-0", award_to=("op-0", node_id(key)))
    report = await world.audit(*events, events[-1][0:1] + (events[-1][1].model_copy(
        update={"event_id": "another-award"}),))
    assert any(v.startswith("I4 job twice: RCP awarded 2 times") for v in violations(report, "I4"))


async def test_rcp_on_a_self_job_is_reported(world: World) -> None:
    key = world.keys[0]
    report = await world.audit(*signed_job(key, "own", "selfie", "selfie",
                                           award_to=("selfie", node_id(key))))
    assert "I4 job own: RCP awarded on a self-job (operator selfie is the job's own account)" in \
        violations(report, "I4")


async def test_paid_result_with_a_bad_signature_is_reported(world: World) -> None:
    key = world.keys[0]
    report = await world.audit(*signed_job(key, "forged", "acme", "op-0", forged=True,
                                           award_to=("op-0", node_id(key))))
    assert [v for v in violations(report, "I5")] == [
        f"I5 job forged: paid JobCompleted at seq {report.stream_last - 3} has no valid "
        f"signature of node {node_id(key)}"]


async def test_unpaid_result_with_a_bad_signature_is_fine(world: World) -> None:
    # Settlement refunds an unverifiable result in full and awards nothing.
    report = await world.audit(*signed_job(world.keys[0], "refused", "acme", "op-0", debit=0,
                                           forged=True))
    assert report.ok, report.render()


async def test_late_result_of_a_fenced_node_before_the_paid_one_is_fine(world: World) -> None:
    # A node whose lease was taken over published anyway; settlement set it aside
    # and paid the holder's result, which the log holds after it.
    holder, late = world.keys[0], world.keys[1]
    events = signed_job(holder, "taken", "acme", "op-0", award_to=("op-0", node_id(holder)))
    stale = signed_job(late, "taken", "acme", "op-1")[3]
    report = await world.audit(*events[:3], stale, *events[3:])
    assert report.ok, report.render()


async def test_balance_below_zero_is_reported(world: World) -> None:
    report = await world.audit(
        ("global", CreditsDeposited(account="broke", amount=1000)),
        ("eu", CreditsReserved(account="broke", job_id="overdraw", key_id="k", amount=5000,
                               zone="eu", deadline=NOW + timedelta(minutes=5))))
    assert any(v.startswith("I2 account broke: balance -4000, held 5000 after reserving 5000 "
                            "for job overdraw") for v in violations(report, "I2"))


async def test_live_row_that_differs_from_the_rebuild_is_reported(world: World) -> None:
    report = await world.audit()
    assert report.ok, report.render()
    job, account = world.paid_job()
    live = world.stores("live")
    with live.transaction() as tx:  # a lost write, a stray one and an edit
        tx.execute("UPDATE accounts SET spent = spent + 1 WHERE account = ?", (account,))
        tx.execute("DELETE FROM reservations WHERE job_id = ?", (job,))
        tx.execute("UPDATE jobs SET status = 'failed' WHERE job_id = ?", (job,))
    report = await audit(world.js, live)
    found = violations(report, "I3")
    assert f"I3 table reservations row {job}: in the rebuild, missing from the live store" in found
    assert f"I3 table jobs row {job}: status live='failed' rebuilt='completed'" in found
    assert any(v.startswith(f"I3 table accounts row {account}: spent live=") for v in found)


async def test_ledger_account_that_differs_is_reported(world: World) -> None:
    ledger = list(world.history.ledger.values())
    ledger[0] = dataclasses.replace(ledger[0], balance=ledger[0].balance + 1)
    report = await world.audit(ledger=ledger)
    name, balance = ledger[0].account, ledger[0].balance
    assert violations(report, "ledger") == [f"ledger account {name}: balance {balance} in the "
                                            f"ledger, {balance - 1} replayed from the log"]


async def test_breach_logged_after_the_live_position_is_still_found(world: World) -> None:
    last = await publish(world.js, world.history.events)
    live = world.stores("live")
    await project(live, world.js, last)
    job, account = world.paid_job()
    await publish(world.js, [("eu", CreditsDebited(account=account, job_id=job, amount=1,
                                                   zone="eu"))])
    for parallel in (True, False):
        report = await audit(world.js, live, parallel=parallel)
        assert (report.live_position, report.stream_last) == (last, last + 1)
        assert not [v for v in report.violations if v.startswith("I3")]  # compared at `last`
        assert any(f"job {job}: debited twice" in v for v in violations(report, "I1"))


async def test_empty_log_and_malformed_events_pass_and_are_counted(js, store) -> None:
    assert (await audit(js, store)).ok
    await js.publish("events.eu.JobSubmitted", b"{broken")
    await project(store, js, 1)
    report = await audit(js, store)
    assert report.ok and (report.events, report.malformed) == (1, 1), report.render()


def sealed_by(outcome) -> Lease | None:
    """The lease a worker seals before publishing its outcome (bus.leases)."""
    node = getattr(outcome, "node_id", None)
    return node and Lease(node_id=node, attempt=1, message=1, until=0, done=True)


async def test_history_written_by_the_ledger_and_settlement_passes(js, stores, keys) -> None:
    """The real ledger, settlement policy and relay wrote these money events."""
    ledger, pricing, rng = Ledger(), Pricing(), random.Random(5)
    settlement, operators = Settlement(ledger, pricing), ["op-0", "op-1", "acme"]
    for account in ("acme", "zoe"):
        ledger.deposit(account, 20 * MICRO)
    after = 0
    for i in range(30):
        job, account, n = f"job-{i}", rng.choice(["acme", "zoe"]), rng.randrange(3)
        sub = signed_job(keys[n], job, account, operators[n])[2][1]
        usage = Usage(prompt_tokens=rng.randint(1, 30), completion_tokens=rng.randint(0, 32))
        ledger.reserve(account, job, pricing.worst_case("m", prompt_tokens_bound(
            sub.messages, None), sub.sampling.max_tokens), key_id=sub.key_id, zone="eu",
            deadline=sub.deadline)
        after = await Relay(ledger, js).once(after)
        kind = rng.choice(["done", "done", "done", "forged", "cancelled", "failed"])
        sig = sign_result(keys[n], job, operators[n], 1, 1, sub.input_hash(), output_hash("ok"),
                          usage if kind != "forged" else USAGE)
        outcome = {
            "cancelled": JobCancelled(job_id=job, zone="eu", reason="stop", model="m",
                                      usage=usage),
            "failed": JobFailed(job_id=job, zone="eu", code="model_error", message="boom")}.get(
            kind, JobCompleted(job_id=job, model="m", node_id=node_id(keys[n]),
                               operator=operators[n], zone="eu", attempt=1, text="ok",
                               finish_reason="stop", usage=usage, input_hash=sub.input_hash(),
                               output_hash=output_hash("ok"), signature=sig))
        await publish(js, [("eu", sub), ("eu", outcome)])
        settlement.apply(outcome, sealed_by(outcome))
        after = await Relay(ledger, js).once(after)
    last = (await js.stream_info("EVENTS")).state.last_seq
    live = stores("live")
    await project(live, js, last)

    report = await audit(js, live, ledger.accounts())

    assert report.ok, report.render()
    assert report.reservations == 30 and report.ledger_accounts == 4


def failed_check(key: SigningKey, job: str, *, minutes_ago: float = 10) -> tuple[str, Event]:
    return ("eu", SpotChecked(job_id=job, node_id=node_id(key), zone="eu", attempt=1,
                              passed=False, reason="not the model's output",
                              occurred_at=NOW - timedelta(minutes=minutes_ago)))


def compensation(key: SigningKey, job: str, account: str) -> list[tuple[str, Event]]:
    return [("eu", CreditsReimbursed(account=account, job_id=job, amount=250_000, zone="eu",
                                     reason="spot check failed")),
            ("eu", RCPRevoked(operator="op-0", job_id=job, node_id=node_id(key), points=20,
                              zone="eu", reason="spot check failed"))]


async def test_a_job_that_failed_its_check_and_stays_paid_is_reported(world: World) -> None:
    key = world.keys[0]
    report = await world.audit(*signed_job(key, "wrong", "acme", "op-0",
                                           award_to=("op-0", node_id(key))),
                               failed_check(key, "wrong"))
    assert any(v.startswith("I6 job wrong: failed its spot check")
               and v.endswith("250000 stays debited and its RCP stays awarded")
               for v in violations(report, "I6"))


async def test_a_failed_check_compensated_by_reimbursement_and_revocation_passes(
        world: World) -> None:
    key = world.keys[0]
    report = await world.audit(*signed_job(key, "wrong", "acme", "op-0",
                                           award_to=("op-0", node_id(key))),
                               failed_check(key, "wrong"), *compensation(key, "wrong", "acme"))
    assert report.ok, report.render()


async def test_a_compensation_without_a_failed_check_is_reported(world: World) -> None:
    key = world.keys[0]
    report = await world.audit(*signed_job(key, "fine", "acme", "op-0",
                                           award_to=("op-0", node_id(key))),
                               *compensation(key, "fine", "acme"))
    assert any(v.startswith("I6 job fine: compensated") for v in violations(report, "I6"))


async def test_rcp_for_work_on_probation_is_reported(world: World) -> None:
    key = world.keys[0]
    events = signed_job(key, "newbie", "acme", "op-0", award_to=("op-0", node_id(key)))
    events = [(z, e.model_copy(update={"probation": True}) if isinstance(e, JobCompleted) else e)
              for z, e in events]
    report = await world.audit(*events)
    assert any(v.startswith("I5 job newbie: RCP awarded for the work of node")
               for v in violations(report, "I5"))
