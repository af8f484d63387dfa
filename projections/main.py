"""Composition root of the projector process: the read models, settlement,
the ledger relay and the expiry sweep, until ``stop`` is set.

Read models and the relay use nats-py (ordered consumption from a stored
position); settlement is a nats-py durable pull consumer that settles each
pull's outcomes in one ledger save.
"""
from __future__ import annotations

import asyncio
import logging

from bus.config import Settings
from bus.connection import connect
from bus.guard import refuse_unsafe_bus
from bus.leases import Leases
from bus.ledger import Ledger
from bus.relay import run_relay
from bus.streams import claims_bucket, ensure_streams
from projections import settlement
from projections.projector import Projector
from projections.store import open_store

log = logging.getLogger("inferbus.projections")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    nc = await connect(settings, "inferbus-projector")
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    await refuse_unsafe_bus(settings, js)
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(Ledger.open, settings)
    claims = await claims_bucket(js, settings.job_timeout_s + settings.expiry_grace_s,
                                 settings.stream_replicas)
    try:
        await asyncio.gather(
            settlement.consume(js, settlement.Settlement(ledger, settings.pricing),
                               Leases(claims, settings.job_ack_wait_s), stop,
                               settings.job_ack_wait_s),
            Projector(store, js).run(stop),
            run_relay(ledger, js, stop),
            settlement.sweep_expired(store, ledger, js, settings.expiry_grace_s, stop))
    finally:
        await nc.drain()
        await asyncio.to_thread(store.close)
        await asyncio.to_thread(ledger.close)
    log.info("projector stopped")
