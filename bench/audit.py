"""Audit replay speed: ``inferbus audit`` over >= 100k events, beside the raw
cost of reading the same stream with nats-py, measured in the same run.

    .venv/bin/python -m bench.audit [--jobs 16000] [--repeat 3]

Publishes a consistent synthetic history (``tests/histories.py``: deposits,
reservations, signed results, debits, refunds, RCP) into a fresh nats-server,
builds the live read model (SQLite) from it, then times:

- raw: every message read by a stock nats-py ordered consumer with a callback
  (its fastest path), no parsing;
- raw pull: the audit's own reader (``projections.replay``), no parsing;
- audit: the whole audit (live snapshot, replay with the scratch rebuild in a
  child process, I1-I5 checks, I3 row comparison, ledger comparison);
- audit in-process: the same with the rebuild in the audit's own process.

Prints a table and writes bench/results/audit.json.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import nats
from nacl.signing import SigningKey
from nats.js.api import ConsumerConfig, DeliverPolicy

from bench.report import save
from bus import subjects
from bus.publish import MSG_ID, event_subject
from bus.streams import ensure_streams
from projections.audit import audit
from projections.readmodels import open_store_url
from projections.rebuild import rebuild
from projections.replay import read_stream
from tests.histories import credit_history
from tests.natsd import NatsServer



async def publish_all(js, events) -> float:
    """Publish in order with async acks (the publish path's subject and msg id)."""
    start = time.perf_counter()
    acks = [await js.publish_async(event_subject(e, zone), e.model_dump_json().encode(),
                                   headers={MSG_ID: e.event_id}) for zone, e in events]
    await asyncio.gather(*acks)
    return time.perf_counter() - start


async def raw_ordered(js, total: int) -> float:
    start, done, count = time.perf_counter(), asyncio.get_running_loop().create_future(), [0]

    async def on_msg(msg) -> None:
        count[0] += 1
        if count[0] == total:
            done.set_result(None)

    sub = await js.subscribe(subjects.all_events(), stream=subjects.EVENTS_STREAM, cb=on_msg,
                             ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    await asyncio.wait_for(done, 300)
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return elapsed


async def raw_pull(js, total: int) -> float:
    start, count = time.perf_counter(), 0
    async for batch in read_stream(js, 1, total):
        count += len(batch)
    assert count == total, count
    return time.perf_counter() - start


async def main(jobs: int, repeat: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="inferbus-bench-audit-"))
    server = NatsServer(workdir / "nats").start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        history = credit_history(1, jobs=jobs, accounts=50,
                                 nodes=[SigningKey(bytes([i]) * 32) for i in range(1, 5)])
        total = len(history.events)
        if total < 100_000:
            raise SystemExit(f"only {total} events: raise --jobs")
        publish_s = await publish_all(js, history.events)
        live = open_store_url(workdir / "live.sqlite3")
        await rebuild(live, js)
        ledger = list(history.ledger.values())

        raw_s = min([await raw_ordered(js, total) for _ in range(repeat)])
        pull_s = min([await raw_pull(js, total) for _ in range(repeat)])
        audits = []
        for _ in range(repeat):
            report = await audit(js, live, ledger)
            assert report.ok, report.render()
            audits.append(report.elapsed_s)
        in_process = await audit(js, live, ledger, parallel=False)
        assert in_process.ok, in_process.render()
        await nc.close()
    finally:
        server.stop()
    rate = lambda s: total / s  # noqa: E731
    audit_s = statistics.median(audits)
    return {
        "events": total, "jobs": report.jobs, "accounts": report.accounts,
        "cpus": os.cpu_count(), "publish_events_per_s": rate(publish_s),
        "raw_ordered_consumer": {"s": raw_s, "events_per_s": rate(raw_s)},
        "raw_pull_reader": {"s": pull_s, "events_per_s": rate(pull_s)},
        "audit": {"runs_s": audits, "median_s": audit_s, "events_per_s": rate(audit_s),
                  "best_events_per_s": rate(min(audits))},
        "audit_in_process": {"s": in_process.elapsed_s,
                             "events_per_s": rate(in_process.elapsed_s)},
        "audit_vs_raw": audit_s / raw_s,
    }


def table(r: dict) -> str:
    rows = [("what", "seconds", "events/s"),
            ("raw nats-py ordered consumer (no parsing)", r["raw_ordered_consumer"]["s"],
             r["raw_ordered_consumer"]["events_per_s"]),
            ("raw pull reader of the audit (no parsing)", r["raw_pull_reader"]["s"],
             r["raw_pull_reader"]["events_per_s"]),
            ("audit (rebuild in a child process), median", r["audit"]["median_s"],
             r["audit"]["events_per_s"]),
            ("audit in one process", r["audit_in_process"]["s"],
             r["audit_in_process"]["events_per_s"])]
    lines = [f"{r['events']:,} events, {r['jobs']:,} jobs, {r['accounts']} accounts, "
             f"{r['cpus']} CPUs"]
    lines += [f"{rows[0][0]:44} {rows[0][1]:>8} {rows[0][2]:>10}"]
    lines += [f"{w:44} {s:8.2f} {e:10,.0f}" for w, s, e in rows[1:]]
    lines.append(f"audit / raw read: {r['audit_vs_raw']:.1f}x")
    return "\n".join(lines)


if __name__ == "__main__":  # the audit spawns a child process: guard the entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main(args.jobs, args.repeat))
    print(table(result))
    save("audit", result)
