"""The job lifecycle every job read model follows: which event moves a job to
which status, and the one dispatch from events to a read model's rows."""
from __future__ import annotations

from datetime import datetime, timezone

from bus.events import (ApiKeyIssued, JobCancelled, JobCompleted, JobEscalated, JobExpired,
                        JobFailed, JobStarted, JobSubmitted, Sampling, Usage)
from projections import lifecycle

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
SUBMITTED = JobSubmitted(job_id="j", account="a", key_id="k", model="m", kind="completion",
                         prompt="hi", sampling=Sampling(max_tokens=1), zone="eu", route="zone",
                         deadline=NOW)
COMPLETED = JobCompleted(job_id="j", model="m", node_id="n", operator="o", zone="eu", attempt=1,
                         text="x", finish_reason="stop",
                         usage=Usage(prompt_tokens=1, completion_tokens=1), input_hash="i",
                         output_hash="o", signature="s")


class Recorder:
    """A JobRows that writes down which of its methods each event reached."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def submitted(self, tx, e):
        self.calls.append(("submitted", e.job_id))

    def started(self, tx, e, log_zone):
        self.calls.append(("started", e.job_id, log_zone))

    def escalated(self, tx, e):
        self.calls.append(("escalated", e.job_id))

    def ended(self, tx, e, status, log_zone):
        self.calls.append(("ended", e.job_id, status, log_zone))


def test_each_terminal_event_ends_its_job_in_its_own_status():
    ends = {type(e): lifecycle.ending(e) for e in (
        COMPLETED, JobFailed(job_id="j", zone="eu", code="c", message="m"),
        JobCancelled(job_id="j", zone="eu", reason="r"), JobExpired(job_id="j", zone="eu"))}
    assert ends == {JobCompleted: "completed", JobFailed: "failed", JobCancelled: "cancelled",
                    JobExpired: "expired"}
    assert set(ends.values()) == set(lifecycle.TERMINAL)
    assert lifecycle.ending(SUBMITTED) is None and lifecycle.ending(
        JobStarted(job_id="j", node_id="n", zone="eu", attempt=1)) is None
    assert not set(lifecycle.ACTIVE) & set(lifecycle.TERMINAL)


def test_one_dispatch_sends_every_job_event_to_its_rows_and_ignores_the_rest():
    rows = Recorder()
    events = [SUBMITTED, JobStarted(job_id="j", node_id="n", zone="na", attempt=1),
              JobEscalated(job_id="j", zone="eu", from_queue="eu", to="global", reason="r"),
              COMPLETED]
    assert all(lifecycle.apply_job_event(rows, None, e, "eu") for e in events)
    assert not lifecycle.apply_job_event(rows, None, ApiKeyIssued(key_hash="h", account="a"),
                                         "global")
    assert rows.calls == [("submitted", "j"), ("started", "j", "eu"), ("escalated", "j"),
                          ("ended", "j", "completed", "eu")]


def test_an_ended_job_is_changed_only_while_it_is_active():
    assert lifecycle.only_if_active("jobs") == "WHERE jobs.status IN ('queued', 'running')"
    assert lifecycle.sql_set(lifecycle.TERMINAL) == \
        "('completed', 'failed', 'cancelled', 'expired')"
