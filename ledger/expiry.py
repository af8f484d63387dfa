"""The expiry sweep: a reservation still held well past its job's deadline is
refunded, and its job logged as expired.

Settlement resolves a reservation when its job's outcome is logged; a job
whose outcome never is (its API instance died between the hold and the log,
its node vanished with the lease) would hold its credits forever. The sweep
finds those in the balances read model and refunds them through the ledger,
which resolves a reservation at most once, so a late outcome after the sweep
changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from nats.js import JetStreamContext

from bus.events import JobExpired
from bus.partitions import shard_of_job
from bus.publish import publish_event
from ledger.application import Ledger
from projections.balances import expired_reservations
from projections.store import Store

log = logging.getLogger("inferbus.settlement")
SWEEP_EVERY_S = 5.0
# A job with a logged completion or cancel is left to settlement this many graces
# longer: settlement held up by an outage must not find it refunded as expired.
OUTCOME_GRACE_FACTOR = 10


async def sweep_expired(store: Store, ledger: Ledger, js: JetStreamContext, grace_s: float,
                        stop: asyncio.Event) -> None:
    """Close reservations still pending past deadline + grace: refund and log expiry
    (those of ``ledger``'s own shard, where the ledger is in shards)."""
    while not stop.is_set():
        try:
            now = datetime.now(timezone.utc)
            for job_id in await asyncio.to_thread(expired_reservations, store, now, grace_s,
                                                  grace_s * OUTCOME_GRACE_FACTOR):
                if ledger.shards > 1 and shard_of_job(job_id, ledger.shards) != ledger.shard:
                    continue  # another shard's sweep refunds it
                resolution = await asyncio.to_thread(ledger.refund, job_id, "expired")
                if not resolution.already:
                    view = await asyncio.to_thread(ledger.reservation, job_id)
                    await publish_event(js, JobExpired(job_id=job_id, zone=view.zone), view.zone)
        except Exception:  # noqa: BLE001 - the next sweep tries again
            log.exception("expiry sweep failed")
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_EVERY_S)
        except asyncio.TimeoutError:
            pass
