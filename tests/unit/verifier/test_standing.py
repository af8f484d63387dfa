"""A node's standing after its spot checks, and the echo model's judge."""
from __future__ import annotations

from datetime import datetime, timezone

from bus.config import Settings
from bus.events import ChatMessage, JobSubmitted, NodeSuspended, NodeVerified, Sampling
from bus.grants import NodeGrant
from verifier.judges import EchoJudge
from verifier.standing import after_check

SETTINGS = Settings(probation_checks=3, suspend_after_failures=2)


def grant(status: str = "probation", **kw) -> NodeGrant:
    return NodeGrant(node_id="n" * 64, node_name="n", operator="op", zone="eu", models=("m",),
                     status=status, **kw)


def test_a_node_on_probation_is_verified_after_enough_passed_checks():
    g, event = after_check(grant(passed=1), True, SETTINGS)
    assert (g.status, g.passed, event) == ("probation", 2, None)
    g, event = after_check(g, True, SETTINGS)
    assert g.status == "verified" and isinstance(event, NodeVerified) and event.passed == 3


def test_one_failed_check_suspends_a_node_on_probation():
    g, event = after_check(grant(passed=2), False, SETTINGS)
    assert g.status == "suspended" and isinstance(event, NodeSuspended)
    assert "on probation" in event.reason


def test_a_verified_node_is_suspended_at_the_failure_threshold_and_stays_suspended():
    g, event = after_check(grant("verified", passed=40), False, SETTINGS)
    assert (g.status, g.failed, event) == ("verified", 1, None)
    g, event = after_check(g, False, SETTINGS)
    assert g.status == "suspended" and isinstance(event, NodeSuspended)
    g, event = after_check(g, True, SETTINGS)
    assert (g.status, event) == ("suspended", None)


def job(content: str, max_tokens: int = 3) -> JobSubmitted:
    return JobSubmitted(job_id="j", account="-", key_id="-", model="echo", kind="chat",
                        messages=(ChatMessage(role="user", content=content),),
                        sampling=Sampling(max_tokens=max_tokens), zone="eu", route="zone",
                        deadline=datetime(2030, 1, 1, tzinfo=timezone.utc))


def test_the_echo_judge_passes_the_echo_and_fails_anything_else():
    judge = EchoJudge()
    assert judge.check(job("a  b c d"), "a b c", "length").passed
    assert judge.check(job("a b"), "a b", "stop").passed
    wrong = judge.check(job("a b c d"), "a b x", "length")
    assert not wrong.passed and '"expected": "a b c"' in wrong.evidence


def test_strikes_suspend_any_node_at_the_limit():
    from verifier.standing import after_strike
    settings = Settings(suspend_after_strikes=2)
    g, event = after_strike(grant("verified"), "forged signature", settings)
    assert (g.status, g.strikes, event) == ("verified", 1, None)
    g, event = after_strike(g, "forged signature", settings)
    assert g.status == "suspended" and "2 strikes, the last: forged signature" in event.reason
