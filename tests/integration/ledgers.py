"""The ``backend`` fixture for ledger tests on real stores: a SQLite file, and
PostgreSQL when ``INFERBUS_TEST_DATABASE_URL`` is set (each test in a schema of
its own, dropped afterwards; skipped, with the reason shown, otherwise)."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from bus.config import Settings
from ledger import Ledger


@dataclass
class Backend:
    name: str
    settings: Settings
    opened: list[Ledger] = field(default_factory=list)

    def open(self) -> Ledger:
        ledger = Ledger.open(self.settings)
        self.opened.append(ledger)
        return ledger


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Iterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", Settings(data_dir=tmp_path / "data", database_url=None))
        yield backend
        for ledger in backend.opened:
            ledger.close()
        return
    base = request.getfixturevalue("postgres_url")  # skips, with its reason, when unset
    schema = f"t_ledger_{uuid.uuid4().hex[:12]}"
    url = f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    backend = Backend("postgres", Settings(data_dir=tmp_path / "data", database_url=url))
    yield backend
    for ledger in backend.opened:
        ledger.close()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
