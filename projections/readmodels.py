"""The read models a store holds, in the order the projector applies them, and
opening that store.

Each read model is a module with ``TABLES`` (how ``inferbus audit`` compares
its rows), ``SCHEMA`` (its ``CREATE ... IF NOT EXISTS`` statements) and
``apply(tx, event, log_zone)``; every one is applied to each event in one
transaction under one shared stream position (the tracking row ``jobs``,
named before the other read models existed).

Choosing a backend (:func:`open_store`): ``settings.database_url`` set to a
``postgresql://`` URL selects PostgreSQL (a small psycopg connection pool);
unset selects SQLite at ``settings.sqlite_path("readmodels")`` in WAL mode, so
the API process reads while the projector process writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from bus import subjects
from bus.config import Settings
from bus.events import Event
from projections import api_keys, balances, job_status, zone_jobs
from projections.store import POSTGRES_SCHEMES, PostgresStore, SqliteStore, Store, Table, Tx


class ReadModel(Protocol):
    """What a read-model module provides (see :mod:`projections.job_status`)."""

    TABLES: tuple[Table, ...]
    SCHEMA: tuple[str, ...]

    def apply(self, tx: Tx, event: Event, log_zone: str | None = None) -> bool: ...


# Applied to each event in this order, in one transaction. balances goes first:
# it reads a job's status before job_status records the outcome, to count a
# job's usage once.
PROJECTIONS: tuple[ReadModel, ...] = (balances, job_status, zone_jobs,  # type: ignore[assignment]
                                      api_keys)
POSITION = "jobs"  # the tracking row every read model shares
TABLES = tuple(t for p in PROJECTIONS for t in p.TABLES)
SCHEMA = tuple(s for p in PROJECTIONS for s in p.SCHEMA)


def apply_all(tx: Tx, event: Event, subject: str) -> None:
    """Apply ``event``, logged on ``subject``, to every read model, in order: the
    one way the projector, a rebuild and the audit project an event."""
    zone = subjects.zone_of_event(subject)
    for read_model in PROJECTIONS:
        read_model.apply(tx, event, zone)


def is_empty(tx: Tx) -> bool:
    """True when no read model holds a row (a rebuild needs an empty store)."""
    return not any(tx.query(f"SELECT 1 AS one FROM {t.name} LIMIT 1") for t in TABLES)


def open_store_url(url_or_path: str | Path, *, schema: str | None = None,
                   scratch: bool = False) -> Store:
    """A store of the read models: PostgreSQL for a ``postgresql://`` URL (its
    tables in ``schema`` when given), else SQLite at that path (``scratch``: a
    rebuild's file, see :class:`~projections.store.SqliteStore`)."""
    target = str(url_or_path)
    if target.startswith(POSTGRES_SCHEMES):
        if scratch:
            raise ValueError("a scratch store is a SQLite file")
        return PostgresStore(target, SCHEMA, schema=schema)
    if schema is not None:
        raise ValueError("schema applies to PostgreSQL stores only")
    return SqliteStore(target, SCHEMA, scratch=scratch)


def open_store(settings: Settings) -> Store:
    """The store this deployment uses: ``database_url`` if set, else local SQLite."""
    if settings.database_url:
        return open_store_url(settings.database_url)
    return open_store_url(settings.sqlite_path("readmodels"))
