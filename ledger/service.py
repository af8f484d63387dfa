"""The money service: settlement, the ledger relay, the expiry sweep and the
subscription renewal clock, run together until ``stop`` is set (``inferbus
projector`` runs it beside the read models, on one connection; see
``cli/main.py``).

Each runs per ledger shard (``bus.partitions``): one process may run every
shard's, or ``inferbus settle --shard K`` just one, so that shards add billing
throughput. Settlement is a nats-py durable pull consumer that settles each
pull's outcomes in one ledger save; the relay reads the ledger's new money events and
appends them to the log; the sweep refunds what no outcome resolved; the
renewal clock (:mod:`ledger.renewals`) renews or lapses subscriptions due.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from nats.aio.client import Client

from bus.config import Settings
from bus.leases import Leases
from bus.streams import claims_bucket
from ledger.shards import Shards, open_ledger
from ledger.expiry import sweep_expired
from ledger.relay import Relay
from ledger.renewals import RenewalClock
from ledger.settlement import Settlement, consume
from projections.store import Store

log = logging.getLogger("inferbus.settlement")


async def serve(settings: Settings, nc: Client, store: Store, stop: asyncio.Event,
                shards: Sequence[int] | None = None) -> None:
    """Run the four until ``stop``, over ``nc`` (a service's connection: see
    ``bus.guard.connect_service``), for ledger shards ``shards`` (default: every
    one; ``inferbus settle --shard K`` runs one per process); the sweep reads
    ``store``'s balances."""
    js = nc.jetstream()
    ledger = await asyncio.to_thread(open_ledger, settings)
    n = settings.ledger_partitions
    claims = await claims_bucket(js, settings.job_timeout_s + settings.expiry_grace_s,
                                 settings.stream_replicas, placement=settings.home_placement())
    leases = Leases(claims, settings.job_ack_wait_s)
    # Settlement resolves through the whole ledger: what a job owes another shard's
    # accounts (an operator's RCP, a referral reward) is received there (ledger.shards).
    settling = Settlement(ledger, settings.pricing)
    loops = []
    for k in (range(n) if shards is None else shards):
        own = ledger.ledgers[k] if isinstance(ledger, Shards) else ledger
        loops += [consume(js, settling, leases, stop, settings.job_ack_wait_s, k, n),
                  Relay(own, js).run(stop),
                  sweep_expired(store, own, js, settings.expiry_grace_s, stop),
                  RenewalClock(own).run(stop)]
    try:
        await asyncio.gather(*loops)
    finally:
        await asyncio.to_thread(ledger.close)
    log.info("settlement stopped")
