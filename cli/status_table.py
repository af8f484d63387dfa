"""``inferbus status``: the ``/status.json`` body as a table for a terminal.

:func:`gather` builds that body here, from the ``nodes`` bucket and the local
read model (no API needed); :func:`render_status` prints it. One row per zone;
the first column is the zone and the last the models it serves, so scripts
(and ``tests/stack.py``) can read ``line.split()[0]`` and look for a model
name in a row. The summary under the table names no model, for the same reason.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from bus.config import Settings

log = logging.getLogger("inferbus.cli")

HEADER = ("ZONE", "NODES", "BUSY", "QUEUE", "JOBS/MIN", "P50", "P95", "START P50", "FALLBACK",
          "MODELS")


def _ms(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render_status(data: dict) -> str:
    """A fixed-width table of ``data`` (a ``/status.json`` body), zones by name,
    then one summary line. ``-`` marks a value with no data in the window."""
    zones = data.get("zones", {})
    if not zones:
        return "no live nodes"
    rows = [HEADER]
    for name, z in sorted(zones.items()):
        rows.append((name, str(z["nodes_live"]), str(z["busy"]), str(z["queue_depth"]),
                     f"{z['jobs_per_min']:.1f}", _ms(z["p50_ms"]), _ms(z["p95_ms"]),
                     _ms(z["start_p50_ms"]), _rate(z["fallback_rate"]),
                     ",".join(z["models"]) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    t = data.get("totals", {})
    window = f"{data.get('window_s', 0) / 60:g} min"
    models = len(t.get("models", []))
    summary = (f"{t.get('nodes_live', 0)} live nodes in {t.get('zones_live', 0)} zones, "
               f"{models} model{'' if models == 1 else 's'}; "
               f"{t.get('jobs_per_min', 0):.1f} jobs/min over the last {window}, "
               f"fallback {_rate(t.get('fallback_rate'))}")
    if not data.get("stats", True):
        summary += " (job statistics unavailable)"
    return "\n".join(lines + ["", summary])


def _stats(settings: Settings, now: datetime):
    from projections.readmodels import open_store
    from projections.zone_jobs import zone_stats

    # No read model on this machine (no projector ran here): nodes only, and
    # no empty SQLite file left behind by looking.
    if not settings.database_url and not settings.sqlite_path("readmodels").exists():
        return None
    try:
        store = open_store(settings)
    except Exception as exc:  # noqa: BLE001 - the node table is still worth printing
        log.warning("read model unavailable: %s", exc)
        return None
    try:
        return zone_stats(store, now)
    finally:
        store.close()


async def gather(settings: Settings) -> dict:
    """The ``/status.json`` body built from this deployment's bus and read model."""
    from api.status_page import build_status
    from cli.admin import live_nodes

    now = datetime.now(timezone.utc)
    nodes = await live_nodes(settings)
    return build_status(nodes, await asyncio.to_thread(_stats, settings, now), now)
