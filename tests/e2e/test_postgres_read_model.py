"""The whole stack with its read models in PostgreSQL instead of SQLite."""
import shutil
import time
import uuid
from urllib.parse import quote

import httpx
import psycopg
import pytest

from tests.conftest import TINY_MODEL
from tests.stack import Stack


@pytest.fixture
def pg_stack(postgres_url, fresh_nats, models_dir, tmp_path):
    schema = f"e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{sep}options={quote(f'-csearch_path={schema}')}"
    shutil.copytree(models_dir, tmp_path / "models")
    s = Stack(tmp_path, fresh_nats.url, env_extra={"INFERBUS_DATABASE_URL": url})
    s.start_projector()
    s.start_worker("eu", TINY_MODEL)
    s.start_api()
    try:
        s.key = s.new_key("pg")
        s.wait_for_model(s.key, TINY_MODEL)
        yield s, schema
    finally:
        s.stop()
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_async_job_is_served_from_the_postgres_read_model(pg_stack, postgres_url):
    s, schema = pg_stack
    auth = {"Authorization": f"Bearer {s.key}"}
    r = httpx.post(f"{s.base_url}/v1/completions", headers={**auth, "Prefer": "respond-async"},
                   json={"model": TINY_MODEL, "prompt": "Once", "max_tokens": 3})
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while (job := httpx.get(r.headers["location"], headers=auth).json())[
            "status"] != "completed":
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute(f'SELECT status, completion_tokens FROM "{schema}".jobs '
                           "WHERE job_id = %s", (job["id"],)).fetchone()
    assert row == ("completed", job["usage"]["completion_tokens"])
