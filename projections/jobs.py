"""The job-status projection: how each job event changes its ``jobs`` row.

Pure apart from the :class:`~projections.store.Tx` it writes through, and
backend-agnostic: every statement is an upsert that both SQLite and
PostgreSQL run unchanged.

Status machine::

    JobSubmitted -> queued      JobCompleted -> completed
    JobStarted   -> running     JobFailed    -> failed
                                JobCancelled -> cancelled
                                JobExpired   -> expired

``running`` is entered only from ``queued`` or ``running`` (a retry's later
attempt); the four terminal statuses never change again, so a late or
duplicated event cannot reopen a finished job. An event for a job whose
``JobSubmitted`` was never seen still creates the row with what it knows:
the read model degrades instead of dropping facts. Other events (keys, ...)
are not this projection's concern.

Zones: ``zone`` is where the job was submitted, ``served_zone`` where a node
ran it (``JobStarted.zone``/``JobCompleted.zone``). Job events are logged on
their submitted zone's subject, so for an orphan row the subject's zone token
(``log_zone``) stands in for the missing ``JobSubmitted.zone``. A cancelled
job's reason is kept in ``error_message``.
"""
from __future__ import annotations

from datetime import datetime, timezone

from bus.events import (Event, JobCancelled, JobCompleted, JobExpired, JobFailed, JobStarted,
                        JobSubmitted, Usage)
from projections.store import Table, Tx

NAME = "jobs"
TABLES = (Table("jobs", "job_id", ("created_at", "started_at", "finished_at")),)
ACTIVE = ("queued", "running")
TERMINAL = ("completed", "failed", "cancelled", "expired")

# Updates below apply only while the job is still active: terminal is final.
_ONLY_IF_ACTIVE = "WHERE jobs.status IN ('queued', 'running')"


def _utc(value: datetime) -> datetime:
    # A naive timestamp in an event is taken as UTC, never as local time.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _submitted(tx: Tx, e: JobSubmitted) -> None:
    # Submission facts fill in an orphan row created by a later event, but the
    # status that event set stands.
    tx.execute(
        "INSERT INTO jobs (job_id, account, key_id, model, kind, status, zone, route, created_at) "
        "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET account = excluded.account, "
        "key_id = excluded.key_id, model = excluded.model, kind = excluded.kind, "
        "zone = excluded.zone, route = excluded.route, created_at = excluded.created_at",
        (e.job_id, e.account, e.key_id, e.model, e.kind, e.zone, e.route, _utc(e.occurred_at)))


def _started(tx: Tx, e: JobStarted, log_zone: str | None) -> None:
    # A start never moves an attempt backwards.
    tx.execute(
        "INSERT INTO jobs (job_id, status, zone, served_zone, node_id, attempt, started_at) "
        "VALUES (?, 'running', ?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET status = 'running', "
        "served_zone = excluded.served_zone, node_id = excluded.node_id, "
        "attempt = excluded.attempt, started_at = excluded.started_at "
        f"{_ONLY_IF_ACTIVE} AND jobs.attempt <= excluded.attempt",
        (e.job_id, log_zone, e.zone, e.node_id, e.attempt, _utc(e.occurred_at)))


def _completed(tx: Tx, e: JobCompleted, log_zone: str | None) -> None:
    tx.execute(
        "INSERT INTO jobs (job_id, status, zone, served_zone, node_id, attempt, text, "
        "finish_reason, prompt_tokens, completion_tokens, finished_at) "
        "VALUES (?, 'completed', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET status = 'completed', "
        "served_zone = excluded.served_zone, node_id = excluded.node_id, "
        "attempt = excluded.attempt, text = excluded.text, "
        "finish_reason = excluded.finish_reason, prompt_tokens = excluded.prompt_tokens, "
        "completion_tokens = excluded.completion_tokens, finished_at = excluded.finished_at "
        f"{_ONLY_IF_ACTIVE}",
        (e.job_id, log_zone, e.zone, e.node_id, e.attempt, e.text, e.finish_reason,
         e.usage.prompt_tokens, e.usage.completion_tokens, _utc(e.occurred_at)))


def _ended(tx: Tx, job_id: str, status: str, zone: str, node_id: str | None,
           code: str | None, message: str | None, at: datetime,
           usage: Usage | None = None) -> None:
    # Failed/cancelled/expired carry the job's own zone; keep a known one. A
    # cancelled job's usage is what it produced before it stopped (and is charged).
    tx.execute(
        "INSERT INTO jobs (job_id, status, zone, node_id, error_code, error_message, finished_at, "
        "prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
        "zone = COALESCE(jobs.zone, excluded.zone), "
        "node_id = COALESCE(excluded.node_id, jobs.node_id), "
        "error_code = excluded.error_code, error_message = excluded.error_message, "
        "prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, "
        f"finished_at = excluded.finished_at {_ONLY_IF_ACTIVE}",
        (job_id, status, zone, node_id, code, message, _utc(at),
         usage.prompt_tokens if usage else None, usage.completion_tokens if usage else None))


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to the ``jobs`` table; False if it is not a job event.

    ``log_zone`` is the zone token of the subject the event was logged on."""
    if isinstance(event, JobSubmitted):
        _submitted(tx, event)
    elif isinstance(event, JobStarted):
        _started(tx, event, log_zone)
    elif isinstance(event, JobCompleted):
        _completed(tx, event, log_zone)
    elif isinstance(event, JobFailed):
        _ended(tx, event.job_id, "failed", event.zone, event.node_id, event.code, event.message,
               event.occurred_at)
    elif isinstance(event, JobCancelled):
        _ended(tx, event.job_id, "cancelled", event.zone, event.node_id, None, event.reason,
               event.occurred_at, event.usage)
    elif isinstance(event, JobExpired):
        _ended(tx, event.job_id, "expired", event.zone, None, None, None, event.occurred_at)
    else:
        return False
    return True


def is_empty(tx: Tx) -> bool:
    """True when no job row exists (a rebuild needs an empty model)."""
    return not tx.query("SELECT 1 AS one FROM jobs LIMIT 1")
