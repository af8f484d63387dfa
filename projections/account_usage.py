"""What an account reads about its own traffic: its recent jobs
(``GET /v1/jobs``) and its usage per day, model and key (``GET /v1/usage``).

Both read the ``jobs`` rows (:mod:`projections.job_status`) joined with their
reservations (:mod:`projections.balances`), so they need no table of their
own and stay what a rebuild from the log gives. A job's ``cost`` is what was
debited for it, less what was reimbursed (a reservation ``revoked`` after a
failed spot check costs nothing); 0 while it is pending or was refunded.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from projections.store import Store, utc

MAX_USAGE_JOBS = 200_000  # jobs one usage answer sums, at most: a bound on one request's work
_COST = ("CASE WHEN r.status = 'revoked' OR r.debited IS NULL THEN 0 ELSE r.debited END "
         "AS cost")


@dataclass(frozen=True)
class JobLine:
    """One job as an account's job list shows it."""

    job_id: str
    model: str | None
    status: str
    zone: str | None
    served_zone: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: int
    created_at: datetime | None
    finished_at: datetime | None


def _line(row: dict[str, Any]) -> JobLine:
    stamps = {n: None if row[n] is None else utc(row[n]) for n in ("created_at", "finished_at")}
    return JobLine(**{**row, **stamps, "cost": int(row["cost"])})


def recent_jobs(store: Store, account: str, *, status: str | None = None, limit: int = 20,
                before: tuple[datetime, str] | None = None) -> list[JobLine]:
    """``account``'s jobs, newest first; ``before``: only those older than the
    ``(created_at, job_id)`` of the last job of the previous page."""
    where, params = ["j.account = ?", "j.created_at IS NOT NULL"], [account]
    if status:
        where.append("j.status = ?")
        params.append(status)
    if before:
        where.append("(j.created_at < ? OR (j.created_at = ? AND j.job_id < ?))")
        params += [utc(before[0]), utc(before[0]), before[1]]
    with store.transaction(write=False) as tx:
        rows = tx.query(
            "SELECT j.job_id, j.model, j.status, j.zone, j.served_zone, j.prompt_tokens, "
            f"j.completion_tokens, j.created_at, j.finished_at, {_COST} FROM jobs j "
            "LEFT JOIN reservations r ON r.job_id = j.job_id "
            f"WHERE {' AND '.join(where)} ORDER BY j.created_at DESC, j.job_id DESC LIMIT ?",
            (*params, limit))
    return [_line(r) for r in rows]


def job_created(store: Store, account: str, job_id: str) -> datetime | None:
    """When ``account``'s job ``job_id`` was submitted (a page's cursor)."""
    with store.transaction(write=False) as tx:
        rows = tx.query("SELECT created_at FROM jobs WHERE account = ? AND job_id = ?",
                        (account, job_id))
    return utc(rows[0]["created_at"]) if rows and rows[0]["created_at"] is not None else None


@dataclass
class UsageLine:
    """Requests, tokens and cost of one group; the fields not grouped by are None."""

    day: str | None
    model: str | None
    key_id: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: int = 0


GROUPS = ("day", "model", "key")


def usage(store: Store, account: str, days: int, group_by: tuple[str, ...],
          now: datetime | None = None) -> list[UsageLine]:
    """``account``'s jobs submitted in the last ``days`` days (UTC), summed per
    ``group_by`` (any of :data:`GROUPS`); sorted by day, then model, then key."""
    since = (now or datetime.now(timezone.utc)) - timedelta(days=days)
    with store.transaction(write=False) as tx:
        rows = tx.query(
            "SELECT j.created_at, j.model, j.key_id, j.prompt_tokens, j.completion_tokens, "
            f"{_COST} FROM jobs j LEFT JOIN reservations r ON r.job_id = j.job_id "
            "WHERE j.account = ? AND j.created_at >= ? LIMIT ?",
            (account, utc(since), MAX_USAGE_JOBS))
    lines: dict[tuple, UsageLine] = {}
    for row in rows:
        day = utc(row["created_at"]).date().isoformat() if "day" in group_by else None
        model = row["model"] if "model" in group_by else None
        key = row["key_id"] if "key" in group_by else None
        line = lines.setdefault((day, model, key), UsageLine(day, model, key))
        line.requests += 1
        line.prompt_tokens += row["prompt_tokens"] or 0
        line.completion_tokens += row["completion_tokens"] or 0
        line.cost += int(row["cost"])
    return sorted(lines.values(), key=lambda u: (u.day or "", u.model or "", u.key_id or ""))
