"""Admin commands that talk to a running network: keys, status."""
from __future__ import annotations

import asyncio

import nats

from api.keys import hash_key, new_key
from bus.config import Settings
from bus.events import ApiKeyIssued
from bus.nodes import NodeRecord
from bus.publish import publish_event
from bus.streams import ensure_streams, nodes_bucket


async def _connect(settings: Settings):
    url = settings.resolved_nats_url()
    try:
        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception as exc:  # noqa: BLE001 - one clear line for the user
        raise RuntimeError(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    return nc, js


async def create_key(settings: Settings, account: str, subcloud: str | None = None) -> str:
    """Issue a key for ``account``; only its hash goes on the log."""
    key = new_key()
    nc, js = await _connect(settings)
    try:
        await publish_event(js, ApiKeyIssued(key_hash=hash_key(key), account=account,
                                             subcloud=subcloud))
    finally:
        await nc.close()
    return key


async def live_nodes(settings: Settings) -> list[NodeRecord]:
    nc, js = await _connect(settings)
    try:
        kv = await nodes_bucket(js)
        try:
            keys = await kv.keys()
        except Exception:  # noqa: BLE001 - nats-py raises NoKeysError on an empty bucket
            keys = []
        records = []
        for key in keys:
            entry = await kv.get(key)
            if entry.value:
                records.append(NodeRecord.model_validate_json(entry.value))
        return records
    finally:
        await nc.close()


def status_table(records: list[NodeRecord]) -> str:
    if not records:
        return "no live nodes"
    rows = [("ZONE", "NODE", "TIER", "GPU", "MODELS", "BUSY")]
    for r in sorted(records, key=lambda r: (r.zone, r.node_id)):
        rows.append((r.zone, r.node_id[:12], str(r.tier), r.gpu,
                     ",".join(m.name for m in r.models), str(r.busy)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def run(coro):
    return asyncio.run(coro)
