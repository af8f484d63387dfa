"""Ledger throughput: reservations + settlements per second (one reserve, then
one settle with an operator's RCP award, per job) on SQLite and PostgreSQL, at
1 and 64 in flight (threads), all jobs on one account and spread over 16,
beside a raw baseline measured in the same run on the same database: plain SQL
write transactions (insert two rows, update one) through sqlite3 / psycopg.

    .venv/bin/python -m bench.ledger [--seconds 3] [--pg URL | --no-pg]

A job costs the ledger two write transactions (reserve, settle), so the
baseline is shown as raw transactions/s and as pairs/s (half of that); the
ratio is ledger pairs/s over baseline pairs/s. PostgreSQL comes from --pg, else
INFERBUS_TEST_DATABASE_URL; each run uses a schema of its own, dropped after.
Prints a table and writes bench/results/ledger.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from bus.config import Settings
from bus.events import MICRO
from bus.ledger import Ledger
from bench.report import save

SHAPES = [(1, 1), (1, 64), (16, 1), (16, 64)]  # (accounts, in flight)
DEADLINE = datetime.now(timezone.utc) + timedelta(days=1)


def run_for(seconds: float, in_flight: int, one: Callable[[int, int], None]) -> tuple[int, float]:
    """Call ``one(worker, i)`` from ``in_flight`` threads until time is up;
    returns (calls completed, elapsed seconds)."""
    stop = time.perf_counter() + seconds
    counts = [0] * in_flight

    def worker(w: int) -> None:
        while time.perf_counter() < stop:
            one(w, counts[w])
            counts[w] += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        for f in [pool.submit(worker, w) for w in range(in_flight)]:
            f.result()
    return sum(counts), time.perf_counter() - start


def ledger_pairs(ledger: Ledger, accounts: int, in_flight: int, seconds: float) -> float:
    run = uuid.uuid4().hex[:8]
    names = [f"acct-{run}-{a}" for a in range(accounts)]
    for name in names:
        ledger.deposit(name, 10**9 * MICRO)

    def job(w: int, i: int) -> None:
        job_id = f"{run}-{w}-{i}"
        ledger.reserve(names[(w + i) % accounts], job_id, 2 * MICRO, key_id="k", zone="eu",
                       deadline=DEADLINE)
        ledger.settle(job_id, MICRO, operator=f"op-{w % 4}", node_id="n", points=1)

    run_for(0.3, in_flight, job)  # warm-up: connections, caches
    done, elapsed = run_for(seconds, in_flight, job)
    return done / elapsed


def raw_sqlite(path: str, accounts: int, in_flight: int, seconds: float) -> float:
    local = threading.local()
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")  # as eventsourcing's SQLite recorder
    setup.execute("CREATE TABLE IF NOT EXISTS raw_rows (id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    setup.execute("CREATE TABLE IF NOT EXISTS raw_accounts (a INTEGER PRIMARY KEY, n INTEGER)")
    setup.executemany("INSERT OR IGNORE INTO raw_accounts VALUES (?, 0)",
                      [(a,) for a in range(accounts)])
    setup.close()

    def tx(w: int, i: int) -> None:
        if not hasattr(local, "conn"):
            local.conn = sqlite3.connect(path, isolation_level=None, timeout=10)
        c = local.conn
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO raw_rows (k, v) VALUES (?, ?)",
                      [(f"{w}-{i}", b"x" * 200), (f"{w}-{i}b", b"y" * 200)])
        c.execute("UPDATE raw_accounts SET n = n + 1 WHERE a = ?", ((w + i) % accounts,))
        c.execute("COMMIT")

    run_for(0.3, in_flight, tx)
    done, elapsed = run_for(seconds, in_flight, tx)
    return done / elapsed


def raw_postgres(url: str, schema: str, accounts: int, in_flight: int, seconds: float) -> float:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.raw_rows (id BIGSERIAL PRIMARY KEY, "
                          "k TEXT, v BYTEA)").format(sql.Identifier(schema)))
        c.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.raw_accounts (a INT PRIMARY KEY, "
                          "n BIGINT)").format(sql.Identifier(schema)))
        c.execute(sql.SQL("INSERT INTO {}.raw_accounts SELECT g, 0 FROM generate_series(0, %s) g "
                          "ON CONFLICT DO NOTHING").format(sql.Identifier(schema)), (accounts,))
    # 15 connections: eventsourcing's default pool (5 + 10 overflow) for the ledger.
    with ConnectionPool(url, min_size=min(in_flight, 15), max_size=15, open=True) as pool:
        rows = sql.SQL("INSERT INTO {}.raw_rows (k, v) VALUES (%s, %s), (%s, %s)").format(
            sql.Identifier(schema))
        update = sql.SQL("UPDATE {}.raw_accounts SET n = n + 1 WHERE a = %s").format(
            sql.Identifier(schema))

        def tx(w: int, i: int) -> None:
            with pool.connection() as c, c.transaction():
                c.execute(rows, (f"{w}-{i}", b"x" * 200, f"{w}-{i}b", b"y" * 200))
                c.execute(update, ((w + i) % accounts,))

        run_for(0.3, in_flight, tx)
        done, elapsed = run_for(seconds, in_flight, tx)
    return done / elapsed


def bench_backend(name: str, settings: Settings, raw: Callable[[int, int, float], float],
                  seconds: float) -> list[dict]:
    rows = []
    ledger = Ledger.open(settings)
    try:
        for accounts, in_flight in SHAPES:
            pairs = ledger_pairs(ledger, accounts, in_flight, seconds)
            raw_tx = raw(accounts, in_flight, seconds)
            rows.append({"backend": name, "accounts": accounts, "in_flight": in_flight,
                         "ledger_pairs_per_s": round(pairs, 1), "raw_tx_per_s": round(raw_tx, 1),
                         "raw_pairs_per_s": round(raw_tx / 2, 1),
                         "ratio": round(pairs / (raw_tx / 2), 3)})
            print(f"  {name} accounts={accounts} in_flight={in_flight}: "
                  f"{pairs:.0f} pairs/s (raw {raw_tx:.0f} tx/s)", flush=True)
    finally:
        ledger.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--pg", default=os.environ.get("INFERBUS_TEST_DATABASE_URL"))
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="inferbus-bench-ledger-"))
    try:
        settings = Settings(data_dir=tmp, database_url=None)
        db = str(settings.sqlite_path("ledger"))
        rows += bench_backend("sqlite", settings, lambda a, f, s: raw_sqlite(db, a, f, s),
                              args.seconds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.pg and not args.no_pg:
        schema = f"bench_ledger_{uuid.uuid4().hex[:8]}"
        url = f"{args.pg}{'&' if '?' in args.pg else '?'}options=-csearch_path%3D{schema}"
        try:
            rows += bench_backend("postgres", Settings(data_dir=tmp, database_url=url),
                                  lambda a, f, s: raw_postgres(args.pg, schema, a, f, s),
                                  args.seconds)
        finally:
            with psycopg.connect(args.pg, autocommit=True) as c:
                c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
    else:
        print("PostgreSQL skipped: pass --pg URL or set INFERBUS_TEST_DATABASE_URL")

    print(f"\n{'backend':<10}{'accounts':>9}{'in flight':>10}{'ledger pairs/s':>16}"
          f"{'raw tx/s':>10}{'raw pairs/s':>13}{'ratio':>7}")
    for r in rows:
        print(f"{r['backend']:<10}{r['accounts']:>9}{r['in_flight']:>10}"
              f"{r['ledger_pairs_per_s']:>16.0f}{r['raw_tx_per_s']:>10.0f}"
              f"{r['raw_pairs_per_s']:>13.0f}{r['ratio']:>7.2f}")
    save("ledger", {
        "what": "reserve + settle (with RCP award) per job; raw = INSERT 2 rows + UPDATE 1 "
                "per transaction, two transactions per pair",
        "seconds_per_measurement": args.seconds, "cpus": os.cpu_count(),
        "python": platform.python_version(), "rows": rows})


if __name__ == "__main__":
    main()
