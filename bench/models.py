"""Distributing a model by content address: SmolLM2's safetensors (converted
once) pushed to a store, then fetched by 1 and by N fresh nodes through the
gate, against a raw Object Store ``get`` of the same weights, in the same run.

    .venv/bin/python -m bench.models [--workers 4] [--model-dir DIR] [--keep]

On one nats-server (loopback, no auth): ``models push`` (seconds, MB/s), the
raw baseline (the weights file as one object, nats-py ``ObjectStore.get``),
then nodes in processes of their own, each with an empty data dir, running
the worker's own fetch (``workers.model_source.obtain``: manifest and plans
from the gate, chunks pulled and hash-checked, written, renamed into place).
A node's time is from its first request to the gate to the model dir being
whole (the Python start-up before it is not counted; the wall clock of the
N-node round is printed too). Then a second version with one tensor changed
is pushed (what it stored: the dedup ratio) under a new name, and a fresh
node is started as a real ``inferbus worker``: the time from the push's
start to the first streamed token from it. Prints ratios; writes
bench/results/models.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats

from bench.report import save
from bus import signing
from bus.config import Settings
from bus.grants import NodeGrant, put_grant
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
        return {"seconds": seconds, "bytes": size, "root": got.root}
    print(json.dumps(asyncio.run(go())))


async def grant(url: str, ids: list[str], zone: str = "eu") -> None:
    nc = await nats.connect(url)
    kv = await grants_bucket(nc.jetstream())
    for i, node in enumerate(ids):
        await put_grant(kv, NodeGrant(node_id=node, node_name=f"bench-{i}", operator="op",
                                      zone=zone, models=(NAME, f"{NAME}-v2"), tier=1))
    await nc.close()


async def raw_get(url: str, weights: Path) -> dict:
    """The baseline: the weights as one object, read back with ``ObjectStore.get``."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    obj = await js.create_object_store("raw")
    data = weights.read_bytes()
    await obj.put("weights", data)
    started = time.monotonic()
    got = await obj.get("weights")
    seconds = time.monotonic() - started
    assert got.data == data
    await js.delete_object_store("raw")
    await nc.close()
    return {"seconds": seconds, "bytes": len(data), "mb_s": len(data) / MB / seconds}


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
            "mb_s_per_node": size / MB / slowest, "each_s": [r["seconds"] for r in results]}


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
        raw = asyncio.run(raw_get(server.url, model / "model.safetensors"))
        print(f"raw ObjectStore.get of the weights: {raw['seconds']:.2f} s, "
              f"{raw['mb_s']:.0f} MB/s")
        stack.start("gate", "gate")
        one = fetch_round(env, tmp, server.url, 1, "one")
        print(f"1 node: {one['slowest_s']:.2f} s, {one['mb_s_per_node']:.0f} MB/s "
              f"({one['mb_s_per_node'] / raw['mb_s']:.2f}x raw get)")
        many = fetch_round(env, tmp, server.url, args.workers, "many")
        print(f"{args.workers} nodes at once: slowest {many['slowest_s']:.2f} s "
              f"({many['slowest_s'] / one['slowest_s']:.2f}x one node), wall {many['wall_s']:.1f} s")
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
                  "push_mb_s": pushed.size / MB / push_s, "raw_get": raw, "one_node": one,
                  "many_nodes": many, "one_vs_raw": one["mb_s_per_node"] / raw["mb_s"],
                  "many_vs_one": many["slowest_s"] / one["slowest_s"],
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
