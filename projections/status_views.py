"""Per-zone job statistics over a recent window, read from ``zone_jobs``.

Synchronous like :mod:`projections.views` (async callers use
``asyncio.to_thread``). Every statement runs unchanged on SQLite (3.25+, for
window functions) and PostgreSQL: instants are epoch-millisecond integers
(:mod:`projections.status`), so durations are subtractions and minute buckets
integer divisions. A job belongs to the window when it *finished* in it.

- throughput: completed jobs per minute, and per one-minute bucket;
- latency: nearest-rank p50/p95 of end to end (submitted -> finished) and of
  time to start (submitted -> first start), over completed jobs;
- fallback rate: the share of the zone's finished jobs that did not stay in
  it: sent straight to the global queue (no in-zone node at submission),
  escalated, or run by a node of another zone. None for the ``global`` zone,
  whose jobs have no home zone to leave.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from bus.subjects import GLOBAL
from projections.status import epoch_ms
from projections.store import Store

_COUNTS = """
SELECT zone,
  SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed,
  SUM(CASE WHEN status IN ('failed', 'expired') THEN 1 ELSE 0 END) AS failed,
  COUNT(*) AS finished,
  SUM(CASE WHEN escalated = 1 OR route = 'global'
           OR (served_zone IS NOT NULL AND served_zone <> zone) THEN 1 ELSE 0 END) AS fallbacks
FROM zone_jobs WHERE finished_ms >= ? AND zone IS NOT NULL
GROUP BY zone"""

# Nearest rank: the k-th smallest of n with k = ceil(p * n / 100), written as
# integer division because SQLite has no CEIL. "x IS NULL" sorts missing
# starts last in both backends (their default NULL orders differ).
_PERCENTILES = """
WITH done AS (
  SELECT zone, finished_ms - submitted_ms AS total_ms, started_ms - submitted_ms AS start_ms
  FROM zone_jobs
  WHERE status = 'completed' AND finished_ms >= ? AND submitted_ms IS NOT NULL
    AND zone IS NOT NULL),
ranked AS (
  SELECT zone, total_ms, start_ms,
    ROW_NUMBER() OVER (PARTITION BY zone ORDER BY total_ms) AS total_rank,
    ROW_NUMBER() OVER (PARTITION BY zone ORDER BY start_ms IS NULL, start_ms) AS start_rank,
    COUNT(*) OVER (PARTITION BY zone) AS n,
    COUNT(start_ms) OVER (PARTITION BY zone) AS n_start
  FROM done)
SELECT zone,
  MAX(CASE WHEN total_rank = (n * 50 + 99) / 100 THEN total_ms END) AS p50_ms,
  MAX(CASE WHEN total_rank = (n * 95 + 99) / 100 THEN total_ms END) AS p95_ms,
  MAX(CASE WHEN start_rank = (n_start * 50 + 99) / 100 THEN start_ms END) AS start_p50_ms,
  MAX(CASE WHEN start_rank = (n_start * 95 + 99) / 100 THEN start_ms END) AS start_p95_ms
FROM ranked GROUP BY zone"""

# Minutes ago, 0 = the current minute. A finish stamped slightly in the future
# (node clocks) truncates to 0 in both backends, or goes negative: clamped.
_PER_MINUTE = """
SELECT zone, ago, COUNT(*) AS n FROM (
  SELECT zone, (? - finished_ms) / 60000 AS ago FROM zone_jobs
  WHERE status = 'completed' AND finished_ms >= ? AND zone IS NOT NULL) recent
GROUP BY zone, ago"""


@dataclass(frozen=True)
class ZoneStats:
    """One zone's jobs that finished within the last ``window_s`` seconds.
    Latencies are milliseconds, None when no completed job had one."""

    zone: str
    window_s: float
    completed: int = 0
    failed: int = 0  # failed or expired (cancelled ones are the consumer's choice)
    finished: int = 0  # every terminal status: the fallback rate's denominator
    fallbacks: int = 0
    per_minute: tuple[int, ...] = ()  # completed per minute, oldest first
    p50_ms: int | None = None
    p95_ms: int | None = None
    start_p50_ms: int | None = None
    start_p95_ms: int | None = None

    @property
    def jobs_per_min(self) -> float:
        return self.completed * 60.0 / self.window_s if self.window_s > 0 else 0.0

    @property
    def fallback_rate(self) -> float | None:
        if self.zone == GLOBAL or not self.finished:
            return None
        return self.fallbacks / self.finished


def _int(value) -> int | None:
    return None if value is None else int(value)


def zone_stats(store: Store, now: datetime, window_s: float = 300) -> dict[str, ZoneStats]:
    """Stats of every zone with a job finished in ``(now - window_s, now]``,
    by zone name. ``now`` is aware (a naive one is taken as UTC)."""
    now_ms = epoch_ms(now)
    since_ms = now_ms - int(window_s * 1000)
    minutes = max(1, math.ceil(window_s / 60))
    with store.transaction(write=False) as tx:
        counts = tx.query(_COUNTS, (since_ms,))
        percentiles = {r["zone"]: r for r in tx.query(_PERCENTILES, (since_ms,))}
        buckets = tx.query(_PER_MINUTE, (now_ms, since_ms))
    per_minute: dict[str, list[int]] = {}
    for row in buckets:
        slots = per_minute.setdefault(row["zone"], [0] * minutes)
        ago = min(max(int(row["ago"]), 0), minutes - 1)
        slots[minutes - 1 - ago] += int(row["n"])
    out = {}
    for row in counts:
        zone, p = row["zone"], percentiles.get(row["zone"], {})
        out[zone] = ZoneStats(
            zone=zone, window_s=window_s, completed=int(row["completed"]),
            failed=int(row["failed"]), finished=int(row["finished"]),
            fallbacks=int(row["fallbacks"]),
            per_minute=tuple(per_minute.get(zone, [0] * minutes)),
            p50_ms=_int(p.get("p50_ms")), p95_ms=_int(p.get("p95_ms")),
            start_p50_ms=_int(p.get("start_p50_ms")), start_p95_ms=_int(p.get("start_p95_ms")))
    return dict(sorted(out.items()))
