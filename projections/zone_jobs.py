"""The network-status read model: one ``zone_jobs`` row per job, with its timing,
and the per-zone statistics the status board shows.

It keeps only what the board needs: the job's own zone, where it ran, whether
it left its first queue, its status and three instants as epoch milliseconds
(``submitted_ms``, ``started_ms``, ``finished_ms``). Integers rather than
timestamps because SQLite and PostgreSQL share no date arithmetic: with
integers a latency is a subtraction and a minute bucket an integer division in
either backend.

Rules (the lifecycle of :mod:`projections.lifecycle`):

- ``JobSubmitted`` fills ``zone``, ``route`` and ``submitted_ms``;
- ``JobStarted`` marks it ``running``, sets ``served_zone`` (the node's zone)
  and keeps the *first* start: time to start is what the consumer waited;
- ``JobEscalated`` sets ``escalated`` (whatever the status: it happened);
- a terminal event sets the status and ``finished_ms`` once.

A job whose ``JobSubmitted`` was never seen still gets a row (zone from the
event or the log subject), without ``submitted_ms``: it counts in throughput
but not in latency.

Statistics (:func:`zone_stats`; SQLite 3.25+ for window functions), over the
jobs that *finished* in a recent window:

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
from datetime import datetime, timedelta, timezone

from bus.events import Event, JobCompleted, JobEscalated, JobStarted, JobSubmitted
from bus.subjects import GLOBAL
from projections.lifecycle import (COMPLETED, EXPIRED, FAILED, QUEUED, RUNNING, Ending,
                                   apply_job_event, only_if_active, sql_set)
from projections.store import Store, Table, Tx, utc

TABLES = (Table("zone_jobs", "job_id"),)
SCHEMA = (
    # epoch milliseconds, so durations and minute buckets are plain integer SQL
    """CREATE TABLE IF NOT EXISTS zone_jobs (
        job_id TEXT PRIMARY KEY,
        zone TEXT, served_zone TEXT, route TEXT,
        escalated INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        submitted_ms BIGINT, started_ms BIGINT, finished_ms BIGINT)""",
    "CREATE INDEX IF NOT EXISTS zone_jobs_by_finish ON zone_jobs (finished_ms)",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ACTIVE = only_if_active("zone_jobs")


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding: a rebuild and
    the live model must compute the same integer)."""
    return (utc(value) - _EPOCH) // timedelta(milliseconds=1)


class _Rows:
    """How each job event changes a ``zone_jobs`` row (:class:`~projections.lifecycle.JobRows`)."""

    def submitted(self, tx: Tx, e: JobSubmitted) -> None:
        # Fills in an orphan row a later event created; the status it set stands.
        tx.execute(
            "INSERT INTO zone_jobs (job_id, zone, route, status, submitted_ms) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET zone = excluded.zone, route = excluded.route, "
            "submitted_ms = excluded.submitted_ms",
            (e.job_id, e.zone, e.route, QUEUED, epoch_ms(e.occurred_at)))

    def started(self, tx: Tx, e: JobStarted, log_zone: str | None) -> None:
        tx.execute(
            "INSERT INTO zone_jobs (job_id, zone, served_zone, status, started_ms) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "served_zone = excluded.served_zone, "
            "started_ms = COALESCE(zone_jobs.started_ms, excluded.started_ms) "
            f"{_ACTIVE}",
            (e.job_id, log_zone, e.zone, RUNNING, epoch_ms(e.occurred_at)))

    def escalated(self, tx: Tx, e: JobEscalated) -> None:
        tx.execute(
            "INSERT INTO zone_jobs (job_id, zone, escalated, status) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET escalated = 1, "
            "zone = COALESCE(zone_jobs.zone, excluded.zone)",
            (e.job_id, e.zone, QUEUED))

    def ended(self, tx: Tx, e: Ending, status: str, log_zone: str | None) -> None:
        # Failed/cancelled/expired carry the job's own zone, completed the node's
        # (``served_zone``); an orphan row takes the log subject's zone instead.
        completed = isinstance(e, JobCompleted)
        tx.execute(
            "INSERT INTO zone_jobs (job_id, zone, served_zone, status, finished_ms) "
            "VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "zone = COALESCE(zone_jobs.zone, excluded.zone), "
            "served_zone = COALESCE(excluded.served_zone, zone_jobs.served_zone), "
            f"finished_ms = excluded.finished_ms {_ACTIVE}",
            (e.job_id, log_zone if completed else e.zone, e.zone if completed else None,
             status, epoch_ms(e.occurred_at)))


_ROWS = _Rows()


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to ``zone_jobs``; False if it is not a job event."""
    return apply_job_event(_ROWS, tx, event, log_zone)


# --- statistics -------------------------------------------------------------------

_COUNTS = f"""
SELECT zone,
  SUM(CASE WHEN status = '{COMPLETED}' THEN 1 ELSE 0 END) AS completed,
  SUM(CASE WHEN status IN {sql_set((FAILED, EXPIRED))} THEN 1 ELSE 0 END) AS failed,
  COUNT(*) AS finished,
  SUM(CASE WHEN escalated = 1 OR route = 'global'
           OR (served_zone IS NOT NULL AND served_zone <> zone) THEN 1 ELSE 0 END) AS fallbacks
FROM zone_jobs WHERE finished_ms >= ? AND zone IS NOT NULL
GROUP BY zone"""

# Nearest rank: the k-th smallest of n with k = ceil(p * n / 100), written as
# integer division because SQLite has no CEIL. "x IS NULL" sorts missing
# starts last in both backends (their default NULL orders differ).
_PERCENTILES = f"""
WITH done AS (
  SELECT zone, finished_ms - submitted_ms AS total_ms, started_ms - submitted_ms AS start_ms
  FROM zone_jobs
  WHERE status = '{COMPLETED}' AND finished_ms >= ? AND submitted_ms IS NOT NULL
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
_PER_MINUTE = f"""
SELECT zone, ago, COUNT(*) AS n FROM (
  SELECT zone, (? - finished_ms) / 60000 AS ago FROM zone_jobs
  WHERE status = '{COMPLETED}' AND finished_ms >= ? AND zone IS NOT NULL) recent
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
