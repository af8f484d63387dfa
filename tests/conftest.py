"""Shared fixtures: a real nats-server, a tiny model, PostgreSQL when configured."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.natsd import NatsServer
from tests.tiny_model import build_tiny_model

TEST_DATA = Path(__file__).parent / "data"
TINY_MODEL = "tiny-random"
LONG_MODEL = "tiny-long"  # the same size with an 8k context: jobs long enough to interrupt


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """One JetStream server for the session; tests isolate by job ids and zones."""
    server = NatsServer(tmp_path_factory.mktemp("nats") / "store").start()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats(tmp_path):
    """A JetStream server of the test's own, for tests that count stream contents."""
    server = NatsServer(tmp_path / "nats-store").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """A models dir holding the tiny random-weight models ``TINY_MODEL`` and ``LONG_MODEL``."""
    path = tmp_path_factory.mktemp("models")
    build_tiny_model(path / TINY_MODEL)
    build_tiny_model(path / LONG_MODEL, context=8192)
    return path


@pytest.fixture(scope="session")
def geoip_db() -> Path:
    return TEST_DATA / "geoip" / "GeoLite2-City-Test.mmdb"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("INFERBUS_TEST_DATABASE_URL")
    if not url:
        pytest.skip("INFERBUS_TEST_DATABASE_URL is not set: PostgreSQL tests skipped")
    return url
