"""Distributing a model by content address: SmolLM2's safetensors (converted
once) pushed to a store, then fetched by 1 and by N fresh nodes through the
gate, against a raw Object Store ``get`` of the same weights, in the same run.

    .venv/bin/python -m bench.models [--workers 4] [--model-dir DIR] [--no-get] [--keep]

On one nats-server (loopback, no auth): ``models push`` (seconds, MB/s), the
raw baselines (the weights file as one object: nats-py ``ObjectStore.get``, and
the stream's fastest raw read of it),
then nodes in processes of their own, each with an empty data dir, running
the worker's own fetch (``workers.model_source.obtain``: manifest and plans
from the gate, chunks pulled and hash-checked, written, renamed into place).
A node's time is from its first request to the gate to the model dir being
whole (the Python start-up before it is not counted); rounds of 2 and N nodes
at once follow (on one machine they share its cores with the server). Then a second version with one tensor changed
is pushed (what it stored: the dedup ratio) under a new name, and a fresh
node is started as a real ``inferbus worker``: the time from the push's
start to the first streamed token from it. Prints ratios; writes
bench/results/models.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.js import api

from bench.report import save
from bus import signing, subjects
from bus.config import Settings
from bus.grants import NodeGrant, put_grant
from bus.model_store import PART_SIZE
from bus.streams import grants_bucket
from cli import model_admin
from tests.natsd import NatsServer
from tests.stack import Stack
from workers.models import DEFAULT_MODEL, pull

NAME = "smollm2"
MB = 1e6


def child(data_dir: str, node_key: str) -> None:
    """One fresh node's fetch, as the worker does it; prints its timing as JSON."""
    from bus.connection import connect
    from workers.model_source import obtain

    async def go() -> dict:
        settings = Settings(data_dir=Path(data_dir))
        key = signing.load_or_create_key(Path(node_key))
        nc = await connect(settings, "bench-node")
        started = time.monotonic()
        got = await obtain(settings, nc, signing.node_id(key), NAME)
        seconds = time.monotonic() - started
        await nc.close()
        size = sum(f.stat().st_size for f in got.path.rglob("*") if f.is_file())
        return {"seconds": seconds, "bytes": size, "root": got.root, "cpu_s": time.process_time()}
    print(json.dumps(asyncio.run(go())))


async def grant(url: str, ids: list[str], zone: str = "eu") -> None:
    nc = await nats.connect(url)
    kv = await grants_bucket(nc.jetstream())
    for i, node in enumerate(ids):
        await put_grant(kv, NodeGrant(node_id=node, node_name=f"bench-{i}", operator="op",
                                      zone=zone, models=(NAME, f"{NAME}-v2"), tier=1))
    await nc.close()


async def raw_reads(url: str, weights: Path, with_get: bool) -> dict:
    """The baselines: the weights as one object (512 KiB parts, as ours), read back
    with ``ObjectStore.get``, and with the fastest raw read the stream offers (a
    pull consumer on the object's subject, no acks, batches of 64, bytes kept in
    memory, nothing checked or written)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    obj = await js.create_object_store("raw")
    data = weights.read_bytes()
    info = await obj.put("weights", data, meta=api.ObjectMeta(
        name="weights", options=api.ObjectMetaOptions(max_chunk_size=PART_SIZE)))
    out = {"bytes": len(data)}
    started = time.monotonic()
    sub = await js.pull_subscribe(
        subjects.object_chunks("raw", info.nuid), stream=subjects.object_stream("raw"),
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE), pending_bytes_limit=256 << 20)
    got = 0
    while got < info.chunks:
        got += len(await sub.fetch(min(64, info.chunks - got), timeout=10))
    seconds = time.monotonic() - started
    out["pull"] = {"seconds": seconds, "mb_s": len(data) / MB / seconds}
    if with_get:
        started = time.monotonic()
        read = await obj.get("weights")
        seconds = time.monotonic() - started
        assert read.data == data
        out["get"] = {"seconds": seconds, "mb_s": len(data) / MB / seconds}
    await js.delete_object_store("raw")
    await nc.close()
    return out


def fetch_round(env: dict, tmp: Path, url: str, n: int, tag: str) -> dict:
    """``n`` fresh nodes fetching at once; each one's own timing and the wall clock."""
    dirs = [tmp / f"{tag}-{i}" for i in range(n)]
    keys = [d / "node.key" for d in dirs]
    ids = [signing.node_id(signing.load_or_create_key(k)) for k in keys]
    asyncio.run(grant(url, ids))
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "bench.models", "--child", str(d), str(k)],
                              env={**env, "INFERBUS_DATA_DIR": str(d)}, stdout=subprocess.PIPE,
                              text=True) for d, k in zip(dirs, keys)]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"a node's fetch failed (exit {p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.monotonic() - started
    slowest = max(r["seconds"] for r in results)
    size = results[0]["bytes"]
    return {"nodes": n, "slowest_s": slowest, "wall_s": wall, "bytes": size,
            "mb_s_per_node": size / MB / slowest, "each_s": [r["seconds"] for r in results],
            "cpu_s": [r["cpu_s"] for r in results]}


def one_tensor_changed(src: Path, dest: Path) -> str:
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dest)
    weights = load_file(dest / "model.safetensors")
    name = next(n for n in sorted(weights) if "layers.0.self_attn.q_proj" in n)
    weights[name] = weights[name] * 1.01
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return name


def first_token(stack: Stack, tmp: Path, v2: Path) -> dict:
    """From ``models push`` of a new model to its first streamed token from a fresh node."""
    key = stack.new_key("bench", "1000")
    node_dir = tmp / "first-token-node"
    started = time.monotonic()
    pushed = stack.cli("models", "push", str(v2), "--name", f"{NAME}-v2")
    pushed_at = time.monotonic() - started
    ids = [signing.node_id(signing.load_or_create_key(node_dir / "node" / "eu-new.key"))]
    asyncio.run(grant(stack.nats_url, ids))
    stack.start("new-node", "worker", "--zone", "eu", "--model", f"{NAME}-v2", "--node-name",
                "eu-new", env={"INFERBUS_DATA_DIR": str(node_dir)})
    stack.wait_for_model(key, f"{NAME}-v2", timeout=300)
    listed_at = time.monotonic() - started
    body = {"model": f"{NAME}-v2", "max_tokens": 4, "stream": True, "temperature": 0,
            "messages": [{"role": "user", "content": "hello"}]}
    with httpx.stream("POST", f"{stack.base_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"}) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                break
    total = time.monotonic() - started
    return {"push_s": pushed_at, "listed_s": listed_at, "first_token_s": total,
            "push_output": pushed.stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--model-dir", type=Path, help="a model dir (default: SmolLM2, converted)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir")
    ap.add_argument("--no-get", action="store_true",
                    help="skip the ObjectStore.get baseline (minutes: nats-py reads ~1 MB/s)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    model = args.model_dir or pull(DEFAULT_MODEL, Settings().models_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-models-"))
    server = NatsServer(tmp / "nats").start()
    stack = Stack(tmp / "stack", server.url)
    stack.data_dir.mkdir()
    env = stack.env()
    try:
        admin = Settings(nats_url=server.url, data_dir=tmp / "admin")
        started = time.monotonic()
        pushed = asyncio.run(model_admin.push(admin, model, NAME, None))
        push_s = time.monotonic() - started
        print(pushed.render())
        raw = asyncio.run(raw_reads(server.url, model / "model.safetensors", not args.no_get))
        for how, r in raw.items():
            if how != "bytes":
                print(f"raw {how} of the weights: {r['seconds']:.2f} s, {r['mb_s']:.0f} MB/s")
        stack.start("gate", "gate")
        one = fetch_round(env, tmp, server.url, 1, "one")
        print(f"1 node: {one['slowest_s']:.2f} s, {one['mb_s_per_node']:.0f} MB/s "
              + ", ".join(f"{one['mb_s_per_node'] / r['mb_s']:.2f}x raw {how}"
                          for how, r in raw.items() if how != "bytes"))
        rounds = {}
        for n in sorted({2, args.workers}):
            many = rounds[n] = fetch_round(env, tmp, server.url, n, f"many{n}")
            print(f"{n} nodes at once: slowest {many['slowest_s']:.2f} s "
                  f"({many['slowest_s'] / one['slowest_s']:.2f}x one node), the store delivering "
                  f"{n * many['bytes'] / MB / many['slowest_s']:.0f} MB/s in all; the nodes used "
                  f"{sum(many['cpu_s']):.1f} CPU-s (one node alone: {one['cpu_s'][0]:.1f}) of the "
                  f"machine's {os.cpu_count()} cores")
        v2 = tmp / "v2"
        tensor = one_tensor_changed(model, v2)
        again = asyncio.run(model_admin.push(admin, v2, NAME, None))
        print(f"one tensor changed ({tensor}):\n{again.render()}")
        stack.start_projector()
        stack.start_api()
        ft = first_token(stack, tmp, v2)
        print(f"push -> first token on a new node: {ft['first_token_s']:.1f} s (push "
              f"{ft['push_s']:.1f} s, listed {ft['listed_s']:.1f} s)")
        result = {"model_bytes": pushed.size, "chunks": pushed.chunks, "push_s": push_s,
                  "push_mb_s": pushed.size / MB / push_s, "raw": raw, "one_node": one,
                  "rounds": rounds, "one_vs_raw": {how: one["mb_s_per_node"] / r["mb_s"]
                                                   for how, r in raw.items() if how != "bytes"},
                  "many_vs_one": {n: r["slowest_s"] / one["slowest_s"] for n, r in rounds.items()},
                  "dedup": {"tensor": tensor, "stored_bytes": again.stored_bytes,
                            "stored_chunks": again.stored_chunks, "size": again.size,
                            "dedup_ratio": 1 - again.stored_bytes / again.size},
                  "first_token": ft}
        print(f"wrote {save('models', result)}")
    finally:
        stack.stop()
        server.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
