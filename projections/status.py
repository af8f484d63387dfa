"""The network-status projection: one ``zone_jobs`` row per job, with its timing.

It keeps only what the status board needs (:mod:`projections.status_views`):
the job's own zone, where it ran, whether it left its first queue, its status
and three instants as epoch milliseconds (``submitted_ms``, ``started_ms``,
``finished_ms``). Integers rather than timestamps because SQLite and
PostgreSQL share no date arithmetic: with integers a latency is a subtraction
and a minute bucket an integer division in either backend.

Rules (the same status machine as :mod:`projections.jobs`):

- ``JobSubmitted`` fills ``zone``, ``route`` and ``submitted_ms``;
- ``JobStarted`` marks it ``running``, sets ``served_zone`` (the node's zone)
  and keeps the *first* start: time to start is what the consumer waited;
- ``JobEscalated`` sets ``escalated`` (whatever the status: it happened);
- a terminal event sets the status and ``finished_ms`` once; a terminal row
  never changes again, so a duplicate or late event cannot move its timing.

A job whose ``JobSubmitted`` was never seen still gets a row (zone from the
event or the log subject), without ``submitted_ms``: it counts in throughput
but not in latency.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bus.events import (Event, JobCancelled, JobCompleted, JobEscalated, JobExpired, JobFailed,
                        JobStarted, JobSubmitted)
from projections.store import Table, Tx, utc

NAME = "status"
TABLES = (Table("zone_jobs", "job_id"),)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONLY_IF_ACTIVE = "WHERE zone_jobs.status IN ('queued', 'running')"


def epoch_ms(value: datetime) -> int:
    """Milliseconds since the epoch, exactly (no float rounding: a rebuild and
    the live model must compute the same integer)."""
    return (utc(value) - _EPOCH) // timedelta(milliseconds=1)


def _submitted(tx: Tx, e: JobSubmitted) -> None:
    # Fills in an orphan row a later event created; the status it set stands.
    tx.execute(
        "INSERT INTO zone_jobs (job_id, zone, route, status, submitted_ms) "
        "VALUES (?, ?, ?, 'queued', ?) "
        "ON CONFLICT (job_id) DO UPDATE SET zone = excluded.zone, route = excluded.route, "
        "submitted_ms = excluded.submitted_ms",
        (e.job_id, e.zone, e.route, epoch_ms(e.occurred_at)))


def _started(tx: Tx, e: JobStarted, log_zone: str | None) -> None:
    tx.execute(
        "INSERT INTO zone_jobs (job_id, zone, served_zone, status, started_ms) "
        "VALUES (?, ?, ?, 'running', ?) "
        "ON CONFLICT (job_id) DO UPDATE SET status = 'running', "
        "served_zone = excluded.served_zone, "
        "started_ms = COALESCE(zone_jobs.started_ms, excluded.started_ms) "
        f"{_ONLY_IF_ACTIVE}",
        (e.job_id, log_zone, e.zone, epoch_ms(e.occurred_at)))


def _escalated(tx: Tx, e: JobEscalated) -> None:
    tx.execute(
        "INSERT INTO zone_jobs (job_id, zone, escalated, status) VALUES (?, ?, 1, 'queued') "
        "ON CONFLICT (job_id) DO UPDATE SET escalated = 1, "
        "zone = COALESCE(zone_jobs.zone, excluded.zone)",
        (e.job_id, e.zone))


def _ended(tx: Tx, job_id: str, status: str, zone: str | None, served_zone: str | None,
           at: datetime) -> None:
    # Failed/cancelled/expired carry the job's own zone, completed the node's
    # (``served_zone``); an orphan row takes the log subject's zone instead.
    tx.execute(
        "INSERT INTO zone_jobs (job_id, zone, served_zone, status, finished_ms) "
        "VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
        "zone = COALESCE(zone_jobs.zone, excluded.zone), "
        "served_zone = COALESCE(excluded.served_zone, zone_jobs.served_zone), "
        f"finished_ms = excluded.finished_ms {_ONLY_IF_ACTIVE}",
        (job_id, zone, served_zone, status, epoch_ms(at)))


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to ``zone_jobs``; False if it is not a job event.

    ``log_zone`` is the zone token of the subject the event was logged on."""
    if isinstance(event, JobSubmitted):
        _submitted(tx, event)
    elif isinstance(event, JobStarted):
        _started(tx, event, log_zone)
    elif isinstance(event, JobEscalated):
        _escalated(tx, event)
    elif isinstance(event, JobCompleted):
        _ended(tx, event.job_id, "completed", log_zone, event.zone, event.occurred_at)
    elif isinstance(event, JobFailed):
        _ended(tx, event.job_id, "failed", event.zone, None, event.occurred_at)
    elif isinstance(event, JobCancelled):
        _ended(tx, event.job_id, "cancelled", event.zone, None, event.occurred_at)
    elif isinstance(event, JobExpired):
        _ended(tx, event.job_id, "expired", event.zone, None, event.occurred_at)
    else:
        return False
    return True


def is_empty(tx: Tx) -> bool:
    """True when no row exists (a rebuild needs an empty model)."""
    return not tx.query("SELECT 1 AS one FROM zone_jobs LIMIT 1")
