"""The money service: settlement, the ledger relay, the expiry sweep and the
subscription renewal clock, run together until ``stop`` is set (``inferbus
projector`` runs it beside the read models, on one connection; see
``cli/main.py``).

Settlement is a nats-py durable pull consumer that settles each pull's
outcomes in one ledger save; the relay reads the ledger's new money events and
appends them to the log; the sweep refunds what no outcome resolved; the
renewal clock (:mod:`ledger.renewals`) renews or lapses subscriptions due.
"""
from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client

from bus.config import Settings
from bus.leases import Leases
from bus.streams import claims_bucket
from ledger.application import Ledger
from ledger.expiry import sweep_expired
from ledger.relay import Relay
from ledger.renewals import RenewalClock
from ledger.settlement import Settlement, consume
from projections.store import Store

log = logging.getLogger("inferbus.settlement")


async def serve(settings: Settings, nc: Client, store: Store, stop: asyncio.Event) -> None:
    """Run the four until ``stop``, over ``nc`` (a service's connection: see
    ``bus.guard.connect_service``); the sweep reads ``store``'s balances."""
    js = nc.jetstream()
    ledger = await asyncio.to_thread(Ledger.open, settings)
    claims = await claims_bucket(js, settings.job_timeout_s + settings.expiry_grace_s,
                                 settings.stream_replicas, placement=settings.home_placement())
    try:
        await asyncio.gather(
            consume(js, Settlement(ledger, settings.pricing),
                    Leases(claims, settings.job_ack_wait_s), stop, settings.job_ack_wait_s),
            Relay(ledger, js).run(stop),
            sweep_expired(store, ledger, js, settings.expiry_grace_s, stop),
            RenewalClock(ledger).run(stop))
    finally:
        await asyncio.to_thread(ledger.close)
    log.info("settlement stopped")
