"""Read queries over the projections, for the API and the CLI.

All functions are synchronous (the store is); async callers wrap them in
``asyncio.to_thread``. Results are plain frozen values, independent of the
backend: timestamps are always timezone-aware UTC datetimes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any

from projections import jobs
from projections.store import Store, read_position


@dataclass(frozen=True)
class JobView:
    """One row of the job-status projection. Fields a job's events have not
    (yet) supplied are None; ``attempt`` is 0 before the first start."""

    job_id: str
    status: str  # queued | running | completed | failed | cancelled | expired
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
        return self.status in jobs.TERMINAL


_COLUMNS = ", ".join(f.name for f in fields(JobView))
_TIMESTAMPS = ("created_at", "started_at", "finished_at")


def _utc(value: Any) -> datetime | None:
    # SQLite hands back ISO text, PostgreSQL a datetime in the session's zone.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(timezone.utc)


def _job(row: dict[str, Any]) -> JobView:
    return JobView(**{**row, **{name: _utc(row[name]) for name in _TIMESTAMPS}})


def get_job(store: Store, job_id: str) -> JobView | None:
    """The job's current view, or None if no event about it has been applied."""
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
    return _job(rows[0]) if rows else None


def list_jobs(store: Store, account: str | None = None) -> list[JobView]:
    """Every job (of ``account`` if given), ordered by ``job_id``: a stable
    order for comparing two read models (``inferbus audit``)."""
    where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY job_id", params)
    return [_job(row) for row in rows]


def position(store: Store, projection: str = jobs.NAME) -> int:
    """The last stream sequence ``projection`` has applied (0 if none)."""
    with store.transaction(write=False) as tx:
        return read_position(tx, projection)
