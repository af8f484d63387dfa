"""A database outage reaches API clients as a 503 in OpenAI's error shape."""
import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from api import errors
from ledger.persistence import Outage


def app_raising(exc: Exception) -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.get("/boom")
    async def boom():
        raise exc
    return app


@pytest.mark.parametrize("exc", [
    PoolTimeout("couldn't get a connection after 2.00 sec"),  # read models, server gone
    psycopg.OperationalError("server closed the connection unexpectedly"),
    OperationalError("ledger database unavailable"),  # the ledger, through eventsourcing
])
def test_database_unavailable_is_a_503_the_client_may_retry(exc):
    r = TestClient(app_raising(exc)).get("/boom")
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json() == {"error": {
        "message": "the credit ledger or job database is unavailable; retry shortly",
        "type": "service_unavailable", "param": None, "code": "database_unavailable"}}


def test_outage_fails_within_its_wait_while_the_server_refuses_connections():
    outage = Outage("postgresql://nobody@127.0.0.1:1/none")  # nothing listens on port 1
    outage.check()  # not suspected yet: no probe at all
    outage.suspect()
    with pytest.raises(OperationalError, match="unavailable"):
        outage.check()


def test_sqlite_and_memory_ledgers_never_probe():
    outage = Outage(None)
    outage.suspect()
    outage.check()
