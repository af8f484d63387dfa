"""End-to-end latency of a 1-token request through the whole stack (API ->
JetStream -> worker -> log -> API) at 1 in flight, beside a raw nats-py
JetStream publish -> pull -> reply round trip measured in the same run.

    .venv/bin/python -m bench.roundtrip [--n 300]

Prints a table and writes bench/results/roundtrip.json.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from tests.natsd import NatsServer
from tests.stack import Stack
from tests.tiny_model import build_tiny_model
from bench.report import pct, save

MODEL = "tiny-random"


def summary(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    return {"n": len(ms), "p50_ms": statistics.median(ms),
            "p99_ms": pct(ms, 0.99), "mean_ms": statistics.fmean(ms)}


async def raw_round_trip(url: str, n: int) -> list[float]:
    """Publish a job to a work-queue stream, a puller takes it and replies."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    sub = await js.pull_subscribe("raw.job", "rawworker", config=ConsumerConfig(ack_wait=30))

    async def responder() -> None:
        while True:
            try:
                msgs = await sub.fetch(1, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await nc.publish(msg.headers["reply"], b"done")
                await msg.ack()

    task = asyncio.create_task(responder())
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    samples = []
    for i in range(n + 20):
        start = time.perf_counter()
        await js.publish("raw.job", b"x" * 300, headers={"reply": inbox})
        await replies.next_msg(timeout=5)
        if i >= 20:  # warm-up
            samples.append(time.perf_counter() - start)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await nc.close()
    return samples


def engine_only(model_dir: Path, n: int) -> list[float]:
    """The model's own share: the same 1-token chat run in-process, no bus."""
    from bus.events import Sampling
    from workers.engine import Engine, GenerationRequest
    engine = Engine.load(model_dir, MODEL)
    request = GenerationRequest(kind="chat", prompt=None, sampling=Sampling(max_tokens=1,
                                temperature=0), messages=({"role": "user", "content": "hi"},))
    samples = []
    for i in range(n + 20):
        start = time.perf_counter()
        for _ in engine.generate(request):
            pass
        if i >= 20:
            samples.append(time.perf_counter() - start)
    return samples


def stack_round_trip(stack: Stack, key: str, n: int) -> list[float]:
    body = {"model": MODEL, "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "user", "content": "hi"}]}
    samples = []
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"},
                      timeout=30) as client:
        for i in range(n + 20):
            start = time.perf_counter()
            r = client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            if i >= 20:
                samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="inferbus-bench-"))
    server = NatsServer(tmp / "nats").start()
    stack = Stack(tmp / "data", server.url)
    try:
        build_tiny_model(tmp / "data" / "models" / MODEL)
        raw = summary(asyncio.run(raw_round_trip(server.url, args.n)))
        engine = summary(engine_only(tmp / "data" / "models" / MODEL, args.n))
        stack.start("projector", "projector")
        stack.start_worker("eu", MODEL)
        stack.start_api()
        key = stack.new_key("bench")
        stack.wait_for_model(key, MODEL)
        full = summary(stack_round_trip(stack, key, args.n))
    finally:
        stack.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"raw_jetstream": raw, "engine_1_token": engine, "stack_1_token": full,
              "overhead_p50_ms": full["p50_ms"] - engine["p50_ms"],
              "ratio_p50": full["p50_ms"] / raw["p50_ms"], "ratio_p99": full["p99_ms"] / raw["p99_ms"]}
    print(f"{'path':<28}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in (("raw JetStream round trip", raw), ("engine only, 1 token", engine),
                    ("stack, 1-token chat", full)):
        print(f"{name:<28}{r['n']:>6}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}")
    print(f"ratio stack/raw: p50 {result['ratio_p50']:.1f}x, p99 {result['ratio_p99']:.1f}x; "
          f"stack minus engine p50: {result['overhead_p50_ms']:.2f} ms")
    save("roundtrip", result)


if __name__ == "__main__":
    main()
