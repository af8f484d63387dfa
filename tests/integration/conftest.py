"""Fixtures for the read-model and audit tests: a JetStream server of the
test's own and stores of each backend (SQLite always; PostgreSQL when
``INFERBUS_TEST_DATABASE_URL`` is set, each test in its own schemas)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import nats
import pytest
import pytest_asyncio

from bus.config import Settings
from bus.streams import ensure_streams
from ledger import Ledger
from projections.readmodels import open_store_url
from projections.store import Store

PG_URL_ENV = "INFERBUS_TEST_DATABASE_URL"


@pytest_asyncio.fixture
async def js(fresh_nats) -> AsyncIterator[nats.js.JetStreamContext]:
    """JetStream on a server of the test's own: tests count stream contents."""
    nc = await nats.connect(fresh_nats.url)
    await ensure_streams(nc.jetstream())
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
def ledger(fresh_nats, tmp_path) -> Iterator[Ledger]:
    """A SQLite ledger in the test's own data dir."""
    opened = Ledger.open(Settings(data_dir=tmp_path, nats_url=fresh_nats.url))
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Opens stores of one backend: ``stores("name")`` twice opens the same
    database again (a process restart), a new name an empty one."""
    opened: list[Store] = []
    schemas: list[str] = []
    pg_url = os.environ.get(PG_URL_ENV)
    if request.param == "postgres" and not pg_url:
        pytest.skip(f"{PG_URL_ENV} not set: PostgreSQL store not tested")
    prefix = f"t_{uuid.uuid4().hex[:12]}"

    def open_named(name: str = "readmodels") -> Store:
        if request.param == "sqlite":
            store = open_store_url(tmp_path / f"{name}.sqlite3")
        else:
            schemas.append(f"{prefix}_{name}")
            store = open_store_url(pg_url, schema=schemas[-1])
        opened.append(store)
        return store

    yield open_named
    for store in opened:
        store.close()
    if schemas:
        import psycopg
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for schema in set(schemas):
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store(stores: Callable[..., Store]) -> Store:
    return stores()
