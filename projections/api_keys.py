"""The API-key read model: one ``api_keys`` row per key, as an account's
``GET /v1/keys`` lists them, and what a key has spent against its limit.

Rows come from ``ApiKeyIssued`` (name, admin, spend limit, expiry, subcloud)
and ``ApiKeyRevoked`` (``revoked_at``); the key itself is never here, only its
hash, whose first characters are the key's public id. A revocation seen before
its issue still records ``revoked_at``, so the row is revoked whatever order a
replay brings them in. Amounts are integer micro-credits.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Sequence

from bus.events import ApiKeyIssued, ApiKeyRevoked, Event
from projections.store import Store, Table, Tx, utc

KEY_ID_CHARS = 16  # api.keys.key_id_of: the public id is the hash's first characters
TABLES = (Table("api_keys", "key_hash", ("created_at", "expires_at", "revoked_at")),)
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_hash TEXT PRIMARY KEY, key_id TEXT NOT NULL, account TEXT,
        name TEXT, admin INTEGER NOT NULL DEFAULT 0, spend_limit BIGINT, subcloud TEXT,
        created_at {ts}, expires_at {ts}, revoked_at {ts}, webhook_url TEXT)""",
    "CREATE INDEX IF NOT EXISTS api_keys_by_account ON api_keys (account, created_at)",
    # What a key holds now (balances' reservations): its spend limit is checked
    # against it at admission.
    "CREATE INDEX IF NOT EXISTS reservations_by_key ON reservations (key_id, status)",
)


def _issued(tx: Tx, e: ApiKeyIssued) -> None:
    tx.execute(
        "INSERT INTO api_keys (key_hash, key_id, account, name, admin, spend_limit, subcloud, "
        "created_at, expires_at, webhook_url) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key_hash) DO UPDATE SET account = excluded.account, "
        "name = excluded.name, admin = excluded.admin, spend_limit = excluded.spend_limit, "
        "subcloud = excluded.subcloud, created_at = excluded.created_at, "
        "expires_at = excluded.expires_at, webhook_url = excluded.webhook_url",
        (e.key_hash, e.key_hash[:KEY_ID_CHARS], e.account, e.name, int(e.admin), e.spend_limit,
         e.subcloud, utc(e.occurred_at), None if e.expires_at is None else utc(e.expires_at),
         e.webhook_url))


def _revoked(tx: Tx, e: ApiKeyRevoked) -> None:
    # The first revocation stands: a repeat does not move its time.
    tx.execute(
        "INSERT INTO api_keys (key_hash, key_id, account, revoked_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key_hash) DO UPDATE SET "
        "revoked_at = COALESCE(api_keys.revoked_at, excluded.revoked_at)",
        (e.key_hash, e.key_hash[:KEY_ID_CHARS], e.account, utc(e.occurred_at)))


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to ``api_keys``; False if it is not a key event."""
    if isinstance(event, ApiKeyIssued):
        _issued(tx, event)
    elif isinstance(event, ApiKeyRevoked):
        _revoked(tx, event)
    else:
        return False
    return True


# --- queries --------------------------------------------------------------------

@dataclass(frozen=True)
class KeyView:
    """One key of an account, with what it spent (debited, less reimbursed) and
    holds now (pending reservations)."""

    key_hash: str
    key_id: str
    account: str | None
    name: str | None
    admin: bool
    spend_limit: int | None
    subcloud: str | None
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    webhook_url: str | None = None
    spent: int = 0
    held: int = 0


_KEY_COLUMNS = ", ".join(f"k.{f.name}" for f in fields(KeyView)[:11])
_SPENT = ("COALESCE((SELECT spent FROM key_usage u WHERE u.key_id = k.key_id), 0) AS spent, "
          "COALESCE((SELECT SUM(amount) FROM reservations r WHERE r.key_id = k.key_id "
          "AND r.status = 'pending'), 0) AS held")


def _view(row: dict[str, Any]) -> KeyView:
    stamps = {n: None if row[n] is None else utc(row[n]) for n in TABLES[0].timestamps}
    return KeyView(**{**row, **stamps, "admin": bool(row["admin"]),
                      "spent": int(row["spent"]), "held": int(row["held"])})


def keys_of(store: Store, account: str) -> list[KeyView]:
    """Every key of ``account``, newest first."""
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {_KEY_COLUMNS}, {_SPENT} FROM api_keys k WHERE k.account = ? "
                        "ORDER BY k.created_at DESC, k.key_id", (account,))
    return [_view(r) for r in rows]


def key_of(store: Store, account: str, key_id: str) -> KeyView | None:
    """``account``'s key whose public id is ``key_id`` (None: no such key of it)."""
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {_KEY_COLUMNS}, {_SPENT} FROM api_keys k "
                        "WHERE k.account = ? AND k.key_id = ?", (account, key_id))
    return _view(rows[0]) if rows else None


def key_spend(store: Store, key_id: str, jobs: Sequence[str] = ()) -> tuple[int, set[str]]:
    """What ``key_id`` has spent and holds now, in micro-credits, and which of
    ``jobs`` already hold in this read model (the rest it does not count yet)."""
    marks = ", ".join("?" * len(jobs))
    with store.transaction(write=False) as tx:
        rows = tx.query(
            "SELECT COALESCE((SELECT spent FROM key_usage WHERE key_id = ?), 0) + "
            "COALESCE((SELECT SUM(amount) FROM reservations WHERE key_id = ? "
            "AND status = 'pending'), 0) AS total", (key_id, key_id))
        seen = tx.query(f"SELECT job_id FROM reservations WHERE job_id IN ({marks})",
                        tuple(jobs)) if jobs else []
    return int(rows[0]["total"]), {r["job_id"] for r in seen}


def has_live_key(store: Store, account: str) -> bool:
    """Whether ``account`` has a key not revoked (its first key is its admin key)."""
    with store.transaction(write=False) as tx:
        return bool(tx.query("SELECT 1 AS one FROM api_keys WHERE account = ? "
                             "AND revoked_at IS NULL LIMIT 1", (account,)))


def keys_with_id(store: Store, key_id: str) -> list[KeyView]:
    """Every key whose public id is ``key_id``, of any account (the admin CLI)."""
    with store.transaction(write=False) as tx:
        rows = tx.query(f"SELECT {_KEY_COLUMNS}, {_SPENT} FROM api_keys k WHERE k.key_id = ?",
                        (key_id,))
    return [_view(r) for r in rows]
