"""Failover: from SIGKILL of the worker streaming a job to the next token the
client receives, over repeated kills, beside JetStream's own redelivery of an
unacked message with the same ack wait, measured in the same run.

    .venv/bin/python -m bench.failover [--kills 20] [--ack-wait 2]

The job lease is ``INFERBUS_JOB_ACK_WAIT_S`` (renewed every third of it), so a
failover can never beat the raw redelivery; the ratio says what inferbus adds
(the takeover, the resume request, a prefill of prompt + delivered text, and
an idle worker's poll for redeliveries). Prints a table and writes
bench/results/failover.json.
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
from bus.events import JobStarted
from bus.signing import load_or_create_key, node_id
from tests.eventlog import job_log
from tests.natsd import NatsServer
from tests.stack import Stack
from tests.tiny_model import build_tiny_model

MODEL = "tiny-long"  # 8k context: a job long enough to kill mid-stream
WORKERS = 3
STALL_S = 0.3  # a tiny-model worker streams a token every few ms: longer is the takeover


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


def one_kill(stack: Stack, client: openai.OpenAI, names: dict[str, str]) -> float:
    """Stream a long job, kill its worker after the first token, and time the
    stall: from the kill to the first token after it. Text the dead worker sent
    before it died may still be in buffers and arrive at once; the next token is
    the first one after the stall (a gap of over ``STALL_S``)."""
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=4000, temperature=0.8, stream=True,
        messages=[{"role": "user", "content": "Tell me a very long story."}])
    stream = raw.parse()
    killed_at = last = None
    try:
        for chunk in stream:
            if not (chunk.choices and chunk.choices[0].delta.content):
                continue
            now = time.perf_counter()
            if killed_at is not None:
                if now - last > STALL_S:
                    return now - killed_at
                last = now
                continue
            victim = worker_of(stack, raw.headers["x-inferbus-job"], names)
            stack.kill(victim)
            killed_at = last = time.perf_counter()
    finally:
        stream.close()  # the client leaves: the job is cancelled, not run to the end
    raise RuntimeError("the stream ended before the next token")


def add_worker(stack: Stack, names: dict[str, str], n: int) -> None:
    """Start a worker and wait until it serves, so its start-up (torch import, model
    load) does not compete for the CPU with the next failover being timed."""
    name = f"worker-{n}"
    stack.start_worker("eu", MODEL, name)
    deadline = time.monotonic() + 120
    while "serving" not in stack.log(name):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} did not start:\n{stack.log(name)[-2000:]}")
        time.sleep(0.1)
    key = load_or_create_key(stack.data_dir / "node" / f"{name}.key")
    names[node_id(key)] = name


def run_stack(root: Path, url: str, kills: int, ack_wait: float) -> list[float]:
    build_tiny_model(root / "models" / MODEL, context=8192)
    stack = Stack(root, url, env_extra={"INFERBUS_JOB_ACK_WAIT_S": str(ack_wait)})
    names: dict[str, str] = {}
    try:
        stack.start_projector()
        stack.start_api()  # services make the streams and buckets workers wait for
        for n in range(WORKERS):
            add_worker(stack, names, n)
        key = stack.new_key("bench", credits="100000")
        stack.wait_for_model(key, MODEL)
        client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                               timeout=120)
        samples = []
        for i in range(kills):
            samples.append(one_kill(stack, client, names))
            add_worker(stack, names, WORKERS + i)
            print(f"  kill {i + 1}/{kills}: next token after {samples[-1] * 1000:.0f} ms",
                  flush=True)
        return samples
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferbus-failover-"))
    server = NatsServer(root / "nats").start()
    try:
        raw = asyncio.run(raw_redelivery(server.url, args.ack_wait, args.kills,
                                         random.Random(args.seed)))
        stack = run_stack(root, server.url, args.kills, args.ack_wait)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    result = {"ack_wait_s": args.ack_wait, "kills": args.kills,
              "raw_redelivery": summary(raw), "failover_to_next_token": summary(stack)}
    result["ratio_p50"] = result["failover_to_next_token"]["p50_ms"] / \
        result["raw_redelivery"]["p50_ms"]
    print(f"\nfailover, ack wait {args.ack_wait:g} s, {args.kills} kills")
    print(f"{'':34} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}")
    for label, key in (("raw JetStream redelivery", "raw_redelivery"),
                       ("worker kill -> next token", "failover_to_next_token")):
        s = result[key]
        print(f"{label:34} {s['p50_ms']:9.0f} {s['p95_ms']:9.0f} {s['max_ms']:9.0f}")
    print(f"ratio (p50): {result['ratio_p50']:.2f}x  -> {save('failover', result)}")


if __name__ == "__main__":
    main()
