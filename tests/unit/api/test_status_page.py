"""The status page's body, /status.json, /metrics and ``inferbus status``'s table."""
from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.deps import status_board
from api.live_nodes import LiveNodes
from api.routes import router
from api.status_page import RequestCounter, StatusBoard, build_status, render_metrics
from bus.node_record import ModelInfo, NodeRecord
from cli.status_table import render_status
from projections.readmodels import open_store_url
from projections.zone_jobs import ZoneStats
from tests.unit.projections.test_zone_jobs import NOW, apply_all, run_job


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


def test_each_node_entry_shows_its_checked_location_and_why():
    failed = ("failed", "connects from GB (zone eu), outside its granted zone na")
    body = build_status(NODES, STATS, NOW, locations={NODES[2].node_id: failed})
    (na,) = body["zones"]["na"]["nodes"]
    assert (na["location"], na["location_note"]) == failed
    assert {(n["location"], n["location_note"]) for n in body["zones"]["eu"]["nodes"]} == {
        ("unchecked", "")}  # no grant says otherwise


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
    nodes = LiveNodes()
    for rec in NODES:
        nodes.update(rec)
    app.dependency_overrides[status_board] = lambda: StatusBoard(nodes, store)
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
    nodes = LiveNodes()
    nodes.update(NODES[2])
    app.dependency_overrides[status_board] = lambda: StatusBoard(nodes, Broken())
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
