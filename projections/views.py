"""Read queries over the projections, for the API and the CLI.

All functions are synchronous (the store is); async callers wrap them in
``asyncio.to_thread``. Results are plain frozen values, independent of the
backend: timestamps are always timezone-aware UTC datetimes.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from projections import jobs
from projections.store import Store, read_position, utc


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


def active_jobs(store: Store, key_id: str) -> int:
    """How many of this key's jobs are queued or running."""
    with store.transaction(write=False) as tx:
        rows = tx.query("SELECT COUNT(*) AS n FROM jobs WHERE key_id = ? "
                        "AND status IN ('queued', 'running')", (key_id,))
    return int(rows[0]["n"])


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


# --- credits (projections/credits.py); amounts in micro-credits ---------------

@dataclass(frozen=True)
class AccountRow:
    """One account's credits. ``rcp`` is what it earned as a node operator."""

    account: str
    deposited: int
    held: int
    spent: int
    refunded: int
    rcp: int

    @property
    def balance(self) -> int:
        """What the account can still reserve."""
        return self.deposited - self.held - self.spent


@dataclass(frozen=True)
class ReservationRow:
    """A job's hold: ``pending``, then ``settled`` (debited) or ``refunded``."""

    job_id: str
    account: str
    key_id: str | None
    amount: int
    debited: int
    refunded: int
    status: str
    zone: str | None
    deadline: datetime | None
    created_at: datetime | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class KeyUsageRow:
    key_id: str
    account: str | None
    jobs: int
    prompt_tokens: int
    completion_tokens: int
    spent: int


@dataclass(frozen=True)
class OperatorRcpRow:
    operator: str
    points: int
    jobs: int


def _one(store: Store, row_type: type, table: str, key: str, value: str) -> Any:
    columns = ", ".join(f.name for f in fields(row_type))
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {columns} FROM {table} WHERE {key} = ?", (value,))
    return row_type(**rows[0]) if rows else None


def account_view(store: Store, account: str) -> AccountRow | None:
    """The account's credits, or None if no credit event names it."""
    return _one(store, AccountRow, "accounts", "account", account)


def get_reservation(store: Store, job_id: str) -> ReservationRow | None:
    row = _one(store, ReservationRow, "reservations", "job_id", job_id)
    if row is None:
        return None
    stamps = {n: _utc(getattr(row, n)) for n in ("deadline", "created_at", "resolved_at")}
    return ReservationRow(**{**row.__dict__, **stamps})


def job_cost(store: Store, job_id: str) -> int | None:
    """What the job was charged once its reservation is resolved (0 when it was
    refunded in full); None while it is pending or if it has no reservation."""
    with store.transaction(write=False) as tx:
        rows = tx.query("SELECT debited, status FROM reservations WHERE job_id = ?", (job_id,))
    return None if not rows or rows[0]["status"] == "pending" else int(rows[0]["debited"])


def expired_reservations(store: Store, now: datetime, grace_s: float,
                         outcome_grace_s: float | None = None) -> list[str]:
    """Jobs whose reservation is still pending ``grace_s`` seconds past its
    deadline, oldest deadline first: what the expiry sweep refunds. A job whose
    completion or cancel is already logged waits ``outcome_grace_s`` instead:
    its settlement is due, only late."""
    cutoff = utc(now) - timedelta(seconds=grace_s)
    late = utc(now) - timedelta(seconds=max(outcome_grace_s or grace_s, grace_s))
    with store.transaction(write=False) as tx:
        rows = tx.query(
            "SELECT r.job_id FROM reservations r LEFT JOIN jobs j ON j.job_id = r.job_id "
            "WHERE r.status = 'pending' AND r.deadline < ? AND (r.deadline < ? OR "
            "j.status IS NULL OR j.status NOT IN ('completed', 'cancelled')) "
            "ORDER BY r.deadline, r.job_id", (cutoff, late))
    return [row["job_id"] for row in rows]


def key_usage(store: Store, key_id: str) -> KeyUsageRow | None:
    """Jobs, tokens and credits spent through one API key."""
    return _one(store, KeyUsageRow, "key_usage", "key_id", key_id)


def operator_rcp(store: Store, operator: str) -> OperatorRcpRow | None:
    """RCP points and jobs awarded to one operator account."""
    return _one(store, OperatorRcpRow, "operator_rcp", "operator", operator)
