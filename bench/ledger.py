"""Ledger throughput: reservations + settlements per second (one reserve, then
one settle with an operator's RCP award, per job) on SQLite and PostgreSQL, at
1 and 64 in flight, all jobs on one account and spread over 16, beside a raw
baseline measured in the same run on the same database: plain SQL write
transactions (insert two rows, update one) through sqlite3 / psycopg.

    .venv/bin/python -m bench.ledger [--seconds 3] [--pg URL | --no-pg]
                                     [--sqlite-synchronous NORMAL]

Three ways through the ledger, on the same database:
- one at a time: ``Ledger.reserve`` then ``Ledger.settle`` from N threads, one
  transaction each (how the API and settlement worked before group commit);
- grouped: N coroutines ``await ReserveGroup.reserve`` and hand each job to
  one of N more that settle it through the same coalescing front over
  ``Ledger.resolve_many`` (what the settlement consumer's pull batches do):
  reserves and settles overlap, as in the running system; one ``Ledger``;
- grouped, 2 ledgers: the same, reserves on one ``Ledger`` and settles on
  another (the API and the projector: separate locks and connections, so
  their groups race each other on the database as two processes do).

A job costs two write transactions when one at a time, so the baseline is
shown as raw transactions/s and as pairs/s (half of that); the ratio is
one-at-a-time pairs/s over baseline pairs/s. ``--sqlite-synchronous`` sets
that pragma on every SQLite connection, the ledger's and the baseline's
(default: SQLite's own, FULL). PostgreSQL comes from --pg, else
INFERBUS_TEST_DATABASE_URL; each run uses a schema of its own, dropped after.
Prints a table and writes bench/results/ledger.json.
"""
from __future__ import annotations

import argparse
import asyncio
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

from bench.report import save, with_schema
from bus.config import Settings
from bus.credits import MICRO
from ledger import Ledger, ReserveGroup, Settle
from ledger.group_commit import Coalescer

SHAPES = [(1, 1), (1, 64), (16, 1), (16, 64)]  # (accounts, in flight)
SQLITE_PRAGMAS: tuple[str, ...] = ()  # run on each baseline connection (--sqlite-synchronous)
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


def grouped_pairs(reserving: Ledger, settling: Ledger, accounts: int, in_flight: int,
                  seconds: float) -> tuple[float, float]:
    """Pairs/s through the async fronts; also the mean reservations per group."""
    run = uuid.uuid4().hex[:8]
    names = [f"grp-{run}-{a}" for a in range(accounts)]
    for name in names:
        reserving.deposit(name, 10**9 * MICRO)

    async def measure(for_s: float) -> tuple[int, float, float]:
        # Reserves and settles overlap, as the API's and settlement's do: each
        # reserved job is handed to a settling worker, never awaited in turn.
        front, settle = ReserveGroup(reserving), Coalescer(settling.resolve_many)
        stop = time.perf_counter() + for_s
        reserved: asyncio.Queue[str | None] = asyncio.Queue(maxsize=in_flight)
        done = [0]

        async def reserver(w: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                job_id = f"{run}-{for_s}-{w}-{i}"
                await front.reserve(names[(w + i) % accounts], job_id, 2 * MICRO, key_id="k",
                                    zone="eu", deadline=DEADLINE)
                await reserved.put(job_id)
                i += 1
            await reserved.put(None)

        async def settler(w: int) -> None:
            while (job_id := await reserved.get()) is not None:
                await settle.submit(Settle(job_id, MICRO, operator=f"op-{w % 4}", node_id="n",
                                           points=1))
                done[0] += 1

        start = time.perf_counter()
        await asyncio.gather(*(reserver(w) for w in range(in_flight)),
                             *(settler(w) for w in range(in_flight)))
        groups, reservations = front.stats
        return done[0], time.perf_counter() - start, reservations / max(groups, 1)

    asyncio.run(measure(0.3))  # warm-up: connections, caches
    done, elapsed, group = asyncio.run(measure(seconds))
    return done / elapsed, group


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
            for pragma in SQLITE_PRAGMAS:
                local.conn.execute(pragma)
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
    ledger, other = Ledger.open(settings), Ledger.open(settings)
    try:
        for accounts, in_flight in SHAPES:
            pairs = ledger_pairs(ledger, accounts, in_flight, seconds)
            grouped, group = grouped_pairs(ledger, ledger, accounts, in_flight, seconds)
            split, split_group = grouped_pairs(ledger, other, accounts, in_flight, seconds)
            raw_tx = raw(accounts, in_flight, seconds)
            rows.append({"backend": name, "accounts": accounts, "in_flight": in_flight,
                         "ledger_pairs_per_s": round(pairs, 1),
                         "grouped_pairs_per_s": round(grouped, 1),
                         "grouped_mean_group": round(group, 1),
                         "grouped_2_ledgers_pairs_per_s": round(split, 1),
                         "grouped_2_ledgers_mean_group": round(split_group, 1),
                         "raw_tx_per_s": round(raw_tx, 1),
                         "raw_pairs_per_s": round(raw_tx / 2, 1),
                         "ratio": round(pairs / (raw_tx / 2), 3)})
            print(f"  {name} accounts={accounts} in_flight={in_flight}: {pairs:.0f} pairs/s "
                  f"one at a time, {grouped:.0f} grouped (mean group {group:.1f}), "
                  f"{split:.0f} grouped on 2 ledgers (raw {raw_tx:.0f} tx/s)", flush=True)
    finally:
        ledger.close()
        other.close()
    return rows


def sqlite_synchronous(mode: str) -> None:
    """Every SQLite connection opened from now on (the ledger's, eventsourcing's
    pool, and the baseline's) runs ``PRAGMA synchronous=mode``."""
    from eventsourcing.sqlite import SQLiteConnectionPool
    make = SQLiteConnectionPool._create_connection

    def create(self):  # type: ignore[no-untyped-def]
        conn = make(self)
        conn._sqlite_conn.execute(f"PRAGMA synchronous={mode}")  # private: bench only
        return conn

    SQLiteConnectionPool._create_connection = create  # type: ignore[method-assign]
    global SQLITE_PRAGMAS
    SQLITE_PRAGMAS = (f"PRAGMA synchronous={mode}",)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--pg", default=os.environ.get("INFERBUS_TEST_DATABASE_URL"))
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--sqlite-synchronous", choices=["OFF", "NORMAL", "FULL", "EXTRA"])
    parser.add_argument("--out", default="ledger", help="bench/results/<out>.json")
    args = parser.parse_args()
    if args.sqlite_synchronous:
        sqlite_synchronous(args.sqlite_synchronous)
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
        url = with_schema(args.pg, schema)
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

    print(f"\n{'backend':<10}{'accounts':>9}{'in flight':>10}{'one-at-a-time':>15}"
          f"{'grouped':>9}{'(group)':>8}{'2 ledgers':>11}{'(group)':>8}"
          f"{'raw tx/s':>10}{'raw pairs/s':>13}{'ratio':>7}")
    for r in rows:
        print(f"{r['backend']:<10}{r['accounts']:>9}{r['in_flight']:>10}"
              f"{r['ledger_pairs_per_s']:>15.0f}{r['grouped_pairs_per_s']:>9.0f}"
              f"{r['grouped_mean_group']:>8.1f}{r['grouped_2_ledgers_pairs_per_s']:>11.0f}"
              f"{r['grouped_2_ledgers_mean_group']:>8.1f}{r['raw_tx_per_s']:>10.0f}"
              f"{r['raw_pairs_per_s']:>13.0f}{r['ratio']:>7.2f}")
    save(args.out, {
        "what": "reserve + settle (with RCP award) per job, pairs/s: one at a time (threads), "
                "grouped (coroutines through ReserveGroup and a resolve_many coalescer; group "
                "= mean reservations per transaction), grouped with reserves and settles on "
                "two Ledger instances; raw = INSERT 2 rows + UPDATE 1 per transaction, two "
                "transactions per pair",
        "sqlite_synchronous": args.sqlite_synchronous or "FULL (SQLite default)",
        "seconds_per_measurement": args.seconds, "cpus": os.cpu_count(),
        "python": platform.python_version(), "rows": rows})


if __name__ == "__main__":
    main()
