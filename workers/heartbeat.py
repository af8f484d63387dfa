"""Node liveness: a worker puts its ``NodeRecord`` into the ``nodes`` KV bucket
about once a second. The bucket's TTL drops a node that stops."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.js.kv import KeyValue

from bus.node_record import NodeRecord

log = logging.getLogger("inferbus.worker")
INTERVAL_S = 1.0


async def heartbeat(kv: KeyValue, record: Callable[[], NodeRecord], stop: asyncio.Event,
                    refresh: Callable[[], Awaitable[None]] | None = None) -> None:
    """Publish ``record()`` every ``INTERVAL_S`` until ``stop``; then withdraw the node.
    ``refresh`` (if given) updates what the record reports before each beat."""
    node = record().node_id
    while not stop.is_set():
        try:
            if refresh is not None:
                await refresh()
            await kv.put(node, record().model_dump_json().encode())
        except Exception as exc:  # noqa: BLE001 - a missed beat must not kill the worker
            log.warning("heartbeat failed: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), INTERVAL_S)
        except asyncio.TimeoutError:
            pass
    try:
        await kv.delete(node)  # leave routing at once rather than after the TTL
    except Exception:  # noqa: BLE001
        pass
