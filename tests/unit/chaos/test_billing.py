"""The soak's billing check: each job is charged what its first outcome asks."""
from datetime import datetime, timedelta, timezone

from bus.events import CreditsDebited, CreditsReserved, JobCancelled, JobExpired, JobFailed, Usage
from bus.pricing import Pricing
from tests.chaos import billing

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
USED = Usage(prompt_tokens=10, completion_tokens=5)
COST = Pricing().cost("m", USED)


def reserved(job: str) -> CreditsReserved:
    return CreditsReserved(account="a", job_id=job, key_id="k", amount=10 * COST, zone="eu",
                           deadline=NOW + timedelta(seconds=20), occurred_at=NOW)


def cancelled(job: str, after_s: float = 1.0) -> JobCancelled:
    return JobCancelled(job_id=job, zone="eu", reason="cancelled", model="m", node_id="n",
                        usage=USED, occurred_at=NOW + timedelta(seconds=after_s))


def debited(job: str, amount: int) -> CreditsDebited:
    return CreditsDebited(account="a", job_id=job, amount=amount, zone="eu")


def judged(*events):
    return billing.judge([("s", e) for e in events], grace_s=2)


def test_a_cancel_charged_what_was_produced_passes():
    result = judged(reserved("j"), cancelled("j"), debited("j", COST))
    assert result.checked == 1 and not result.wrong and not result.late


def test_a_cancel_refunded_in_full_by_the_sweep_is_wrong():
    result = judged(reserved("j"), cancelled("j"), JobExpired(job_id="j", zone="eu"))
    assert result.wrong == [f"j: charged 0, its outcome asks {COST}"]


def test_an_outcome_logged_at_the_deadline_may_lose_to_the_sweep():
    result = judged(reserved("j"), cancelled("j", after_s=21), JobExpired(job_id="j", zone="eu"))
    assert result.late == ["j"] and not result.wrong


def test_a_failed_or_expired_job_charged_anything_is_wrong():
    result = judged(reserved("f"), JobFailed(job_id="f", zone="eu", code="x", message="x"),
                    debited("f", 1), reserved("e"), JobExpired(job_id="e", zone="eu"))
    assert result.wrong == ["f: charged 1, its outcome asks 0"]
