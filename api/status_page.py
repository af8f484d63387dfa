"""Public network status: the body of ``/status.json``, the ``/status`` page and
``/metrics`` (their routes are in :mod:`api.routes`).

No authentication: everything here is public. Nodes appear by a 12-character
id prefix with their hardware and load, never with their operator account.
Live nodes come from the API's own :class:`~api.live_nodes.LiveNodes`
(heartbeats younger than 3 s); job statistics from the read model
(:func:`projections.zone_jobs.zone_stats`). When the read model is
unavailable the page still shows the nodes.

:func:`build_status` is pure, so ``inferbus status`` can build the same body
from the ``nodes`` bucket and a store without an API.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from api.live_nodes import LiveNodes
from bus.node_record import NodeRecord
from bus.zones import ZONES
from projections.store import Store
from projections.zone_jobs import ZoneStats, zone_stats

log = logging.getLogger("inferbus.api")
WINDOW_S = 300.0
CACHE_S = 1.0
PAGE = Path(__file__).parent / "static" / "status.html"
STARTED = time.time()
# (method, route template, status code) -> count, filled by RequestCounter.
REQUESTS: Counter[tuple[str, str, int]] = Counter()


def _node(rec: NodeRecord, location: tuple[str, str] | None = None) -> dict:
    checked, note = location or ("unchecked", "")
    return {"node_id": rec.node_id[:12], "tier": rec.tier, "gpu": rec.gpu,
            "vram_total_gb": round(rec.vram_total_gb, 1),
            "vram_free_gb": round(rec.vram_free_gb, 1),
            # Not in every NodeRecord version: shown when workers report it.
            "gpu_util": getattr(rec, "gpu_util", None),
            "public": getattr(rec, "public", True),
            "standing": getattr(rec, "standing", "unverified"),
            # Where it connects from, as the network checked it (verifier/location.py);
            # the note names countries and bounds, never an address.
            "location": checked, "location_note": note,
            "busy": rec.busy, "queue_depth": rec.queue_depth,
            "models": sorted(m.name for m in rec.models)}


def _zone(zone: str, nodes: list[NodeRecord], stats: ZoneStats | None, window_s: float,
          locations: dict[str, tuple[str, str]]) -> dict:
    stats = stats or ZoneStats(zone, window_s)
    utils = [u for n in nodes if (u := getattr(n, "gpu_util", None)) is not None]
    return {
        "zone": zone, "nodes_live": len(nodes),
        "busy": sum(n.busy for n in nodes), "queue_depth": sum(n.queue_depth for n in nodes),
        "models": sorted({m.name for n in nodes for m in n.models}),
        "gpus": sum(1 for n in nodes if n.gpu != "cpu"),
        "vram_total_gb": round(sum(n.vram_total_gb for n in nodes), 1),
        "vram_free_gb": round(sum(n.vram_free_gb for n in nodes), 1),
        "gpu_util": sum(utils) / len(utils) if utils else None,
        "jobs_per_min": round(stats.jobs_per_min, 2), "per_minute": list(stats.per_minute),
        "completed": stats.completed, "failed": stats.failed,
        "p50_ms": stats.p50_ms, "p95_ms": stats.p95_ms,
        "start_p50_ms": stats.start_p50_ms, "start_p95_ms": stats.start_p95_ms,
        "fallback_rate": stats.fallback_rate,
        "nodes": [_node(n, locations.get(n.node_id))
                  for n in sorted(nodes, key=lambda n: n.node_id)],
    }


def build_status(records: Iterable[NodeRecord], stats: dict[str, ZoneStats] | None,
                 now: datetime, window_s: float = WINDOW_S,
                 standings: dict[str, int] | None = None,
                 locations: dict[str, tuple[str, str]] | None = None) -> dict:
    """The ``/status.json`` body: ``zones`` by name (every zone with a live node
    or a job in the window), and ``totals``. ``stats`` None: no read model.
    ``standings``: granted nodes per standing, suspended ones included (default:
    the live nodes'). ``locations``: node id -> (checked location, why), from the
    grants (default: every node ``unchecked``)."""
    records = list(records)
    by_zone: dict[str, list[NodeRecord]] = {}
    for rec in records:
        by_zone.setdefault(rec.zone, []).append(rec)
    known = stats is not None
    stats = stats or {}
    zones = {z: _zone(z, by_zone.get(z, []), stats.get(z), window_s, locations or {})
             for z in sorted(set(by_zone) | set(stats))}
    homed = [s for s in stats.values() if s.fallback_rate is not None]  # not global
    finished, fallbacks = sum(s.finished for s in homed), sum(s.fallbacks for s in homed)
    totals = {
        "nodes_live": sum(z["nodes_live"] for z in zones.values()),
        "zones_live": sum(1 for z in zones.values() if z["nodes_live"]),
        "models": sorted({m for z in zones.values() for m in z["models"]}),
        "busy": sum(z["busy"] for z in zones.values()),
        "queue_depth": sum(z["queue_depth"] for z in zones.values()),
        "jobs_per_min": round(sum(s.jobs_per_min for s in stats.values()), 2),
        "completed": sum(s.completed for s in stats.values()),
        "failed": sum(s.failed for s in stats.values()),
        "vram_total_gb": round(sum(z["vram_total_gb"] for z in zones.values()), 1),
        "vram_free_gb": round(sum(z["vram_free_gb"] for z in zones.values()), 1),
        "fallback_rate": fallbacks / finished if finished else None,
        "standing": standings if standings is not None else dict(sorted(Counter(
            getattr(r, "standing", "unverified") for r in records).items())),
    }
    return {"generated_at": now.isoformat(), "window_s": window_s, "stats": known,
            "known_zones": list(ZONES), "zones": zones, "totals": totals}


class StatusBoard:
    """The status body of this API process, computed at most once per ``CACHE_S``:
    every open page polls, and so does every scraper."""

    def __init__(self, nodes: LiveNodes, store: Store | None) -> None:
        self._nodes, self._store = nodes, store
        self._cached: tuple[float, dict] | None = None

    async def body(self) -> dict:
        if self._cached is not None and time.monotonic() - self._cached[0] < CACHE_S:
            return self._cached[1]
        now = datetime.now(timezone.utc)
        stats = None
        if self._store is not None:
            try:
                stats = await asyncio.to_thread(zone_stats, self._store, now, WINDOW_S)
            except Exception:  # noqa: BLE001 - a status page outlives a read-model hiccup
                log.exception("zone stats unavailable")
        body = build_status(self._nodes.live(), stats, now, standings=self._nodes.standings(),
                            locations=self._nodes.locations())
        self._cached = (time.monotonic(), body)
        return body


class RequestCounter:
    """ASGI middleware counting responses by method, route template and code
    (``app.add_middleware(RequestCounter)``). Pure ASGI rather than
    ``@app.middleware``: it must not buffer or otherwise touch SSE streams and
    their disconnects. The template (not the raw path) keeps job ids out of
    the label values."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        code = 500  # an exception before the response started

        async def send_counted(message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # FastAPI's router puts the matched route on the (shared) scope.
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS[(scope["method"], route, code)] += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    # Integers exactly (a start time in %g would lose its seconds), floats by repr.
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render_metrics(body: dict, requests: Counter | None = None,
                   started: float | None = None) -> str:
    """Prometheus text exposition (format 0.0.4) of a ``/status.json`` body.
    Unknown values (no completed job yet) are left out rather than sent as NaN."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str, samples: Iterable[tuple[dict, float | None]]):
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {_number(value)}" if text
                       else f"{name} {_number(value)}")

    zones = body["zones"]

    def per_zone(key: str, scale: float = 1.0):
        return [({"zone": z}, None if d[key] is None else d[key] * scale) for z, d in zones.items()]

    def quantiles(prefix: str):
        return [({"zone": z, "quantile": q}, None if d[f"{prefix}{p}_ms"] is None
                 else d[f"{prefix}{p}_ms"] / 1000) for z, d in zones.items()
                for q, p in (("0.5", "p50"), ("0.95", "p95"))]

    family("inferbus_nodes_live", "gauge", "Nodes with a heartbeat younger than 3 s.",
           per_zone("nodes_live"))
    family("inferbus_nodes_busy", "gauge", "Live nodes running a job now.", per_zone("busy"))
    family("inferbus_queue_depth", "gauge", "Jobs queued on live nodes.", per_zone("queue_depth"))
    family("inferbus_vram_free_bytes", "gauge", "Free GPU memory of live nodes.",
           per_zone("vram_free_gb", 2**30))
    family("inferbus_vram_total_bytes", "gauge", "GPU memory of live nodes.",
           per_zone("vram_total_gb", 2**30))
    family("inferbus_jobs_per_minute", "gauge",
           f"Completed jobs per minute over the last {body['window_s']:g} s.",
           per_zone("jobs_per_min"))
    family("inferbus_latency_seconds", "gauge",
           "End-to-end latency (submitted to finished) of recent completed jobs.",
           quantiles(""))
    family("inferbus_start_latency_seconds", "gauge",
           "Time from submission to a node starting, for recent completed jobs.",
           quantiles("start_"))
    family("inferbus_fallback_ratio", "gauge",
           "Share of recent jobs that left their zone (global queue, escalated, served elsewhere).",
           per_zone("fallback_rate"))
    if requests is not None:
        family("inferbus_http_requests_total", "counter", "HTTP responses of this API process.",
               [({"method": m, "route": r, "code": c}, n)
                for (m, r, c), n in sorted(requests.items())])
    if started is not None:
        family("process_start_time_seconds", "gauge", "Start time of the process (Unix time).",
               [({}, started)])
    return "\n".join(out) + "\n"
