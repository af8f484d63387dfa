"""Failover: from SIGKILL of the worker streaming a job to the next token the
client receives, over repeated kills with **default settings**, on each route a
job can take, beside JetStream's own redelivery of an unacked message with the
same (default) ack wait, measured in the same run.

    .venv/bin/python -m bench.failover [--kills 21] [--raw 5]

Routes, taken in turn: ``zone`` (a job of zone eu, which has three workers),
``node`` (a job sent to one chosen node's own queue: ``X-Inferbus-Tier``
constraints) and ``lone`` (a job of zone na, whose only worker is the one
killed: it goes on in global). The gate (``gate/liveness.py``) notices the
silent node and moves its job on; JetStream alone would redeliver it only
after the ack wait. Each killed worker is replaced (a new node) and serving
before the next kill. Prints a table and writes bench/results/failover.json.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nats
import openai
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from bench.report import pct, save
from bus.config import Settings
from bus.events import JobStarted
from bus.signing import load_or_create_key, node_id
from tests.eventlog import job_log
from tests.natsd import NatsServer
from tests.stack import Stack
from tests.tiny_model import build_tiny_model

MODEL = "tiny-long"  # 8k context: a job long enough to kill mid-stream
STALL_S = 0.3  # a tiny-model worker streams a token every few ms: longer is the takeover
ROUTES = {"zone": {"X-Inferbus-Zone": "eu"},
          "node": {"X-Inferbus-Zone": "eu", "X-Inferbus-Tier": "1-6"},
          "lone": {"X-Inferbus-Zone": "na"}}


def summary(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    return {"n": len(ms), "p50_ms": statistics.median(ms),
            "p95_ms": pct(ms, 0.95), "max_ms": ms[-1]}


async def raw_redelivery(url: str, ack_wait: float, n: int, rng: random.Random) -> list[float]:
    """A puller takes a message, keeps it with in-progress acks, then falls silent
    at a random point of its ack cycle; a second puller is already waiting."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAWFO", subjects=["rawfo.>"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    sub = await js.pull_subscribe("rawfo.job", "rawfo", config=ConsumerConfig(ack_wait=ack_wait))
    samples = []
    for i in range(n):
        await js.publish("rawfo.job", str(i).encode())
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.in_progress()
        await asyncio.sleep(rng.uniform(0, ack_wait / 3))  # where in its cycle it dies
        died = time.perf_counter()
        (again,) = await sub.fetch(1, timeout=ack_wait * 3)
        samples.append(time.perf_counter() - died)
        await again.ack()
    await nc.close()
    return samples


def worker_of(stack: Stack, job_id: str, names: dict[str, str]) -> str:
    """The worker process that started ``job_id`` (its node id, from the log)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        starts = [e for _, e in job_log(stack.nats_url, job_id) if isinstance(e, JobStarted)]
        if starts:
            return names[starts[-1].node_id]
        time.sleep(0.05)
    raise TimeoutError(f"no JobStarted for {job_id}")


def one_kill(stack: Stack, client: openai.OpenAI, names: dict[str, str],
             headers: dict[str, str]) -> tuple[float, str]:
    """Stream a long job, kill its worker after the first token, and time the
    stall: from the kill to the first token after it. Text the dead worker sent
    before it died may still be in buffers and arrive at once; the next token is
    the first one after the stall (a gap of over ``STALL_S``)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4000, temperature=0.8, stream=True,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        extra_headers=headers)
    stream = raw.parse()
    killed_at = last = None
    try:
        for chunk in stream:
            if not (chunk.choices and chunk.choices[0].delta.content):
                continue
            now = time.perf_counter()
            if killed_at is not None:
                if now - last > STALL_S:
                    return now - killed_at, victim
                last = now
                continue
            victim = worker_of(stack, raw.headers["x-inferbus-job"], names)
            stack.kill(victim)
            killed_at = last = time.perf_counter()
    finally:
        stream.close()  # the client leaves: the job is cancelled, not run to the end
    raise RuntimeError("the stream ended before the next token")


def add_worker(stack: Stack, names: dict[str, str], zone: str, n: int) -> None:
    """Start a worker (a new node) and wait until it serves, so its start-up (torch
    import, model load) does not compete for the CPU with the failover being timed."""
    name = f"worker-{zone}-{n}"
    stack.start_worker(zone, MODEL, name)
    deadline = time.monotonic() + 120
    while "serving" not in stack.log(name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not start:\n{stack.log(name)[-2000:]}")
        time.sleep(0.1)
    key = load_or_create_key(stack.data_dir / "node" / f"{name}.key")
    names[node_id(key)] = name


def run_stack(root: Path, url: str, kills: int) -> dict[str, list[float]]:
    build_tiny_model(root / "models" / MODEL, context=8192)
    stack = Stack(root, url)  # default settings: no shortened lease or ack wait
    names: dict[str, str] = {}
    started = 0
    try:
        stack.start_projector()
        stack.start_api()  # services make the streams and buckets workers wait for
        for zone in ("eu", "eu", "eu", "na"):
            add_worker(stack, names, zone, started)
            started += 1
        key = stack.new_key("bench", credits="100000")
        stack.wait_for_model(key, MODEL, zones=2)
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                               timeout=120)
        samples: dict[str, list[float]] = {route: [] for route in ROUTES}
        for i in range(kills):
            route = list(ROUTES)[i % len(ROUTES)]
            taken, victim = one_kill(stack, client, names, ROUTES[route])
            samples[route].append(taken)
            add_worker(stack, names, victim.split("-")[1], started)  # the same zone again
            started += 1
            print(f"  kill {i + 1}/{kills} ({route}): next token after {taken * 1000:.0f} ms",
                  flush=True)
        return samples
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=21, help="spread over the three routes")
    parser.add_argument("--raw", type=int, default=5, help="raw redeliveries (ack wait each)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ack_wait = Settings().job_ack_wait_s
    root = Path(tempfile.mkdtemp(prefix="inferbus-failover-"))
    server = NatsServer(root / "nats").start()
    try:
        raw = asyncio.run(raw_redelivery(server.url, ack_wait, args.raw,
                                         random.Random(args.seed)))
        stack = run_stack(root, server.url, args.kills)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    every = [x for route in stack.values() for x in route]
    result = {"ack_wait_s": ack_wait, "kills": args.kills, "raw_redelivery": summary(raw),
              "failover_to_next_token": summary(every),
              "by_route": {route: summary(xs) for route, xs in stack.items() if xs}}
    result["ratio_p50"] = result["failover_to_next_token"]["p50_ms"] / \
        result["raw_redelivery"]["p50_ms"]
    print(f"\nfailover with default settings (ack wait {ack_wait:g} s), {args.kills} kills")
    print(f"{'':36} {'n':>3} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    rows = [("raw JetStream redelivery", result["raw_redelivery"]),
            ("worker kill -> next token, all", result["failover_to_next_token"])]
    rows += [(f"  route {route}", s) for route, s in result["by_route"].items()]
    for label, s in rows:
        print(f"{label:36} {s['n']:3} {s['p50_ms']:9.0f} {s['p95_ms']:9.0f} {s['max_ms']:9.0f}")
    print(f"ratio (p50): {result['ratio_p50']:.3f}x (target: p50 <= 1000 ms) "
          f"-> {save('failover', result)}")


if __name__ == "__main__":
    main()
