"""The read-model store port and its SQLite and PostgreSQL adapters.

Projections and views speak one small port: ``store.transaction()`` yields a
:class:`Tx` whose ``execute``/``query`` take SQL written with qmark (``?``)
placeholders in the dialect both backends share (``INSERT ... ON CONFLICT``,
``COALESCE``, ``CASE``). Each adapter translates placeholders and values;
nothing outside this module knows which database it talks to.

A store is opened with the tables it must hold: ``CREATE ... IF NOT EXISTS``
statements (``{ts}`` stands for the timestamp type: ``TIMESTAMPTZ`` in
PostgreSQL, ISO-8601 text in SQLite), run idempotently on open, plus the
``tracking`` table of applied stream positions that every store has. Which
read models a deployment's store holds, and which backend it uses, is
:mod:`projections.readmodels`.

PostgreSQL schema: pass ``schema="name"`` to put the tables in their own
schema (created if missing; used by tests for isolation). It sets the
connection's ``search_path`` through libpq ``options``, replacing any
``options`` in the URL; without it, a URL such as
``postgresql://host/db?options=-csearch_path%3Dname`` works too, provided the
schema already exists.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

Params = Sequence[Any]

_TRACKING = """CREATE TABLE IF NOT EXISTS tracking (
    projection TEXT PRIMARY KEY,
    position BIGINT NOT NULL)"""
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_CREATED = re.compile(r"CREATE (?:UNIQUE )?(?:TABLE|INDEX) IF NOT EXISTS (\w+)")


@dataclass(frozen=True)
class Table:
    """A read-model table as ``inferbus audit`` compares it: its primary key and
    its timestamp columns (stored as text by SQLite, TIMESTAMPTZ by PostgreSQL)."""

    name: str
    key: str
    timestamps: tuple[str, ...] = ()


def utc(value: datetime | str) -> datetime:
    """A timestamp as the read models keep and return it: aware UTC. A naive one
    is taken as UTC; ISO text (how SQLite hands a stored one back) is parsed. One
    zone for every stored timestamp keeps SQLite's text order chronological."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class Tx(Protocol):
    """One open transaction. SQL uses ``?`` placeholders."""

    dialect: str  # "sqlite" or "postgres", for the rare statement that differs

    def execute(self, sql: str, params: Params = ()) -> None: ...

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]: ...


class Store(Protocol):
    """A relational read-model store (sync; async callers use ``asyncio.to_thread``)."""

    dialect: str

    def transaction(self, *, write: bool = True) -> AbstractContextManager[Tx]:
        """Commit on clean exit, roll back on exception."""
        ...

    def close(self) -> None: ...


# --- SQLite -----------------------------------------------------------------

class _SqliteTx:
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    # Inline rather than a call per value: a rebuild binds millions of them.
    def execute(self, sql: str, params: Params = ()) -> None:
        self._conn.execute(sql, [p.isoformat() if isinstance(p, datetime) else p for p in params])

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cursor = self._conn.execute(
            sql, [p.isoformat() if isinstance(p, datetime) else p for p in params])
        return [dict(row) for row in cursor.fetchall()]


class SqliteStore:
    """One connection guarded by a lock: callers may come from worker threads.

    Other processes open their own connection to the same file; WAL lets them
    read during our writes. Writers of the file (a projector per read-model
    partition) take turns on an advisory lock on ``<file>.lock`` first, which
    wakes the next one the moment it is free; SQLite's own ``busy_timeout``
    (kept as a backstop) polls in sleeps of up to 100 ms. A ``scratch`` store
    (the audit's rebuild) has one reader and writer at a time and may be lost in
    a crash: it trades WAL and fsync for speed."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, tables: Sequence[str] = (),
                 busy_timeout_ms: int = 5000, *, scratch: bool = False) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._turns = None if scratch or self.path == ":memory:" else \
            os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        with self._turn():  # opening writes too: the journal mode and the tables
            self._setup(tables, scratch)

    def _setup(self, tables: Sequence[str], scratch: bool) -> None:
        if scratch:
            # A rebuild nobody else reads and nobody needs after a crash: no
            # write-ahead log (the file stays one file, to copy when closed) and
            # no fsync, ~15% of a rebuild's time.
            self._conn.execute("PRAGMA journal_mode = MEMORY")
            self._conn.execute("PRAGMA synchronous = OFF")
        else:
            self._conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL is safe here: a commit lost to power failure rolls back rows
            # and position together, and the projector simply re-applies those events.
            self._conn.execute("PRAGMA synchronous = NORMAL")
        with self.transaction() as tx:
            for statement in (*tables, _TRACKING):
                tx.execute(statement.format(ts="TEXT"))

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """This process's turn to write the file, among the processes that do."""
        if self._turns is None:
            yield
            return
        fcntl.flock(self._turns, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._turns, fcntl.LOCK_UN)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        with self._lock, (self._turn() if write else contextlib.nullcontext()):
            # IMMEDIATE takes the write lock up front, so a competing writer waits
            # on busy_timeout rather than failing later on a lock upgrade.
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTx(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def copy_to(self, path: str | Path) -> None:
        """A consistent copy of the whole database at ``path``: SQLite's online
        backup in one step, one read transaction (the audit's snapshot)."""
        target = sqlite3.connect(str(path))
        try:
            with self._lock:
                self._conn.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._turns is not None:
                os.close(self._turns)
                self._turns = None


# --- PostgreSQL -------------------------------------------------------------

class _PgTx:
    dialect = "postgres"

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Params = ()) -> None:
        # Our SQL never contains a literal '?' or '%', so a plain replace is exact.
        self._conn.execute(sql.replace("?", "%s"), list(params))

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        return self._conn.execute(sql.replace("?", "%s"), list(params)).fetchall()


class PostgresStore:
    """A psycopg connection pool; each transaction borrows one connection.

    Through a database outage: a borrowed connection is checked first (one
    empty round trip), so one the server dropped is replaced rather than
    failing the caller, and a caller waits at most ``wait_s`` for a connection,
    then gets ``psycopg_pool.PoolTimeout`` (a ``psycopg.OperationalError``):
    the API answers 503 and the projector retries. The pool reconnects in the
    background, so nothing needs a restart once the server is back."""

    dialect = "postgres"

    def __init__(self, url: str, tables: Sequence[str] = (), *, schema: str | None = None,
                 max_size: int = 4, connect_timeout_s: float = 10.0, wait_s: float = 2.0) -> None:
        import psycopg
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        kwargs: dict[str, Any] = {"row_factory": dict_row}
        if schema is not None:
            if not _SCHEMA_NAME.match(schema):
                raise ValueError(f"schema {schema!r}: use lowercase letters, digits and '_'")
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            kwargs["options"] = f"-c search_path={schema}"
        self.schema = schema
        self._pool = ConnectionPool(url, min_size=1, max_size=max_size, kwargs=kwargs,
                                    open=True, name="inferbus-readmodels", timeout=wait_s,
                                    check=ConnectionPool.check_connection)
        try:
            self._pool.wait(connect_timeout_s)
            with self.transaction() as tx:
                # Two processes opening at once would race on CREATE TABLE IF NOT
                # EXISTS (a unique violation in pg_type); serialize them.
                tx.query("SELECT pg_advisory_xact_lock(7424130161)")
                # Only what is missing: CREATE INDEX IF NOT EXISTS locks its table
                # even when the index exists, and a projector writing the tables
                # meanwhile would deadlock with it.
                for statement in (*tables, _TRACKING):
                    name = _CREATED.search(statement)
                    if name is None or tx.query("SELECT to_regclass(?) IS NULL AS missing",
                                                (name.group(1),))[0]["missing"]:
                        tx.execute(statement.format(ts="TIMESTAMPTZ"))
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Tx]:
        # pool.connection() commits on clean exit and rolls back on exception.
        with self._pool.connection() as conn:
            if not write:
                conn.execute("SET TRANSACTION READ ONLY")
                yield _PgTx(conn)
                return
            # Pipeline mode: a write's statements go out without waiting for each
            # answer (a query still waits for its own), so a batch of events costs
            # a few round trips rather than several per event.
            with conn.pipeline():
                yield _PgTx(conn)

    def close(self) -> None:
        self._pool.close()


# --- tracking: the applied stream position of each projection ----------------

def read_position(tx: Tx, projection: str, *, lock: bool = False) -> int:
    """The last stream sequence ``projection`` applied (0 if none).

    With ``lock`` (inside a write transaction) the tracking row is created if
    missing and locked, so two projectors writing one store serialize on it and
    the second one sees the first one's position."""
    if lock:
        tx.execute("INSERT INTO tracking (projection, position) VALUES (?, 0) "
                   "ON CONFLICT (projection) DO NOTHING", (projection,))
    suffix = " FOR UPDATE" if lock and tx.dialect == "postgres" else ""
    rows = tx.query(f"SELECT position FROM tracking WHERE projection = ?{suffix}", (projection,))
    return int(rows[0]["position"]) if rows else 0


def write_position(tx: Tx, projection: str, position: int) -> None:
    tx.execute("INSERT INTO tracking (projection, position) VALUES (?, ?) "
               "ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
               (projection, position))
