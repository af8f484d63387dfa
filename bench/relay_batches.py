"""What the ledger relay's two ways of appending cost: a JetStream atomic batch
against the same events one at a time, each awaiting its ack.

    .venv/bin/python -m bench.relay_batches [--batches 200] [--sizes 1,4,16,64]

On a nats-server of its own, on a one-replica file stream with
``allow_atomic`` (as the event log is on one server), appends ``--batches``
batches of each size both ways, in alternating passes, with messages of the
size of a money event. Prints the server's CPU (from ``/proc``) and the wall
time per batch, and one-at-a-time's ratio to the atomic batch: where the two
cross is where the relay's ``ATOMIC_FROM`` belongs (``ledger/relay.py``).
Prints only: it sizes a constant, and is not a target.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import nats
from nats.js.api import StorageType, StreamConfig

from bench.report import cpu_s
from tests.natsd import NatsServer

EVENT = b"x" * 400  # about a CreditsDebited's JSON
SUBJECT = "relay.bench"


async def atomic(nc, js, size: int) -> None:
    batch = uuid.uuid4().hex
    for seq in range(1, size):
        await nc.publish(SUBJECT, EVENT, headers={
            "Nats-Msg-Id": f"{batch}-{seq}", "Nats-Batch-Id": batch,
            "Nats-Batch-Sequence": str(seq)})
    answer = await nc.request(SUBJECT, EVENT, timeout=10, headers={
        "Nats-Msg-Id": f"{batch}-{size}", "Nats-Batch-Id": batch,
        "Nats-Batch-Sequence": str(size), "Nats-Batch-Commit": "1"})
    if "error" in json.loads(answer.data):
        raise RuntimeError(f"batch refused: {answer.data!r}")


async def singly(nc, js, size: int) -> None:
    batch = uuid.uuid4().hex
    for seq in range(1, size + 1):
        await js.publish(SUBJECT, EVENT, headers={"Nats-Msg-Id": f"{batch}-{seq}"})


async def measure(server: NatsServer, batches: int, sizes: list[int]) -> list[dict]:
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="RELAYBENCH", subjects=[SUBJECT],
                                     storage=StorageType.FILE, allow_atomic=True))
    rows = []
    try:
        for size in sizes:
            row = {"size": size}
            for way, append in (("atomic", atomic), ("singly", singly)) * 2:
                cpu, wall = cpu_s(server.proc.pid), time.perf_counter()
                for _ in range(batches):
                    await append(nc, js, size)
                cpu, wall = cpu_s(server.proc.pid) - cpu, time.perf_counter() - wall
                # The second pass of each way counts: the first warms the store up.
                row[f"{way}_cpu_ms"] = 1000 * cpu / batches
                row[f"{way}_wall_ms"] = 1000 * wall / batches
            rows.append(row)
    finally:
        await nc.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--sizes", default="1,4,16,64")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="inferbus-relay-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            rows = asyncio.run(measure(server, args.batches, sizes))
        finally:
            server.stop()
    print(f"{args.batches} batches of each size; per batch, one-replica file stream")
    print(f"{'events':>7s}{'server CPU ms':>28s}{'wall ms':>28s}")
    print(f"{'':>7s}{'atomic':>10s}{'singly':>9s}{'ratio':>9s}{'atomic':>10s}{'singly':>9s}"
          f"{'ratio':>9s}")
    for r in rows:
        print(f"{r['size']:7d}{r['atomic_cpu_ms']:10.3f}{r['singly_cpu_ms']:9.3f}"
              f"{r['singly_cpu_ms'] / r['atomic_cpu_ms']:8.2f}x{r['atomic_wall_ms']:10.3f}"
              f"{r['singly_wall_ms']:9.3f}{r['singly_wall_ms'] / r['atomic_wall_ms']:8.2f}x")


if __name__ == "__main__":
    main()
