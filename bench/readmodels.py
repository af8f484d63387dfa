"""Read-model throughput at 1, 2 and 4 partitions: jobs per second the read
models take in with ``N`` partitions, each kept by its own ``inferbus projector
--no-settle --partition K`` process, and the CPU each job costs them and the
nats-server.

    .venv/bin/python -m bench.readmodels [--jobs 6000] [--partitions 1,2,4] [--quick]
                                         [--database-url postgresql://...]

For each ``N`` (the baseline, 1, first), on a fresh data dir, store and
nats-server of the bench's own: untimed, a consistent history of ``--jobs``
jobs of 64 accounts is made (``tests.histories``: deposits, holds, submissions,
starts, signed outcomes, debits, refunds, RCP awards; job ids stamped with their
account's slot). Untimed too, the whole history is published as the network logs it (a
job's events under its slot, money under its account's ledger shard), then the
``N`` projector processes start. Timed: from a projector's first commit (their
start-up is not timed) until every partition's stored position reaches the last
event it reads: the read models catching up with a backlog, as fast as they can.
CPU per job is the utime+stime of the projector processes, and apart the
nats-server's and (with PostgreSQL) every ``postgres`` process's, in that window.
Then ``inferbus audit``'s own check (each partition rebuilt to its own position
and compared row by row, every invariant) must pass: else exit 1.
``--database-url``: the read models in PostgreSQL, each ``N`` in a schema of
its own. Prints a table and writes bench/results/readmodels.json.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats

from bench.report import (cpu_by_name, cpu_s, cpu_since, partition_counts, partitions_parser,
                          partitions_table, save_partitions, with_schema)
from bus.config import Settings
from bus.publish import MSG_ID, event_subject
from bus.signing import load_or_create_key
from bus.streams import ensure_streams
from projections.audit import audit
from projections.layout import layout, stored_positions
from projections.readmodels import open_store
from tests.histories import History, credit_history, relayed_shard
from tests.natsd import NatsServer

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS = 64


def messages(history: History, n: int) -> list[tuple[str, bytes, dict]]:
    """Each event as the network logs it with ``n`` partitions: (subject, data, headers)."""
    return [(event_subject(e, zone, relayed_shard(e, n)), e.model_dump_json().encode(),
             {MSG_ID: e.event_id}) for zone, e in history.events]


def positions(store) -> dict[str, int]:
    with store.transaction(write=False) as tx:
        return stored_positions(tx)


async def first_commit(store, procs: list[subprocess.Popen], server, log: Path) -> tuple:
    """Once a projector has committed its first batch: the processes', the
    server's and PostgreSQL's CPU seconds, and the clock, then (their start-up is
    not timed)."""
    deadline = time.monotonic() + 120
    while not any((await asyncio.to_thread(positions, store)).values()):
        if dead := [p for p in procs if p.poll() is not None]:
            raise RuntimeError(f"a projector exited {dead[0].returncode}: see {log}\n"
                               + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise TimeoutError(f"no projector committed in 120 s: see {log}")
        await asyncio.sleep(0.01)
    return ([cpu_s(p.pid) for p in procs], cpu_s(server.proc.pid),
            cpu_by_name("postgres")), time.perf_counter()


async def one(n: int, history: History, database_url: str | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"inferbus-readmodels-{n}-"))
    (root / "nats").mkdir()
    server = NatsServer(root / "nats").start()
    schema = f"bench_readmodels_{n}_{uuid.uuid4().hex[:8]}"
    db = with_schema(database_url, schema) if database_url else None
    if database_url:
        await asyncio.to_thread(drop_schema, database_url, schema, create=True)
    settings = Settings(data_dir=root / "data", nats_url=server.url, ledger_partitions=n,
                        database_url=db)
    parts, log = layout(n), root / "projector.log"
    batch = messages(history, n)
    first = 1  # a fresh stream: the i-th message is stored at sequence i + 1
    expected = {p.name: max((first + i for i, (s, _, _) in enumerate(batch) if p.holds(s)),
                            default=0) for p in parts}
    procs: list[subprocess.Popen] = []
    store = None
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream(timeout=30)
        await ensure_streams(js)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")}
        env.update(INFERBUS_NATS_URL=server.url, INFERBUS_DATA_DIR=str(settings.data_dir),
                   INFERBUS_LEDGER_PARTITIONS=str(n), **({"INFERBUS_DATABASE_URL": db}
                                                         if db else {}))
        started = time.perf_counter()
        for i in range(0, len(batch), 500):  # pipelined: a chunk in flight at once
            await asyncio.gather(*(js.publish(s, d, headers=h, timeout=30)
                                   for s, d, h in batch[i:i + 500]))
        published = time.perf_counter() - started
        store = open_store(settings)  # before the projectors: polled, read-only, from now on
        with open(log, "ab") as out:
            procs = [subprocess.Popen([sys.executable, "-m", "cli", "projector", "--no-settle",
                                       "--partition", str(k)], cwd=ROOT, env=env, stdout=out,
                                      stderr=subprocess.STDOUT) for k in range(n)]
        cpu0, started = await first_commit(store, procs, server, log)
        deadline = time.monotonic() + 600
        while True:
            now = await asyncio.to_thread(positions, store)
            if all(now.get(name, 0) >= seq for name, seq in expected.items()):
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"the read models did not catch up ({now}): see {log}")
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        cpu1 = [cpu_s(p.pid) for p in procs], cpu_s(server.proc.pid), cpu_by_name("postgres")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
        report = await audit(js, store, partitions=n)
    finally:
        if store is not None:
            store.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        await nc.close()
        server.stop()
        text = log.read_text(errors="replace") if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        if database_url:
            await asyncio.to_thread(drop_schema, database_url, schema)
    jobs = len({e.job_id for _, e in history.events if hasattr(e, "job_id")})
    read_cpu, nats_cpu = sum(cpu1[0]) - sum(cpu0[0]), cpu1[1] - cpu0[1]
    db_cpu = cpu_since(cpu0[2], cpu1[2]) if database_url else 0.0
    return {"partitions": n, "jobs": jobs, "events": len(batch), "seconds": seconds,
            "publish_s": published, "jobs_per_s": jobs / seconds,
            "events_per_s": len(batch) / seconds,
            "projector_cpu_ms_per_job": read_cpu * 1000 / jobs,
            "nats_cpu_ms_per_job": nats_cpu * 1000 / jobs,
            "postgres_cpu_ms_per_job": db_cpu * 1000 / jobs,
            "cores_busy": (read_cpu + nats_cpu + db_cpu) / seconds,
            "projector_cpu_s_each": [b - a for a, b in zip(cpu0[0], cpu1[0])],
            "log_tracebacks": text.count("Traceback"),
            "audit_ok": report.ok, "audit": report.render()}


def drop_schema(url: str, schema: str, create: bool = False) -> None:
    """Drop ``schema`` (``create``: make it, empty)."""
    import psycopg
    from psycopg import sql
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        if create:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def main() -> None:
    args = partitions_parser(__doc__, 6000, 800, "the read models").parse_args()
    jobs = args.jobs or (800 if args.quick else 6000)
    counts = partition_counts(args.partitions)
    keys_dir = Path(tempfile.mkdtemp(prefix="inferbus-readmodels-keys-"))
    try:
        keys = [load_or_create_key(keys_dir / f"node-{i}.key") for i in range(8)]
        history = credit_history(17, jobs=jobs, accounts=ACCOUNTS, nodes=keys, stamped=True)
        rows = [asyncio.run(one(n, history, args.database_url)) for n in counts]
    finally:
        shutil.rmtree(keys_dir, ignore_errors=True)
    partitions_table(rows, [
        ("partitions", "partitions", "d"), ("jobs", "jobs", "d"), ("events", "events", "d"),
        ("seconds", "seconds", ".2f"), ("jobs/s", "jobs_per_s", ".0f"), ("vs 1", "ratio", ""),
        ("projector CPU ms/job", "projector_cpu_ms_per_job", ".3f"),
        ("nats CPU ms/job", "nats_cpu_ms_per_job", ".3f"),
        ("pg CPU ms/job", "postgres_cpu_ms_per_job", ".3f"), ("cores", "cores_busy", ".2f"),
        ("audit ok", "audit_ok", "")])
    failed = [r for r in rows if not r["audit_ok"] or r["log_tracebacks"]]
    save_partitions("readmodels", args, rows, not failed, "the read models")
    if failed:
        sys.exit("bench.readmodels: " + "\n".join(
            f"{r['partitions']} partitions: {r['log_tracebacks']} tracebacks\n{r['audit']}"
            for r in failed))


if __name__ == "__main__":
    main()
