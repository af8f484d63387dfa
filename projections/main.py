"""Composition root of the projector process: the read models, settlement,
the ledger relay and the expiry sweep, until ``stop`` is set.

Read models and the relay use nats-py (ordered consumption from a stored
position); settlement is a faststream durable consumer, one handler per
outcome event.
"""
from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker

from bus.config import Settings
from bus.connection import connect, nkey_seed, server_list
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
    url = settings.resolved_nats_url()
    nc = await connect(settings, "inferbus-projector")
    js = nc.jetstream()
    await ensure_streams(js, settings.stream_replicas)
    await refuse_unsafe_bus(settings, js)
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(Ledger.open, settings)
    seed = nkey_seed(settings)
    auth = {"nkeys_seed": str(seed)} if seed else {}
    broker = NatsBroker(server_list(url), name="inferbus-settlement", max_reconnect_attempts=-1,
                        log_level=logging.DEBUG, **auth)  # one line per settled job is noise
    claims = await claims_bucket(js, settings.job_timeout_s + settings.expiry_grace_s,
                                 settings.stream_replicas)
    settlement.subscribe(broker, settlement.Settlement(ledger, settings.pricing), js,
                         Leases(claims, settings.job_ack_wait_s), settings.job_ack_wait_s)
    await broker.start()
    try:
        await asyncio.gather(
            Projector(store, js).run(stop),
            run_relay(ledger, js, stop),
            settlement.sweep_expired(store, ledger, js, settings.expiry_grace_s, stop))
    finally:
        await broker.stop()
        await nc.drain()
        await asyncio.to_thread(store.close)
        await asyncio.to_thread(ledger.close)
    log.info("projector stopped")
