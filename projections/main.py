"""Composition root of the projector process.

Wires settings to a NATS connection, the streams and the read-model store,
then runs the :class:`~projections.projector.Projector` until ``stop`` is set.
"""
from __future__ import annotations

import asyncio
import logging

import nats

from bus.config import Settings
from bus.streams import ensure_streams
from projections.projector import Projector
from projections.store import open_store

log = logging.getLogger("inferbus.projections")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Project the EVENTS stream into the configured store until ``stop``."""
    nc = await nats.connect(settings.resolved_nats_url(), name="inferbus-projector",
                            max_reconnect_attempts=-1)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_replicas)
        # Opening the store may block (PostgreSQL connect, SQLite schema).
        store = await asyncio.to_thread(open_store, settings)
        try:
            await Projector(store, js).run(stop)
        finally:
            await asyncio.to_thread(store.close)
    finally:
        await nc.close()
    log.info("projector stopped")
