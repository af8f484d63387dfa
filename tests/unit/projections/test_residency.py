"""I7 from the log: a strict subcloud's job that ran outside its zones, or whose
prompt or output is on the log, is reported; the same job kept in place passes."""
from datetime import datetime, timedelta, timezone

from bus.events import (ChatMessage, JobCompleted, JobStarted, JobSubmitted, Sampling,
                        SubcloudCreated, Usage, output_hash)
from projections.invariants import Checker
from projections.replay import Delivery


def strict_job(job_id: str) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="a", key_id="k", model="m", kind="chat",
                        messages=(ChatMessage(role="user", content="private"),),
                        sampling=Sampling(max_tokens=2), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=1),
                        subcloud="eu-only", strict=True)


def done(job_id: str, zone: str, text: str = "") -> JobCompleted:
    return JobCompleted(job_id=job_id, model="m", node_id="n", operator="o", zone=zone,
                        attempt=1, text=text, finish_reason="stop",
                        usage=Usage(prompt_tokens=1, completion_tokens=1), input_hash="i",
                        output_hash=output_hash("x"), signature="s")


def violations(*events) -> list[str]:
    checker = Checker()
    for seq, event in enumerate(events, 1):
        checker.observe(Delivery(seq, "events.eu.X", b""), event)
    return [line for line in checker.v.lines if line.startswith("I7")]


def test_a_strict_job_kept_in_its_zones_and_off_the_log_passes():
    sc = SubcloudCreated(name="eu-only", zones=("eu", "me"), strict=True)
    assert violations(sc, strict_job("j").without_content(),
                      JobStarted(job_id="j", node_id="n", zone="me", attempt=1),
                      done("j", "me")) == []


def test_a_strict_job_run_outside_its_zones_or_with_content_on_the_log_is_reported():
    sc = SubcloudCreated(name="eu-only", zones=("eu",), strict=True)
    found = violations(sc, strict_job("j"),
                       JobStarted(job_id="j", node_id="n", zone="na", attempt=1),
                       done("j", "na", text="secret"))
    assert len(found) == 4
    assert any("its prompt is on the log" in line for line in found)
    assert any("ran in zone na, outside eu" in line for line in found)
    assert any("its output is on the log" in line for line in found)
