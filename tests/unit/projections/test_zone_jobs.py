"""The network-status read model and its per-zone statistics.

Stats are computed from hand-made events applied through the read model into
a real store: SQLite always, PostgreSQL too when ``INFERBUS_TEST_DATABASE_URL``
is set (the SQL must run unchanged on both).
"""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from bus.events import (JobCancelled, JobCompleted, JobEscalated, JobExpired, JobFailed, JobStarted,
                        JobSubmitted, Sampling, Usage)
from projections import readmodels, zone_jobs
from projections.readmodels import open_store_url
from projections.zone_jobs import ZoneStats, zone_stats

NOW = datetime(2030, 5, 1, 12, 0, 30, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = open_store_url(tmp_path / "x.sqlite3")
        yield s
        s.close()
        return
    url = request.getfixturevalue("postgres_url")  # skips, with its reason, when unset
    schema = f"t_status_{uuid.uuid4().hex[:12]}"
    s = open_store_url(url, schema=schema)
    yield s
    s.close()
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def at(seconds_ago: float) -> datetime:
    return NOW - timedelta(seconds=seconds_ago)


def submitted(job_id: str, zone: str, ago: float, route: str = "zone") -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="a", key_id="k", model="m", kind="completion",
                        prompt="hi", sampling=Sampling(max_tokens=4), zone=zone, route=route,
                        deadline=NOW + timedelta(hours=1), occurred_at=at(ago))


def started(job_id: str, zone: str, ago: float, attempt: int = 1) -> JobStarted:
    return JobStarted(job_id=job_id, node_id="n" * 64, zone=zone, attempt=attempt,
                      occurred_at=at(ago))


def completed(job_id: str, zone: str, ago: float) -> JobCompleted:
    return JobCompleted(job_id=job_id, model="m", node_id="n" * 64, operator="op", zone=zone,
                        attempt=1, text="x", finish_reason="stop", usage=Usage(
                            prompt_tokens=1, completion_tokens=1), input_hash="i",
                        output_hash="o", signature="s", occurred_at=at(ago))


def run_job(job_id: str, zone: str, ago: float, start_ms: int, total_ms: int,
            served: str | None = None) -> list:
    """Events of one job submitted ``ago`` s before NOW and finished ``total_ms`` later."""
    end = ago - total_ms / 1000
    return [submitted(job_id, zone, ago), started(job_id, served or zone, ago - start_ms / 1000),
            completed(job_id, served or zone, end)]


def apply_all(store, events) -> None:
    with store.transaction() as tx:
        for event in events:
            # The log subject's zone is the job's own zone (events.<zone>.*).
            assert zone_jobs.apply(tx, event, getattr(event, "zone", None))


def eu_and_na(store) -> dict[str, ZoneStats]:
    events = []
    # eu: five completed jobs, end to end 1, 2, 3, 4 and 20 s, started after 100..500 ms.
    for i, total in enumerate([1000, 2000, 3000, 4000, 20000]):
        events += run_job(f"eu{i}", "eu", 30 + 60 * i, 100 * (i + 1), total)
    # eu: one escalated and served by na, one failed, one finished before the window.
    events += [submitted("esc", "eu", 50), JobEscalated(job_id="esc", zone="eu", from_queue="eu",
                                                         to="global", reason="zone wait")]
    events += [started("esc", "na", 45), completed("esc", "na", 40)]
    events += [submitted("bad", "eu", 20),
               JobFailed(job_id="bad", zone="eu", code="x", message="y", occurred_at=at(19))]
    events += run_job("old", "eu", 400, 100, 1000)
    # na: one job sent straight to global at submission (no na node then), served in eu.
    events += run_job("na0", "na", 10, 200, 500)
    events[-3] = submitted("na0", "na", 10, route="global")
    events[-2], events[-1] = started("na0", "eu", 9.8), completed("na0", "eu", 9.5)
    apply_all(store, events)
    return zone_stats(store, NOW, window_s=300)


def test_zone_stats_count_recent_jobs_per_zone_and_per_minute(store):
    stats = eu_and_na(store)
    assert set(stats) == {"eu", "na"}
    eu = stats["eu"]
    assert (eu.completed, eu.failed, eu.finished) == (6, 1, 7)  # "old" is outside the window
    assert eu.jobs_per_min == pytest.approx(6 / 5)
    assert len(eu.per_minute) == 5 and sum(eu.per_minute) == 6
    # eu0..eu4 finished 29, 88, 147, 206, 250 s ago, "esc" 40 s ago (oldest bucket first).
    assert eu.per_minute == (1, 1, 1, 1, 2)


def test_zone_stats_latency_percentiles_are_nearest_rank(store):
    eu = eu_and_na(store)["eu"]
    # eu's completed end-to-end times: 1, 2, 3, 4, 20 s and "esc" 10 s.
    assert (eu.p50_ms, eu.p95_ms) == (3000, 20000)
    # time to start: 100..500 ms and "esc" 5 s.
    assert (eu.start_p50_ms, eu.start_p95_ms) == (300, 5000)


def test_fallback_rate_counts_escalated_global_routed_and_served_elsewhere_jobs(store):
    stats = eu_and_na(store)
    assert stats["eu"].fallbacks == 1 and stats["eu"].fallback_rate == pytest.approx(1 / 7)
    assert stats["na"].fallback_rate == 1.0  # routed to global, served in eu
    assert ZoneStats("global", 300, finished=3, fallbacks=3).fallback_rate is None


def test_a_finished_job_keeps_its_timing_and_first_start(store):
    apply_all(store, [submitted("j", "eu", 60), started("j", "eu", 59),
                      started("j", "eu", 50, attempt=2), completed("j", "eu", 40),
                      # late duplicates: terminal is final
                      completed("j", "eu", 5), started("j", "na", 4, attempt=3),
                      JobCancelled(job_id="j", zone="eu", reason="r", occurred_at=at(3))])
    eu = zone_stats(store, NOW)["eu"]
    assert (eu.completed, eu.p50_ms, eu.start_p50_ms, eu.fallbacks) == (1, 20000, 1000, 0)


def test_a_job_seen_without_its_submission_counts_but_has_no_latency(store):
    apply_all(store, [completed("orphan", "eu", 10),
                      JobExpired(job_id="gone", zone="na", occurred_at=at(5))])
    stats = zone_stats(store, NOW)
    assert stats["eu"].completed == 1 and stats["eu"].p50_ms is None
    assert stats["na"].failed == 1 and stats["na"].completed == 0


def test_an_empty_read_model_has_no_zone_stats(store):
    assert zone_stats(store, NOW) == {}
    with store.transaction(write=False) as tx:
        assert readmodels.is_empty(tx)
