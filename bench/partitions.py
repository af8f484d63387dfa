"""Billing throughput at 1, 2 and 4 ledger shards: job settlements per second
with ``N`` shards, each served by its own ``inferbus settle --shard K``
process, and the CPU each job costs those processes and the nats-server.

    .venv/bin/python -m bench.partitions [--jobs 4000] [--partitions 1,2,4] [--quick]
                                         [--database-url postgresql://...]

For each ``N`` (the baseline, 1, first), on a fresh data dir and a fresh
nats-server of the bench's own: untimed, ~64 consumer accounts are funded and
``--jobs`` jobs reserved (ids stamped with their account's slot, as the API
mints them), the ledger closed, and ``N`` settle processes started until each
shard's settlement durable exists and the relay has logged the holds. Timed:
every job's validly signed ``JobCompleted`` (run by the nodes of 8 operators,
so some RCP awards cross shards) is published, pipelined, until every durable
has nothing pending or unacked (a message is acked only after its ledger save,
so every reservation is resolved by then). CPU per job is the utime+stime the
settle processes, and apart the nats-server, spent in that window; "cores" is
both together per second of it (the bench's own publishing is not counted);
"idle ms/s" what the settle processes burn per second before any job comes.
Then every reservation must be settled, the accounts' ``spent`` must add up to
the debits, and the operators' RCP to the awards: else exit 1.
``--database-url``: a PostgreSQL ledger, each ``N`` in a schema of its own.
Prints a table and writes bench/results/partitions.json.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nats

from bench.report import (cpu_s, partition_counts, partitions_parser, partitions_table,
                          save_partitions, with_schema)
from bus import signing, subjects
from bus.config import Settings
from bus.credits import MICRO
from bus.events import JobCompleted, Usage, new_id, output_hash
from bus.partitions import stamp
from bus.pricing import Pricing
from bus.publish import MSG_ID, event_subject
from bus.streams import ensure_streams
from ledger import open_ledger, settlement
from ledger.commands import Reserve
from ledger.persistence import shard_name
from tests.natsd import NatsServer

ROOT = Path(__file__).resolve().parent.parent
ACCOUNTS, OPERATORS = 64, 8
MODEL, USAGE, TIER = "m", Usage(prompt_tokens=10, completion_tokens=20), 1
HOLD = MICRO // 5  # each job's reservation; its cost (50,000 micro-credits) is less
def drop_schemas(url: str, base: str, n: int) -> None:
    """Drop the schemas of every shard (and the read models' in the first)."""
    import psycopg
    from psycopg import sql
    with psycopg.connect(url, autocommit=True) as conn:
        for k in range(n):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(shard_name(base, k))))


def prepare(settings: Settings, jobs: int) -> list[tuple[str, str]]:
    """Fund the accounts and hold ``jobs`` jobs; their ``(job_id, account)``."""
    books = open_ledger(settings)
    try:
        accounts = [f"acct-{i}" for i in range(ACCOUNTS)]
        for a in accounts:
            books.deposit(a, (jobs // ACCOUNTS + 2) * HOLD * 2)
        held = [(stamp(new_id(), accounts[i % ACCOUNTS]), accounts[i % ACCOUNTS])
                for i in range(jobs)]
        deadline = datetime.now(timezone.utc) + timedelta(hours=2)
        for i in range(0, jobs, 250):
            outcomes = books.reserve_many([Reserve(a, j, HOLD, "k", "eu", deadline)
                                           for j, a in held[i:i + 250]])
            if failed := [o for o in outcomes if isinstance(o, Exception)]:
                raise RuntimeError(f"reserving failed: {failed[0]!r}")
        return held
    finally:
        books.close()


def completions(key, held: list[tuple[str, str]]) -> list[tuple[str, bytes, dict]]:
    """Each job's signed ``JobCompleted``, ready to publish: (subject, data, headers)."""
    out = []
    for i, (job_id, _) in enumerate(held):
        fields = dict(job_id=job_id, operator=f"op-{i % OPERATORS}", tier=TIER, attempt=1,
                      input_hash="i", output_hash=output_hash("x"))
        event = JobCompleted(model=MODEL, node_id=signing.node_id(key), zone="eu", text="x",
                             finish_reason="stop", usage=USAGE,
                             signature=signing.sign_result(key, usage=USAGE, **fields), **fields)
        out.append((event_subject(event, "eu"), event.model_dump_json().encode(),
                    {MSG_ID: event.event_id}))
    return out


async def wait_ready(js, procs: list[subprocess.Popen], durables: list[str], log: Path) -> None:
    """Until every durable exists and the relays have logged what was prepared
    (the stream stops growing for 3 s: a shard's relay with nothing on the log yet
    waits 2 s for its position), so none of that falls in the timed window."""
    deadline, last, still = time.monotonic() + 120, -1, 0
    while True:
        if dead := [p for p in procs if p.poll() is not None]:
            raise RuntimeError(f"a settle process exited {dead[0].returncode}: see {log}\n"
                               + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise TimeoutError(f"settle processes not ready in 120 s: see {log}")
        try:
            for name in durables:
                await js.consumer_info(subjects.EVENTS_STREAM, name)
        except Exception:  # noqa: BLE001 - not created yet
            await asyncio.sleep(0.2)
            continue
        count = (await js.stream_info(subjects.EVENTS_STREAM)).state.messages
        still = still + 1 if count == last else 0
        last = count
        if still >= 15:
            return
        await asyncio.sleep(0.2)


async def drained(js, durables: list[str]) -> tuple[bool, int]:
    """Whether no durable has anything pending or unacked; redeliveries so far."""
    done, redelivered = True, 0
    for name in durables:
        info = await js.consumer_info(subjects.EVENTS_STREAM, name)
        done = done and info.num_pending == 0 and info.num_ack_pending == 0
        redelivered += info.num_redelivered
    return done, redelivered


def check(settings: Settings, held: list[tuple[str, str]]) -> list[str]:
    """What is wrong with the books after the run (nothing, if all is well)."""
    pricing, problems = Pricing(), []
    debit = min(pricing.cost(MODEL, USAGE), HOLD)
    books = open_ledger(settings)
    try:
        views = [books.reservation(job_id) for job_id, _ in held]
        unsettled = [j for (j, _), v in zip(held, views) if v is None or v.status != "settled"]
        if unsettled:
            problems.append(f"{len(unsettled)} of {len(held)} reservations not settled, "
                            f"e.g. {unsettled[0]}")
        debited = sum(v.debited for v in views if v is not None)
        accounts = books.accounts()
    finally:
        books.close()
    spent, rcp = sum(a.spent for a in accounts), sum(a.rcp for a in accounts)
    held_now = sum(a.held for a in accounts)
    if spent != debited or debited != debit * len(held):
        problems.append(f"spent {spent}, debited {debited}, expected {debit * len(held)}")
    if rcp != pricing.points(USAGE.completion_tokens, TIER) * len(held):
        problems.append(f"RCP {rcp}, expected "
                        f"{pricing.points(USAGE.completion_tokens, TIER) * len(held)}")
    if held_now:
        problems.append(f"{held_now} micro-credits still held")
    return problems


async def one(n: int, jobs: int, database_url: str | None, key, logs: Path | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"inferbus-partitions-{n}-"))
    (root / "nats").mkdir()
    server = NatsServer(root / "nats").start()
    schema = f"bench_partitions_{n}_{uuid.uuid4().hex[:8]}"
    db = with_schema(database_url, schema) if database_url else None
    settings = Settings(data_dir=root / "data", nats_url=server.url, ledger_partitions=n,
                        database_url=db)
    procs: list[subprocess.Popen] = []
    log = root / "settle.log"
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream(timeout=30)
        await ensure_streams(js)
        held = await asyncio.to_thread(prepare, settings, jobs)
        messages = await asyncio.to_thread(completions, key, held)
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERBUS_")}
        env.update(INFERBUS_NATS_URL=server.url, INFERBUS_DATA_DIR=str(settings.data_dir),
                   INFERBUS_LEDGER_PARTITIONS=str(n), **({"INFERBUS_DATABASE_URL": db}
                                                         if db else {}))
        with open(log, "ab") as out:
            procs = [subprocess.Popen([sys.executable, "-m", "cli", "settle", "--shard", str(k)],
                                      cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
                     for k in range(n)]
        durables = [settlement.durable(k, n) for k in range(n)]
        await wait_ready(js, procs, durables, log)
        idle0 = sum(cpu_s(p.pid) for p in procs)  # what the N processes burn doing nothing
        await asyncio.sleep(1.0)
        idle = sum(cpu_s(p.pid) for p in procs) - idle0
        cpu0 = [cpu_s(p.pid) for p in procs], cpu_s(server.proc.pid)
        started = time.perf_counter()
        for i in range(0, len(messages), 500):  # pipelined: a chunk in flight at once
            await asyncio.gather(*(js.publish(s, d, headers=h, timeout=30)
                                   for s, d, h in messages[i:i + 500]))
        published = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while not (state := await drained(js, durables))[0]:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"settlement did not drain: see {log}")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu1 = [cpu_s(p.pid) for p in procs], cpu_s(server.proc.pid)
        settle_cpu, nats_cpu = sum(cpu1[0]) - sum(cpu0[0]), cpu1[1] - cpu0[1]
        per_shard = [b - a for a, b in zip(cpu0[0], cpu1[0])]
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        await nc.close()
        server.stop()
    try:
        problems = await asyncio.to_thread(check, settings, held)
        text = log.read_text(errors="replace")
        errors = [line for line in text.splitlines() if "error" in line.lower()]
        tracebacks = text.count("Traceback")
        if logs:
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, logs / f"settle-{n}.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if database_url:
            await asyncio.to_thread(drop_schemas, database_url, schema, n)
    return {"partitions": n, "jobs": jobs, "seconds": seconds, "publish_s": published,
            "jobs_per_s": jobs / seconds, "settle_cpu_ms_per_job": settle_cpu * 1000 / jobs,
            "nats_cpu_ms_per_job": nats_cpu * 1000 / jobs,
            "cores_busy": (settle_cpu + nats_cpu) / seconds,
            "settle_idle_cpu_ms_per_s": idle * 1000,
            "settle_cpu_s_per_shard": per_shard, "redelivered": state[1],
            "log_error_lines": len(errors), "log_errors": errors[:5], "log_tracebacks": tracebacks,
            "problems": problems}


def main() -> None:
    parser = partitions_parser(__doc__, 4000, 600, "the ledger")
    parser.add_argument("--logs", type=Path, help="keep the settle processes' logs here")
    args = parser.parse_args()
    jobs = args.jobs or (600 if args.quick else 4000)
    counts = partition_counts(args.partitions)
    root = Path(tempfile.mkdtemp(prefix="inferbus-partitions-key-"))
    try:
        key = signing.load_or_create_key(root / "node.key")
        rows = [asyncio.run(one(n, jobs, args.database_url, key, args.logs)) for n in counts]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    partitions_table(rows, [
        ("partitions", "partitions", "d"), ("jobs", "jobs", "d"), ("seconds", "seconds", ".2f"),
        ("jobs/s", "jobs_per_s", ".0f"), ("vs 1", "ratio", ""),
        ("settle CPU ms/job", "settle_cpu_ms_per_job", ".3f"),
        ("nats CPU ms/job", "nats_cpu_ms_per_job", ".3f"), ("cores", "cores_busy", ".2f"),
        ("idle ms/s", "settle_idle_cpu_ms_per_s", ".0f"), ("redeliv", "redelivered", "d"),
        ("log errors", "log_error_lines", "d")])
    problems = [f"{r['partitions']} partitions: {p}" for r in rows for p in r["problems"]]
    save_partitions("partitions", args, rows, not problems, "the ledger")
    if problems:
        sys.exit("bench.partitions: the books are wrong:\n  " + "\n  ".join(problems))


if __name__ == "__main__":
    main()
