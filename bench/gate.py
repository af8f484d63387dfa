"""What the trust boundary costs a job on the worker's path: the gate's two
requests (lease, then outcome: ``gate/``) against what they replace, the
worker's own claims writes and log publish, measured alternately in one run on
one idle nats-server of the bench's own.

    .venv/bin/python -m bench.gate [--n 400]

Per job, from a delivered message to an outcome the network has logged:
- direct: create the lease, seal it, publish ``JobCompleted`` (the worker did
  this itself before the gate);
- gate: ask the gate for the lease (it reads the job from the stream, checks
  the grant, takes the lease, logs ``JobStarted``), sign, report the result
  (it verifies the signature, recounts usage, seals, logs, answers).
The gate's answer to the worker is on this path but not on a caller's, so each
way also times what a caller waits for: from the delivery to the API
instance's inbox receiving the job's ``Finished`` (direct: the worker sends it
after its log publish, as it did before the gate). Prints p50/p99 of each and
the differences; writes bench/results/gate.json.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nats

from bench.report import pct, save
from bus import signing, subjects
from bus.config import Settings
from bus.events import ChatMessage, JobCompleted, JobSubmitted, Sampling, Usage, output_hash
from bus.grants import NodeGrant, put_grant
from bus.leases import Leases
from bus.node_messages import Completed
from bus.publish import enqueue_job, publish_event
from bus.replies import Finished, parse_reply
from bus.streams import (cancels_bucket, claims_bucket, ensure_streams, ensure_work_consumer,
                         grants_bucket)
from gate import node_requests
from gate.usage import Counters, WordCounter
from tests.natsd import NatsServer
from workers.gate_client import GateClient

MODEL = "echo"
INBOX = "replies.bench"


def a_job(job_id: str) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="a", key_id="k", model=MODEL, kind="chat",
                        messages=(ChatMessage(role="user", content="hi there"),),
                        sampling=Sampling(max_tokens=1), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5),
                        reply_to=INBOX)


async def direct(js, leases: Leases, node: str, job: JobSubmitted, msg) -> None:
    held = await leases.acquire(job.job_id, node, 1, msg.metadata.sequence.stream)
    await leases.seal(held)
    event = JobCompleted(
        job_id=job.job_id, model=MODEL, node_id=node, operator="op", zone="eu", attempt=1,
        text="hi", finish_reason="stop", usage=Usage(prompt_tokens=2, completion_tokens=1),
        input_hash=job.input_hash(), output_hash=output_hash("hi"), signature="-")
    await publish_event(js, event, "eu")
    await js._nc.publish(INBOX, Finished(event=event).model_dump_json().encode())


async def gated(gate: GateClient, key, job: JobSubmitted, msg) -> None:
    lease = await gate.lease("acquire", msg, job.job_id)
    sig = signing.sign_output(key, job.job_id, lease.attempt, MODEL, job.input_hash(),
                              output_hash("hi"))
    answer = await gate.report(Completed(job_id=job.job_id, attempt=lease.attempt, text="hi",
                                         finish_reason="stop", signature=sig))
    assert answer.logged, answer


async def run(root: Path, n: int) -> dict[str, list[float]]:
    server = NatsServer(root / "nats").start()
    nc, gate_nc = await nats.connect(server.url), await nats.connect(server.url)
    stop = asyncio.Event()
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        claims = await claims_bucket(js, 600)
        await cancels_bucket(js, 600)
        key = signing.load_or_create_key(root / "node.key")
        node = signing.node_id(key)
        await put_grant(await grants_bucket(js), NodeGrant(
            node_id=node, node_name="bench", operator="op", zone="eu", models=(MODEL,)))
        counters = Counters(root)
        counters.add(MODEL, WordCounter())
        serving = asyncio.create_task(node_requests.serve(
            Settings(data_dir=root, nats_url=server.url), gate_nc, stop, counters))
        await asyncio.sleep(0.5)
        sub = await js.pull_subscribe_bind(await ensure_work_consumer(js, "eu", MODEL, 30),
                                           subjects.JOBS_STREAM)
        gate, leases = GateClient(nc, node), Leases(claims, 10)
        samples: dict[str, list[float]] = {"direct": [], "gate": [], "direct-caller": [],
                                           "gate-caller": []}
        finished: dict[str, asyncio.Future] = {}

        async def on_reply(msg) -> None:  # the API instance's inbox
            reply = parse_reply(msg.data)
            if isinstance(reply, Finished) and reply.event.job_id in finished:
                finished[reply.event.job_id].set_result(time.perf_counter())
        inbox = await nc.subscribe(INBOX, cb=on_reply)
        for i in range(n):
            for way in ("direct", "gate"):  # alternated, so drift hits both alike
                job = a_job(f"{way}-{i}")
                finished[job.job_id] = asyncio.get_running_loop().create_future()
                await enqueue_job(js, job)
                (msg,) = await sub.fetch(1, timeout=5)
                started = time.perf_counter()
                if way == "direct":
                    await direct(js, leases, node, job, msg)
                else:
                    await gated(gate, key, job, msg)
                samples[way].append(time.perf_counter() - started)
                samples[f"{way}-caller"].append(await finished[job.job_id] - started)
                del finished[job.job_id]
                await msg.ack()
        await inbox.unsubscribe()
        stop.set()
        await serving
        return samples
    finally:
        stop.set()
        await nc.close()
        await gate_nc.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="jobs each way")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="inferbus-gate-"))
    try:
        samples = asyncio.run(run(root, args.n))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {}
    for way, xs in samples.items():
        ms = sorted(x * 1000 for x in xs)
        result[way] = {"n": len(ms), "p50_ms": statistics.median(ms), "p99_ms": pct(ms, 0.99)}
    added = result["gate"]["p50_ms"] - result["direct"]["p50_ms"]
    seen = result["gate-caller"]["p50_ms"] - result["direct-caller"]["p50_ms"]
    result["added_p50_ms"], result["caller_added_p50_ms"] = added, seen
    print(f"{'per job, from the delivery':48} {'p50 ms':>8} {'p99 ms':>8}")
    for label, way in (("to outcome logged: worker's own claims + publish", "direct"),
                       ("to outcome logged: through the gate", "gate"),
                       ("to caller's Finished: worker's own", "direct-caller"),
                       ("to caller's Finished: through the gate", "gate-caller")):
        print(f"{label:48} {result[way]['p50_ms']:8.2f} {result[way]['p99_ms']:8.2f}")
    print(f"the gate adds {added:.2f} ms p50 on the worker's path, {seen:.2f} ms on a "
          f"caller's (target: <= 1 ms at 1 in flight) -> {save('gate', result)}")


if __name__ == "__main__":
    main()
