"""Which store errors say only that another transaction was in the way
(``projections.poison.passing``): those are retried, never make an event poison.
Anything an event's content could cause is not among them, or one bad event would
stall its partition for good."""
from __future__ import annotations

import sqlite3

import psycopg
import pytest

from projections.poison import passing


@pytest.mark.parametrize("error", [
    psycopg.errors.DeadlockDetected("deadlock detected"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")])
def test_a_lock_conflict_on_postgresql_is_passing(error: Exception) -> None:
    assert passing(error)


@pytest.mark.parametrize("error", [
    psycopg.errors.NotNullViolation("null value in column"),
    psycopg.errors.TransactionIntegrityConstraintViolation("integrity"),
    psycopg.errors.NumericValueOutOfRange("integer out of range"),
    sqlite3.OperationalError("database is locked"),  # no code: not SQLite's own
    RuntimeError("database is locked")])
def test_an_error_an_event_could_cause_is_not_passing(error: Exception) -> None:
    assert not passing(error)


def test_sqlites_own_busy_database_is_passing(tmp_path) -> None:
    holder = sqlite3.connect(tmp_path / "db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as busy:
        sqlite3.connect(tmp_path / "db", timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    holder.close()
    assert passing(busy.value)
