"""The jobs read model's hot queries use an index: the table holds every job ever,
and the API asks some of these many times a second."""
from __future__ import annotations

from projections.job_status import ACTIVE_JOBS_SQL
from projections.readmodels import open_store_url


def plan(store, sql: str, args: tuple) -> str:
    with store.transaction(write=False) as tx:
        return " ".join(str(dict(r)) for r in tx.query(f"EXPLAIN QUERY PLAN {sql}", args))


def test_counting_a_keys_open_jobs_reads_an_index_not_every_job(tmp_path):
    store = open_store_url(tmp_path / "x.sqlite3")
    try:
        found = plan(store, ACTIVE_JOBS_SQL, ("k",))
    finally:
        store.close()
    assert "USING COVERING INDEX jobs_by_key" in found, found
