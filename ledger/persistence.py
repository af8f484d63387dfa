"""The ledger's database: eventsourcing's persistence settings from ours, and
failing fast while a PostgreSQL server is down.

Through an outage eventsourcing retries every database call ten times, each
waiting up to ``POSTGRES_CONNECT_TIMEOUT`` for a pooled connection: some 10 s
before a call into a dead server fails. :class:`Outage` remembers such a
failure; until a plain connection succeeds again, each later call first
tries one (refused at once while the server is down) for up to a second, then
fails with eventsourcing's ``OperationalError``, which the API answers as a
503. The first call that connects clears it, and the pool reconnects by
itself, so no process needs a restart.
"""
from __future__ import annotations

import functools
import re
import time
from typing import Any, Callable, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError

from bus.config import Settings

F = TypeVar("F", bound=Callable[..., Any])
PROBE_TIMEOUT_S = 2  # libpq connect_timeout: a server that does not answer at all
# While down, a call waits this long for the server before failing: an API
# client still hears within a second or two, and a consumer that retries at
# once (settlement nacks, and is redelivered) does not spin.
WAIT_S = 1.0
PROBE_EVERY_S = 0.2


def shard_name(base: str, shard: int) -> str:
    """Shard 0 keeps the ledger's own name (a ledger that grows shards keeps its
    first); shard k is ``<base>_<k>``."""
    return base if shard == 0 else f"{base}_{shard}"


def ledger_env(settings: Settings, shard: int = 0) -> dict[str, str]:
    """The eventsourcing persistence settings for ``settings.database_url``, for
    ledger shard ``shard``: its own SQLite file, or its own PostgreSQL schema."""
    url = settings.database_url
    if not url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(settings.sqlite_path(shard_name("ledger", shard))),
                "SQLITE_LOCK_TIMEOUT": "10"}  # seconds a writer waits for another process
    if not url.startswith(("postgresql://", "postgres://")):
        raise ValueError("INFERBUS_DATABASE_URL must be a postgresql:// URL")
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres",
           "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
           "POSTGRES_HOST": parts.hostname or query.get("host", ["localhost"])[0],
           "POSTGRES_PORT": str(parts.port or 5432),
           "POSTGRES_USER": unquote(parts.username or "postgres"),
           "POSTGRES_PASSWORD": unquote(parts.password or ""),
           # Each insert takes an EXCLUSIVE table lock (so notification ids
           # commit in order): wait at most 5 s for it; the recorder retries.
           "POSTGRES_LOCK_TIMEOUT": "5",
           # Seconds a call waits for a pooled connection, per recorder try.
           "POSTGRES_CONNECT_TIMEOUT": "1"}
    found = re.search(r"-c\s*search_path\s*=\s*([^\s,]+)", " ".join(query.get("options", [])))
    schema = found.group(1).strip('"') if found else None
    if schema or shard:
        env["POSTGRES_SCHEMA"] = shard_name(schema or "ledger", shard)
    return env


class Outage:
    """Whether the ledger's PostgreSQL server is believed down (``url`` None:
    SQLite or in-memory, never)."""

    def __init__(self, url: str | None = None) -> None:
        self._url, self._down = url, False

    def check(self) -> None:
        """Return once the server takes connections again; raise
        ``OperationalError`` if it still refuses them after ``WAIT_S``."""
        if not self._down or self._url is None:
            return
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                psycopg.connect(self._url, connect_timeout=PROBE_TIMEOUT_S).close()
                break
            except psycopg.Error as exc:
                if time.monotonic() >= deadline:
                    raise OperationalError(f"ledger database unavailable: {exc}") from None
            time.sleep(PROBE_EVERY_S)
        self._down = False

    def suspect(self) -> None:
        """A call failed on the database itself: probe before the next one."""
        self._down = self._url is not None


def guarded(method: F) -> F:
    """A ledger method that fails fast while its database is known to be down
    (the instance has an ``outage``: :class:`Outage`)."""
    @functools.wraps(method)
    def call(self, *args: Any, **kwargs: Any) -> Any:
        self.outage.check()
        try:
            return method(self, *args, **kwargs)
        except (OperationalError, InterfaceError):
            self.outage.suspect()
            raise
    return call  # type: ignore[return-value]
