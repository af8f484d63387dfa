"""The job-status read model: one ``jobs`` row per job, as ``GET /v1/jobs/{id}``
shows it, and the queries that read it.

Every statement is an upsert that both SQLite and PostgreSQL run unchanged,
following the lifecycle of :mod:`projections.lifecycle`. An event for a job
whose ``JobSubmitted`` was never seen still creates the row with what it
knows: the read model degrades instead of dropping facts.

Zones: ``zone`` is where the job was submitted, ``served_zone`` where a node
ran it (``JobStarted.zone``/``JobCompleted.zone``). For an orphan row the log
subject's zone stands in for the missing ``JobSubmitted.zone``. A cancelled
job's reason is kept in ``error_message``; its usage is what it produced
before it stopped (and is charged).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from bus.events import Event, JobCancelled, JobCompleted, JobEscalated, JobStarted, JobSubmitted
from projections.lifecycle import (ACTIVE, COMPLETED, QUEUED, RUNNING, TERMINAL, Ending,
                                   apply_job_event, only_if_active, sql_set)
from projections.store import Store, Table, Tx, utc

TABLES = (Table("jobs", "job_id", ("created_at", "started_at", "finished_at")),)
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        job_id TEXT PRIMARY KEY,
        account TEXT, key_id TEXT, model TEXT, kind TEXT,
        status TEXT NOT NULL,
        zone TEXT, route TEXT, served_zone TEXT, node_id TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        text TEXT, finish_reason TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER,
        error_code TEXT, error_message TEXT,
        created_at {ts}, started_at {ts}, finished_at {ts})""",
    "CREATE INDEX IF NOT EXISTS jobs_by_account ON jobs (account, created_at)",
    # The per-key in-flight cap counts a key's open jobs (active_jobs): without this,
    # a scan of every job ever, ten times a second or more per API instance.
    "CREATE INDEX IF NOT EXISTS jobs_by_key ON jobs (key_id, status)",
)
_ACTIVE = only_if_active("jobs")


class _Rows:
    """How each job event changes a ``jobs`` row (:class:`~projections.lifecycle.JobRows`)."""

    def submitted(self, tx: Tx, e: JobSubmitted) -> None:
        # Submission facts fill in an orphan row created by a later event, but the
        # status that event set stands.
        tx.execute(
            "INSERT INTO jobs (job_id, account, key_id, model, kind, status, zone, route, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET account = excluded.account, "
            "key_id = excluded.key_id, model = excluded.model, kind = excluded.kind, "
            "zone = excluded.zone, route = excluded.route, created_at = excluded.created_at",
            (e.job_id, e.account, e.key_id, e.model, e.kind, QUEUED, e.zone, e.route,
             utc(e.occurred_at)))

    def started(self, tx: Tx, e: JobStarted, log_zone: str | None) -> None:
        # A start never moves an attempt backwards.
        tx.execute(
            "INSERT INTO jobs (job_id, status, zone, served_zone, node_id, attempt, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "served_zone = excluded.served_zone, node_id = excluded.node_id, "
            "attempt = excluded.attempt, started_at = excluded.started_at "
            f"{_ACTIVE} AND jobs.attempt <= excluded.attempt",
            (e.job_id, RUNNING, log_zone, e.zone, e.node_id, e.attempt, utc(e.occurred_at)))

    def escalated(self, tx: Tx, e: JobEscalated) -> None:
        """The job moved to another queue: nothing this table shows."""

    def ended(self, tx: Tx, e: Ending, status: str, log_zone: str | None) -> None:
        if isinstance(e, JobCompleted):
            self._completed(tx, e, log_zone)
            return
        # Failed/cancelled/expired carry the job's own zone; keep a known one.
        usage = e.usage if isinstance(e, JobCancelled) else None
        code = getattr(e, "code", None)
        message = e.reason if isinstance(e, JobCancelled) else getattr(e, "message", None)
        tx.execute(
            "INSERT INTO jobs (job_id, status, zone, node_id, error_code, error_message, "
            "finished_at, prompt_tokens, completion_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "zone = COALESCE(jobs.zone, excluded.zone), "
            "node_id = COALESCE(excluded.node_id, jobs.node_id), "
            "error_code = excluded.error_code, error_message = excluded.error_message, "
            "prompt_tokens = excluded.prompt_tokens, "
            "completion_tokens = excluded.completion_tokens, "
            f"finished_at = excluded.finished_at {_ACTIVE}",
            (e.job_id, status, e.zone, getattr(e, "node_id", None), code, message,
             utc(e.occurred_at), usage.prompt_tokens if usage else None,
             usage.completion_tokens if usage else None))

    @staticmethod
    def _completed(tx: Tx, e: JobCompleted, log_zone: str | None) -> None:
        tx.execute(
            "INSERT INTO jobs (job_id, status, zone, served_zone, node_id, attempt, text, "
            "finish_reason, prompt_tokens, completion_tokens, finished_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET status = excluded.status, "
            "served_zone = excluded.served_zone, node_id = excluded.node_id, "
            "attempt = excluded.attempt, text = excluded.text, "
            "finish_reason = excluded.finish_reason, prompt_tokens = excluded.prompt_tokens, "
            "completion_tokens = excluded.completion_tokens, finished_at = excluded.finished_at "
            f"{_ACTIVE}",
            (e.job_id, COMPLETED, log_zone, e.zone, e.node_id, e.attempt, e.text,
             e.finish_reason, e.usage.prompt_tokens, e.usage.completion_tokens,
             utc(e.occurred_at)))


_ROWS = _Rows()


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to the ``jobs`` table; False if it is not a job event."""
    return apply_job_event(_ROWS, tx, event, log_zone)


# --- queries --------------------------------------------------------------------

@dataclass(frozen=True)
class JobView:
    """One row of the job-status read model. Fields a job's events have not
    (yet) supplied are None; ``attempt`` is 0 before the first start.
    Timestamps are aware UTC."""

    job_id: str
    status: str  # one of projections.lifecycle's ACTIVE or TERMINAL
    account: str | None = None
    key_id: str | None = None
    model: str | None = None
    kind: str | None = None
    zone: str | None = None
    route: str | None = None
    served_zone: str | None = None
    node_id: str | None = None
    attempt: int = 0
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


COLUMNS = ", ".join(f.name for f in fields(JobView))


def job_view(row: dict[str, Any]) -> JobView:
    """A ``jobs`` row (as ``SELECT {COLUMNS}`` returns it) as a view."""
    stamps = TABLES[0].timestamps
    return JobView(**{**row, **{n: None if row[n] is None else utc(row[n]) for n in stamps}})


def get_job(store: Store, job_id: str) -> JobView | None:
    """The job's current view, or None if no event about it has been applied."""
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
    return job_view(rows[0]) if rows else None


ACTIVE_JOBS_SQL = ("SELECT COUNT(*) AS n FROM jobs WHERE key_id = ? "
                   f"AND status IN {sql_set(ACTIVE)}")


def active_jobs(store: Store, key_id: str) -> int:
    """How many of this key's jobs are queued or running."""
    with store.transaction(write=False) as tx:
        rows = tx.query(ACTIVE_JOBS_SQL, (key_id,))
    return int(rows[0]["n"])


def jobs_of(store: Store, account: str) -> list[tuple[str, str]]:
    """``(zone, job_id)`` of every job of ``account`` (where its content is kept)."""
    with store.transaction(write=False) as tx:
        rows = tx.query("SELECT zone, job_id FROM jobs WHERE account = ? AND zone IS NOT NULL",
                        (account,))
    return [(r["zone"], r["job_id"]) for r in rows]
