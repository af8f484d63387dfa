"""Reading the read models in tests: the production queries, and rows of the
balance tables and lists that only tests need (what a projection wrote, as
plain frozen values; amounts in micro-credits, timestamps aware UTC)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from bus.credits import available
from projections.balances import expired_reservations  # noqa: F401 - for callers
from projections.job_status import COLUMNS, JobView, get_job, job_view  # noqa: F401
from projections.readmodels import POSITION
from projections.store import Store, read_position, utc


def list_jobs(store: Store, account: str | None = None) -> list[JobView]:
    """Every job (of ``account`` if given), ordered by ``job_id``: a stable
    order for comparing two read models."""
    where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {COLUMNS} FROM jobs {where} ORDER BY job_id", params)
    return [job_view(row) for row in rows]


def position(store: Store, projection: str = POSITION) -> int:
    """The last stream sequence ``projection`` has applied (0 if none)."""
    with store.transaction(write=False) as tx:
        return read_position(tx, projection)


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
        return available(self.deposited, self.held, self.spent)


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
    stamps = {n: None if getattr(row, n) is None else utc(getattr(row, n))
              for n in ("deadline", "created_at", "resolved_at")}
    return ReservationRow(**{**row.__dict__, **stamps})


def job_cost(store: Store, job_id: str) -> int | None:
    """What the job was charged once its reservation is resolved (0 when it was
    refunded in full); None while it is pending or if it has no reservation."""
    with store.transaction(write=False) as tx:
        rows = tx.query("SELECT debited, status FROM reservations WHERE job_id = ?", (job_id,))
    return None if not rows or rows[0]["status"] == "pending" else int(rows[0]["debited"])


def key_usage(store: Store, key_id: str) -> KeyUsageRow | None:
    """Jobs, tokens and credits spent through one API key."""
    return _one(store, KeyUsageRow, "key_usage", "key_id", key_id)


def operator_rcp(store: Store, operator: str) -> OperatorRcpRow | None:
    """RCP points and jobs awarded to one operator account."""
    return _one(store, OperatorRcpRow, "operator_rcp", "operator", operator)
