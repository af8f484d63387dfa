"""What the network costs around the model: API -> worker (echo engine) -> API with
billing on, against a raw nats-py JetStream publish -> pull -> reply round trip
measured in the same run.

    .venv/bin/python -m bench.bus [--n 300] [--seconds 15] [--inflight 64]

Four measurements, on one nats-server of the bench's own:
- raw, 1 in flight: publish to a work-queue stream, a puller takes it, replies
  to the publisher's inbox and acks; p50/p99 of the whole trip;
- raw, ``--inflight`` at once: the same trip, jobs/s;
- stack, 1 in flight: a sync 1-token chat through the API, served by a worker
  running the echo engine (``workers.echo``: no model compute), with the
  ledger reserving and the projector settling every job; p50/p99;
- stack, ``--inflight`` at once for ``--seconds``: completed jobs/s, then how
  long until every job of the run is settled (the account holds nothing).

The HTTP load comes from ``bench.httpload`` (plain keep-alive connections), not
httpx, whose client costs more CPU per request than the API does.

Then ``inferbus audit`` replays the whole log. Prints a table and writes
bench/results/bus.json.
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

from bench import httpload
from bench.report import pct, save
from tests.natsd import NatsServer
from tests.stack import Stack
from workers.echo import write_echo_model

MODEL = "echo"
PATH = "/v1/chat/completions"
BODY = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi there"}]}
WARMUP = 20


def latency(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99),
            "mean_ms": statistics.fmean(ms)}


async def raw_trips(url: str, n: int, inflight: int, seconds: float) -> tuple[dict, dict]:
    """The raw baseline: latency at 1 in flight, then jobs/s at ``inflight``."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"],
                                     retention=RetentionPolicy.WORK_QUEUE))
    sub = await js.pull_subscribe("raw.job", "rawworker", config=ConsumerConfig(ack_wait=30))

    async def responder() -> None:
        while True:
            try:
                msgs = await sub.fetch(inflight, timeout=5)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await nc.publish(msg.headers["reply"], b"done")
                await msg.ack()

    task = asyncio.create_task(responder())
    inbox = nc.new_inbox()
    waiting: dict[str, asyncio.Future] = {}

    async def on_reply(msg) -> None:
        if (future := waiting.pop(msg.subject, None)) is not None:
            future.set_result(None)
    await nc.subscribe(f"{inbox}.*", cb=on_reply)

    async def trip(i: int) -> None:
        reply = f"{inbox}.{i}"
        waiting[reply] = asyncio.get_running_loop().create_future()
        future = waiting[reply]
        await js.publish("raw.job", b"x" * 300, headers={"reply": reply})
        await asyncio.wait_for(future, 5)

    samples = []
    for i in range(n + WARMUP):
        start = time.perf_counter()
        await trip(i)
        if i >= WARMUP:
            samples.append(time.perf_counter() - start)
    done, counter = [0], iter(range(10**9, 2 * 10**9))
    end = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < end:
            await trip(next(counter))
            done[0] += 1
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(inflight)))
    rate = {"inflight": inflight, "jobs": done[0], "jobs_per_s": done[0] / (time.perf_counter() - start)}
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await nc.close()
    return latency(samples), rate


def stack_latency(stack: Stack, key: str, n: int) -> dict:
    return latency(asyncio.run(httpload.latencies(
        stack.base_url, PATH, BODY, {"Authorization": f"Bearer {key}"}, n, WARMUP)))


def stack_load(stack: Stack, key: str, inflight: int, seconds: float) -> dict:
    """``inflight`` clients sending sync 1-token chats back to back for ``seconds``."""
    return asyncio.run(httpload.closed_loop(stack.base_url, PATH, BODY,
                                            {"Authorization": f"Bearer {key}"}, inflight,
                                            seconds))


def until_settled(stack: Stack, key: str, timeout: float = 300) -> tuple[float, dict]:
    """Seconds until the account holds no credits for open jobs; its last state."""
    start = time.perf_counter()
    while True:
        account = httpx.get(f"{stack.base_url}/v1/account", timeout=10,
                            headers={"Authorization": f"Bearer {key}"}).json()
        if float(account["held"]) == 0 or time.perf_counter() - start > timeout:
            return time.perf_counter() - start, account
        time.sleep(0.1)


def until_audited(stack: Stack, timeout: float = 120):
    """Seconds until ``inferbus audit`` passes, and its last run."""
    start = time.perf_counter()
    while True:
        audit = stack.cli("audit", check=False)
        if audit.returncode == 0 or time.perf_counter() - start > timeout:
            return time.perf_counter() - start, audit
        time.sleep(1.0)


@contextlib.contextmanager
def echo_network(inflight: int):
    """(server, stack): a nats-server of the bench's own and a stack on it whose
    data dir holds the echo model, sized for ``inflight`` at once; both stopped
    and their files removed on exit. No service runs yet: see ``serve_echo``."""
    tmp = Path(tempfile.mkdtemp(prefix="inferbus-bench-"))
    server = NatsServer(tmp / "nats").start()
    # The bench's one key sends far more than a consumer's default limits allow.
    stack = Stack(tmp / "data", server.url, env_extra={
        "INFERBUS_MAX_BATCH": str(inflight), "INFERBUS_RATE_PER_MINUTE": "100000000",
        "INFERBUS_MAX_JOBS_IN_FLIGHT": str(4 * inflight)})
    try:
        write_echo_model(tmp / "data" / "models" / MODEL)
        yield server, stack
    finally:
        stack.stop()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def serve_echo(stack: Stack, settle_apart: bool = False) -> str:
    """Start the projector, an echo worker and the API; a key with credits, once
    the model is served. ``settle_apart``: the money service in its own process
    (``inferbus settle``) beside ``inferbus projector --no-settle``."""
    if settle_apart:
        stack.start("gate", "gate")
        stack.start("verifier", "verifier")
        stack.start("projector", "projector", "--no-settle")
        stack.start("settle", "settle")
    else:
        stack.start_projector()
    stack.start_worker("eu", MODEL)
    stack.start_api()
    key = stack.new_key("bench", credits="1000000")
    stack.wait_for_model(key, MODEL)
    return key


def run(n: int, seconds: float, inflight: int) -> dict:
    with echo_network(inflight) as (server, stack):
        raw_1, raw_n = asyncio.run(raw_trips(server.url, n, inflight, seconds))
        key = serve_echo(stack)
        full_1 = stack_latency(stack, key, n)
        full_n = stack_load(stack, key, inflight, seconds)
        lag_s, account = until_settled(stack, key)
        full_n["settled_after_s"] = lag_s
        full_n["settled_jobs_per_s"] = full_n["jobs"] / (full_n["seconds"] + lag_s)
        full_n["held_after"] = account["held"]
        # The relay puts the ledger's money events on the log behind the ledger itself:
        # the audit passes once the log has caught up.
        full_n["log_complete_after_s"], audit = until_audited(stack)
        full_n["audit_exit"] = audit.returncode
        if audit.returncode != 0:
            print(f"inferbus audit exit {audit.returncode}:\n{audit.stdout[-3000:]}")
    return {"raw_1": raw_1, "raw_n": raw_n, "stack_1": full_1, "stack_n": full_n,
            "ratio_p50": full_1["p50_ms"] / raw_1["p50_ms"],
            "ratio_p99": full_1["p99_ms"] / raw_1["p99_ms"],
            "ratio_throughput": full_n["jobs_per_s"] / raw_n["jobs_per_s"]}


def report(result: dict) -> None:
    raw_1, full_1, raw_n, full_n = (result[k] for k in ("raw_1", "stack_1", "raw_n", "stack_n"))
    print(f"{'1 in flight':<34}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'raw JetStream round trip':<34}{raw_1['n']:>6}{raw_1['p50_ms']:>10.2f}"
          f"{raw_1['p99_ms']:>10.2f}")
    print(f"{'stack, 1-token chat (echo)':<34}{full_1['n']:>6}{full_1['p50_ms']:>10.2f}"
          f"{full_1['p99_ms']:>10.2f}")
    print(f"stack / raw: p50 {result['ratio_p50']:.1f}x, p99 {result['ratio_p99']:.1f}x "
          f"(targets: p50 <= 2 ms, p99 <= 8 ms, <= 3x raw)")
    print(f"\n{raw_n['inflight']} in flight{'':<21}{'jobs':>8}{'jobs/s':>10}")
    print(f"{'raw JetStream round trip':<34}{raw_n['jobs']:>8}{raw_n['jobs_per_s']:>10.0f}")
    print(f"{'stack, 1-token chat (echo)':<34}{full_n['jobs']:>8}{full_n['jobs_per_s']:>10.0f}")
    print(f"stack / raw: {result['ratio_throughput']:.2f}x (target >= 1,500 jobs/s); failed: "
          f"{full_n['failed'] or 'none'}; all settled {full_n['settled_after_s']:.1f} s after "
          f"the load ({full_n['settled_jobs_per_s']:.0f} jobs/s billed end to end), held "
          f"after: {full_n['held_after']}; the log complete and audited (exit "
          f"{full_n['audit_exit']}) {full_n['log_complete_after_s']:.1f} s after that")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests at 1 in flight")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the load")
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    result = run(args.n, args.seconds, args.inflight)
    report(result)
    save("bus", result)


if __name__ == "__main__":
    main()
