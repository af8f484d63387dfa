"""The long-running services' composition roots (``inferbus projector``,
``settle``, ``verifier``, ``gate``): each connects as its service, runs until
``stop``, and drains its connection.
"""
from __future__ import annotations

import asyncio

from bus.config import Settings


async def projector(settings: Settings, stop: asyncio.Event, read_models: bool = True,
                    money: bool = True, shards: list[int] | None = None) -> None:
    """``inferbus projector``: the read models and the money service (settlement,
    the ledger relay, the expiry sweep) in one process, on one connection and one
    read-model store, of the partitions ``shards`` (default: every one; a
    read-model partition and its ledger shard go together); ``--no-settle``
    (``money`` False) the read models alone. ``inferbus settle`` (``read_models``
    False): the money service alone."""
    from bus.guard import connect_service
    from ledger import service
    from projections import layout
    from projections.readmodels import open_store
    nc = await connect_service(settings, "inferbus-projector" if read_models else
                               "inferbus-settle")
    store = await asyncio.to_thread(open_store, settings)
    parts = [layout.serve(nc, store, stop, settings.ledger_partitions, shards)] \
        if read_models else []
    if money:
        parts.append(service.serve(settings, nc, store, stop, shards))
    try:
        await asyncio.gather(*parts)
    finally:
        await nc.drain()
        await asyncio.to_thread(store.close)


async def verifier(settings: Settings, stop: asyncio.Event) -> None:
    """``inferbus verifier``: spot checks of sampled results and probes of nodes on
    probation (see ``verifier/``). Several may run: they share the checks."""
    from bus.guard import connect_service
    from verifier import spot_checks
    nc = await connect_service(settings, "inferbus-verifier")
    try:
        await spot_checks.serve(settings, nc, stop)
    finally:
        await nc.drain()


async def gate(settings: Settings, stop: asyncio.Event) -> None:
    """``inferbus gate``: the trust boundary between nodes and the network (leases,
    outcomes, liveness; see ``gate/``). Several may run: they share the work."""
    from bus.guard import connect_service
    from gate import node_requests as gate
    nc = await connect_service(settings, "inferbus-gate")
    try:
        await gate.serve(settings, nc, stop)
    finally:
        await nc.drain()
