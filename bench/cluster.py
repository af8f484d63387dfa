"""Throughput through a stream leader's death: jobs/s of a steady load against
the stack on a 3-node JetStream cluster (replicas 3, fsync on every write),
before, during (a window from the SIGKILL of the JOBS stream leader) and after
(the killed server restarted and caught up), beside the same load as raw
nats-py JetStream work (publish -> pull -> reply, R3 work queue on the same
cluster) measured in the same run.

    .venv/bin/python -m bench.cluster [--lanes 8] [--phase-s 15]

Each lane is a closed loop of sync 1-token chats (``max_tokens`` 1), so jobs/s
is what the stack completes with that many requests in flight. Refusals (503
while no leader is elected) are counted, not retried. The longest gap between
two completed jobs says how long the failover stopped service; a request
still unanswered 10 s after the load stops is counted as stuck. Ends with
``inferbus audit``. Prints a table and writes bench/results/cluster.json.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from bench.report import pct, save
from bus import subjects
from tests.natsd import NatsCluster
from tests.stack import Stack
from tests.tiny_model import build_tiny_model

MODEL = "tiny-random"
BODY = {"model": MODEL, "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]}
WARM_S = 3.0
STUCK_S = 10.0  # an open request this old at the end is counted as stuck


def phase(samples: list[tuple[float, float, int]], start: float, end: float) -> dict:
    """Jobs completed in ``[start, end)``: rate, refusals, latency, longest gap."""
    inside = [(t, lat, code) for t, lat, code in samples if start <= t < end]
    done = sorted(t for t, _, code in inside if code == 200)
    ms = sorted(lat * 1000 for _, lat, code in inside if code == 200)
    gaps = [b - a for a, b in zip([start, *done], [*done, end])]
    return {"window_s": round(end - start, 1), "jobs": len(done),
            "jobs_per_s": len(done) / (end - start),
            "refused": sum(code != 200 for _, _, code in inside),
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": pct(ms, 0.99) if ms else None,
            "longest_gap_s": max(gaps)}


async def raw_load(url: str, lanes: int, seconds: float) -> dict:
    """The same closed loop as raw JetStream work on an R3 work queue."""
    nc = await nats.connect(url.split(","))
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAWCL", subjects=["rawcl.>"], num_replicas=3,
                                     retention=RetentionPolicy.WORK_QUEUE))
    sub = await js.pull_subscribe("rawcl.job", "rawcl", config=ConsumerConfig(ack_wait=30))

    async def responder() -> None:
        while True:
            try:
                msgs = await sub.fetch(lanes, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await nc.publish(msg.headers["reply"], b"done")
                await msg.ack()

    samples: list[tuple[float, float, int]] = []
    end = time.monotonic() + WARM_S + seconds

    async def lane() -> None:
        inbox = nc.new_inbox()
        replies = await nc.subscribe(inbox)
        while time.monotonic() < end:
            started = time.monotonic()
            await js.publish("rawcl.job", b"x" * 300, headers={"reply": inbox})
            await replies.next_msg(timeout=10)
            samples.append((time.monotonic(), time.monotonic() - started, 200))

    task = asyncio.create_task(responder())
    begin = time.monotonic()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    task.cancel()
    await js.delete_stream("RAWCL")
    await nc.close()
    return phase(samples, begin + WARM_S, end)


async def stack_load(stack: Stack, key: str, lanes: int, stop: asyncio.Event,
                     samples: list[tuple[float, float, int]], waiting: dict[int, float]) -> None:
    """``lanes`` closed loops until ``stop``; ``waiting`` holds each lane's open request."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def lane(i: int) -> None:
            while not stop.is_set():
                started = waiting[i] = time.monotonic()
                try:
                    code = (await client.post("/v1/chat/completions", json=BODY)).status_code
                except httpx.HTTPError:
                    code = 0
                del waiting[i]
                samples.append((time.monotonic(), time.monotonic() - started, code))
                if code != 200:
                    await asyncio.sleep(0.1)  # a refusal comes at once: do not spin on it
        await asyncio.gather(*(lane(i) for i in range(lanes)))


async def failover(cluster: NatsCluster, stack: Stack, key: str, lanes: int,
                   phase_s: float) -> dict:
    samples: list[tuple[float, float, int]] = []
    waiting: dict[int, float] = {}
    stop = asyncio.Event()
    load = asyncio.create_task(stack_load(stack, key, lanes, stop, samples, waiting))
    t0 = time.monotonic()
    await asyncio.sleep(WARM_S + phase_s)
    leader = await asyncio.to_thread(cluster.leader, subjects.JOBS_STREAM)
    killed = time.monotonic()
    cluster.kill(leader)
    await asyncio.sleep(phase_s)
    await asyncio.to_thread(cluster.restart, leader)  # back, and caught up
    restarted = time.monotonic()
    await asyncio.sleep(phase_s)
    stop.set()
    end = time.monotonic()
    # A request still open long after the others is stuck, not slow: count it, do
    # not wait out its client timeout.
    stuck = sum(1 for started in waiting.values() if end - started > STUCK_S)
    try:
        await asyncio.wait_for(load, STUCK_S)
    except asyncio.TimeoutError:
        pass
    new_leader = await asyncio.to_thread(cluster.leader, subjects.JOBS_STREAM)
    return {"killed_server": cluster.nodes[leader].name,
            "new_leader": cluster.nodes[new_leader].name,
            "restart_took_s": restarted - killed - phase_s, "stuck_requests": stuck,
            "before": phase(samples, t0 + WARM_S, killed),
            "during": phase(samples, killed, killed + phase_s),
            "after": phase(samples, restarted, end)}


def settled_audit(stack: Stack, tries: int = 4):
    """``inferbus audit`` once the last jobs have settled and been projected: a
    read model still catching up is not a violation, so a failure is retried."""
    for _ in range(tries):
        time.sleep(5)
        audit = stack.cli("audit", check=False)
        if audit.returncode == 0:
            break
    return audit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lanes", type=int, default=8, help="requests in flight")
    parser.add_argument("--phase-s", type=float, default=12.0, help="seconds per phase")
    parser.add_argument("--keep", action="store_true", help="keep the logs and stores")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inferbus-bench-cluster-"))
    cluster = NatsCluster(tmp / "cluster").start()
    stack = Stack(tmp / "data", cluster.url, env_extra={
        "INFERBUS_STREAM_REPLICAS": "3", "INFERBUS_PRODUCTION": "1",
        "INFERBUS_NATS_MONITOR_URL": cluster.monitor_url, "INFERBUS_JOB_ACK_WAIT_S": "3"})
    try:
        build_tiny_model(tmp / "data" / "models" / MODEL)
        raw = asyncio.run(raw_load(cluster.url, args.lanes, args.phase_s))
        stack.start_projector()
        stack.start_worker("eu", MODEL, "worker-eu-a")
        stack.start_worker("eu", MODEL, "worker-eu-b")
        stack.start_api()
        key = stack.new_key("bench", credits="100000")
        stack.wait_for_model(key, MODEL)
        result = asyncio.run(failover(cluster, stack, key, args.lanes, args.phase_s))
        cluster.wait_ready()
        audit = settled_audit(stack)
        result.update(raw_jetstream_r3=raw, lanes=args.lanes, audit_ok=audit.returncode == 0)
        if audit.returncode != 0:
            print(audit.stdout[-3000:], audit.stderr[-3000:])
    finally:
        stack.stop()
        cluster.stop()
        if args.keep:
            print(f"logs and stores kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'load (' + str(args.lanes) + ' in flight)':<34}{'window s':>9}{'jobs':>7}"
          f"{'jobs/s':>9}{'refused':>9}{'p50 ms':>9}{'p99 ms':>9}{'gap s':>7}")
    rows = (("raw JetStream R3 work queue", raw), ("stack, before the kill", result["before"]),
            ("stack, during (kill + window)", result["during"]),
            ("stack, after (leader back)", result["after"]))
    for name, r in rows:
        p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
        print(f"{name:<34}{r['window_s']:>9}{r['jobs']:>7}{r['jobs_per_s']:>9.1f}"
              f"{r['refused']:>9}{p50:>9}{p99:>9}{r['longest_gap_s']:>7.1f}")
    print(f"killed {result['killed_server']} (JOBS leader); new leader {result['new_leader']}; "
          f"requests stuck at the end: {result['stuck_requests']}; "
          f"audit {'ok' if result['audit_ok'] else 'FAILED'}")
    save("cluster", result)


if __name__ == "__main__":
    main()
