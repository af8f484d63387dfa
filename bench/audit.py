"""Audit replay speed: ``inferbus audit`` over >= 100k events, beside the raw
cost of reading the same stream with nats-py, measured in the same run, and
the audit from a checkpoint that replays only the events after it.

    .venv/bin/python -m bench.audit [--jobs 16000] [--repeat 3] [--tail 10000]
                                    [--signed-as output|result]

Publishes a consistent synthetic history (``tests/histories.py``: deposits,
reservations, signed results, debits, refunds, RCP; ``--signed-as result``:
the results signed in the earlier form, as in runs before 2026-12-07) into a
fresh nats-server, all but its last ``--tail`` events first: the live read
model (SQLite) is built from those and a full audit of them writes a
checkpoint; then the rest is logged and the read model catches up. Times:

- raw: every message read by a stock nats-py ordered consumer with a callback
  (its fastest path), no parsing;
- raw pull: the audit's own reader (``projections.replay``), no parsing;
- audit: the whole audit from the first event (live snapshot, replay with the
  scratch rebuild in a child process, I1-I9 checks, I3 row comparison,
  ledger comparison), with its CPU seconds (this process and the child);
- audit in-process: the same with the rebuild in the audit's own process;
- from a checkpoint: the same audit resuming from the checkpoint (restored
  before each run), so replaying the last ``--tail`` events only; and once
  more with nothing new after it.

Prints a table and writes bench/results/audit.json.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
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
from projections.audit import AuditReport, audit
from projections.audit_checkpoint import Checkpoints
from projections.projector import apply_batch
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


async def catch_up(store, js, first: int, last: int) -> None:
    """The live read model applies ``first..last``, as the projector would."""
    async for batch in read_stream(js, first, last):
        await asyncio.to_thread(apply_batch, store, batch)


def cpu_s() -> float:
    """CPU seconds of this process and its finished children so far."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


async def timed(run) -> tuple[AuditReport, float]:
    before = cpu_s()
    report = await run()
    assert report.ok, report.render()
    return report, cpu_s() - before


async def main(jobs: int, repeat: int, tail: int, signed_as: str) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="inferbus-bench-audit-"))
    server = NatsServer(workdir / "nats").start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_streams(js)
        history = credit_history(1, jobs=jobs, accounts=50, signed_as=signed_as,
                                 nodes=[SigningKey(bytes([i]) * 32) for i in range(1, 5)])
        total = len(history.events)
        if total < 100_000:
            raise SystemExit(f"only {total} events: raise --jobs")
        cut = total - tail
        publish_s = await publish_all(js, history.events[:cut])
        live = open_store_url(workdir / "live.sqlite3")
        await rebuild(live, js)
        # Jobs in flight at the cut have deadlines past: a grace keeps them open.
        checkpoints, saved = Checkpoints(workdir / "audit"), workdir / "audit-at-cut"
        written, written_cpu = await timed(lambda: audit(js, live, checkpoints=checkpoints,
                                                         full=True, grace_s=1e9))
        shutil.copytree(checkpoints.directory, saved)
        publish_s += await publish_all(js, history.events[cut:])
        await catch_up(live, js, cut + 1, total)
        ledger = list(history.ledger.values())

        raw_s = min([await raw_ordered(js, total) for _ in range(repeat)])
        pull_s = min([await raw_pull(js, total) for _ in range(repeat)])
        audits = [await timed(lambda: audit(js, live, ledger)) for _ in range(repeat)]
        in_process, _ = await timed(lambda: audit(js, live, ledger, parallel=False))
        resumed = []
        for _ in range(repeat):
            shutil.rmtree(checkpoints.directory)
            shutil.copytree(saved, checkpoints.directory)
            resumed.append(await timed(lambda: audit(js, live, ledger, checkpoints=checkpoints)))
            assert (resumed[-1][0].resumed_from, resumed[-1][0].events) == (cut, tail)
        nothing_new, _ = await timed(lambda: audit(js, live, ledger, checkpoints=checkpoints))
        await nc.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rate = lambda s: total / s  # noqa: E731
    audit_s = statistics.median(r.elapsed_s for r, _ in audits)
    resumed_s = statistics.median(r.elapsed_s for r, _ in resumed)
    return {
        "events": total, "jobs": audits[0][0].jobs, "accounts": audits[0][0].accounts,
        "signed_as": signed_as, "cpus": os.cpu_count(), "publish_events_per_s": rate(publish_s),
        "raw_ordered_consumer": {"s": raw_s, "events_per_s": rate(raw_s)},
        "raw_pull_reader": {"s": pull_s, "events_per_s": rate(pull_s)},
        "audit": {"runs_s": [r.elapsed_s for r, _ in audits], "median_s": audit_s,
                  "events_per_s": rate(audit_s),
                  "best_events_per_s": rate(min(r.elapsed_s for r, _ in audits)),
                  "cpu_s": statistics.median(c for _, c in audits)},
        "audit_in_process": {"s": in_process.elapsed_s,
                             "events_per_s": rate(in_process.elapsed_s)},
        "audit_vs_raw": audit_s / raw_s,
        "checkpoint_written": {"events": cut, "s": written.elapsed_s, "cpu_s": written_cpu},
        "from_checkpoint": {"events": tail, "runs_s": [r.elapsed_s for r, _ in resumed],
                            "median_s": resumed_s, "events_per_s": tail / resumed_s,
                            "cpu_s": statistics.median(c for _, c in resumed)},
        "from_checkpoint_nothing_new": {"s": nothing_new.elapsed_s},
    }


def table(r: dict) -> str:
    cp, tail = r["from_checkpoint"], r["from_checkpoint"]["events"]
    rows = [("raw nats-py ordered consumer (no parsing)", r["raw_ordered_consumer"]["s"],
             r["raw_ordered_consumer"]["events_per_s"]),
            ("raw pull reader of the audit (no parsing)", r["raw_pull_reader"]["s"],
             r["raw_pull_reader"]["events_per_s"]),
            ("audit (rebuild in a child process), median", r["audit"]["median_s"],
             r["audit"]["events_per_s"]),
            ("audit in one process", r["audit_in_process"]["s"],
             r["audit_in_process"]["events_per_s"]),
            (f"audit from a checkpoint ({tail:,} after it)", cp["median_s"],
             cp["events_per_s"]),
            ("audit from a checkpoint, nothing new", r["from_checkpoint_nothing_new"]["s"], 0)]
    lines = [f"{r['events']:,} events, {r['jobs']:,} jobs, {r['accounts']} accounts, "
             f"{r['cpus']} CPUs, results signed as {r['signed_as']}"]
    lines += [f"{'what':46} {'seconds':>8} {'events/s':>10}"]
    lines += [f"{w:46} {s:8.2f} {e:10,.0f}" for w, s, e in rows]
    lines.append(f"audit / raw read: {r['audit_vs_raw']:.1f}x; CPU seconds: full audit "
                 f"{r['audit']['cpu_s']:.2f}, from the checkpoint {cp['cpu_s']:.2f}; "
                 f"the full audit of the first {r['checkpoint_written']['events']:,} that wrote "
                 f"it {r['checkpoint_written']['s']:.2f}s")
    return "\n".join(lines)


if __name__ == "__main__":  # the audit spawns a child process: guard the entry point
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tail", type=int, default=10_000,
                        help="events logged after the checkpoint")
    parser.add_argument("--signed-as", choices=("output", "result"), default="output",
                        help="result: completions signed in the earlier form (runs before "
                             "2026-12-07), each verified after today's form fails")
    args = parser.parse_args()
    result = asyncio.run(main(args.jobs, args.repeat, args.tail, args.signed_as))
    print(table(result))
    save("audit", result)
