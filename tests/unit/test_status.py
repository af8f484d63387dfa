"""The status read model, its views, /status.json, /metrics and ``inferbus status``.

Stats are computed from hand-made events applied through the projection into
a real store: SQLite always, PostgreSQL too when ``INFERBUS_TEST_DATABASE_URL``
is set (the SQL must run unchanged on both).
"""
from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.nodes import LiveNodes
from api.status import RequestCounter, build_status, render_metrics, router
from bus.events import (JobCancelled, JobCompleted, JobEscalated, JobExpired, JobFailed, JobStarted,
                        JobSubmitted, Sampling, Usage)
from bus.nodes import ModelInfo, NodeRecord
from cli.status import render_status
from projections import status
from projections.status_views import ZoneStats, zone_stats
from projections.store import open_store_url

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
            assert status.apply(tx, event, getattr(event, "zone", None))


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
        assert status.is_empty(tx)


# --- /status.json, /metrics ---------------------------------------------------

def node(node_id: str, zone: str, busy: int = 0, gpu: str = "cpu", vram: float = 0.0) -> NodeRecord:
    return NodeRecord(node_id=node_id * 16, zone=zone, operator="secret-operator", gpu=gpu,
                      vram_total_gb=vram, vram_free_gb=vram / 2, busy=busy, queue_depth=busy,
                      models=(ModelInfo(name="tiny", context_length=128),))


NODES = [node("a", "eu", busy=1), node("b", "eu", gpu="NVIDIA H100", vram=80.0), node("c", "na")]
STATS = {"eu": ZoneStats("eu", 300, completed=10, finished=10, fallbacks=1, p50_ms=800,
                         p95_ms=2500, start_p50_ms=40, start_p95_ms=90, per_minute=(2, 2, 2, 2, 2)),
         "global": ZoneStats("global", 300, completed=2, finished=2, fallbacks=2)}


def test_status_body_groups_live_nodes_by_zone_without_operators():
    body = build_status(NODES, STATS, NOW)
    assert {z: d["nodes_live"] for z, d in body["zones"].items()} == {"eu": 2, "na": 1, "global": 0}
    eu = body["zones"]["eu"]
    assert (eu["busy"], eu["queue_depth"], eu["gpus"], eu["vram_total_gb"]) == (1, 1, 1, 80.0)
    assert eu["fallback_rate"] == pytest.approx(0.1) and eu["jobs_per_min"] == 2.0
    assert {len(n["node_id"]) for n in eu["nodes"]} == {12}
    assert "secret-operator" not in repr(body)
    t = body["totals"]
    assert (t["nodes_live"], t["zones_live"], t["models"], t["completed"]) == (3, 2, ["tiny"], 12)
    assert t["fallback_rate"] == pytest.approx(0.1)  # the global zone has no home to leave


STATUS_JSON_OK = 'inferbus_http_requests_total{method="GET",route="/status.json",code="200"}'
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*)?\})? (\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Samples by ``name{labels}``; fails on any line not in the text format."""
    assert text.endswith("\n")
    typed, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter", "summary", "histogram", "untyped")
            typed[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        assert m.group(1) in typed, f"{m.group(1)} has no TYPE before it"
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(5))
    return samples


def test_metrics_are_valid_prometheus_text_with_per_zone_series():
    requests = Counter({("GET", "/status.json", 200): 3, ("POST", "/v1/chat/completions", 402): 1})
    samples = parse_metrics(render_metrics(build_status(NODES, STATS, NOW), requests, 1.7e9))
    assert samples['inferbus_nodes_live{zone="eu"}'] == 2
    assert samples['inferbus_nodes_live{zone="na"}'] == 1
    assert samples['inferbus_queue_depth{zone="eu"}'] == 1
    assert samples['inferbus_jobs_per_minute{zone="eu"}'] == 2.0
    assert samples['inferbus_latency_seconds{zone="eu",quantile="0.95"}'] == 2.5
    assert samples['inferbus_start_latency_seconds{zone="eu",quantile="0.5"}'] == 0.04
    assert samples['inferbus_fallback_ratio{zone="eu"}'] == pytest.approx(0.1)
    assert 'inferbus_fallback_ratio{zone="global"}' not in samples  # unknown: left out
    assert 'inferbus_latency_seconds{zone="na",quantile="0.5"}' not in samples
    assert samples[STATUS_JSON_OK] == 3
    assert samples["process_start_time_seconds"] == 1.7e9


def test_status_routes_serve_json_page_and_metrics_without_auth(tmp_path):
    store = open_store_url(tmp_path / "x.sqlite3")
    shift = NOW - datetime.now(timezone.utc)  # the routes use the real clock
    apply_all(store, [e.model_copy(update={"occurred_at": e.occurred_at - shift})
                      for e in run_job("j", "eu", 30, 100, 1500)])
    app = FastAPI()
    app.include_router(router)
    app.add_middleware(RequestCounter)
    app.state.nodes, app.state.jobs_store = LiveNodes(), store
    for rec in NODES:
        app.state.nodes.update(rec)
    with TestClient(app) as client:
        body = client.get("/status.json").json()
        assert body["stats"] and body["zones"]["eu"]["nodes_live"] == 2
        assert body["zones"]["eu"]["completed"] == 1 and body["zones"]["eu"]["p50_ms"] == 1500
        page = client.get("/status")
        assert page.headers["content-type"].startswith("text/html")
        # Self-contained: nothing loaded from another host.
        assert not re.search(r'(src|href)="(https?:)?//|@import|url\(', page.text)
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = parse_metrics(metrics.text)
    assert samples['inferbus_nodes_live{zone="eu"}'] == 2
    assert samples[STATUS_JSON_OK] >= 1
    store.close()


def test_status_json_still_lists_nodes_when_the_read_model_fails():
    class Broken:
        def transaction(self, **_):
            raise RuntimeError("database is locked")
    app = FastAPI()
    app.include_router(router)
    app.state.nodes, app.state.jobs_store = LiveNodes(), Broken()
    app.state.nodes.update(NODES[2])
    with TestClient(app) as client:
        body = client.get("/status.json").json()
    assert body["stats"] is False and body["zones"]["na"]["nodes_live"] == 1


# --- inferbus status ------------------------------------------------------------

def test_render_status_prints_one_row_per_zone_and_a_summary_naming_no_model():
    lines = render_status(build_status(NODES, STATS, NOW)).splitlines()
    assert lines[0].split()[:4] == ["ZONE", "NODES", "BUSY", "QUEUE"]
    rows = {line.split()[0]: line for line in lines[1:] if line and line[0] != " "}
    assert rows["eu"].split()[:5] == ["eu", "2", "1", "1", "2.0"]
    assert "800 ms" in rows["eu"] and "2.50 s" in rows["eu"] and "10%" in rows["eu"]
    assert rows["eu"].endswith("tiny") and rows["global"].endswith("-")
    # Scripts find serving zones by the model name in a row (tests/stack.py).
    assert [line.split()[0] for line in lines[1:] if "tiny" in line] == ["eu", "na"]
    assert lines[-1].startswith("3 live nodes in 2 zones, 1 model; 2.4 jobs/min")


def test_render_status_without_zones_says_so():
    assert render_status(build_status([], {}, NOW)) == "no live nodes"
