"""``inferbus webhooks``: the webhook dispatcher's composition root.

One process (several may run: they share the durable consumer, each outcome
goes to one) connected like every service, reading the job read models, the
ledger (for a job's cost) and the content store (its result), so what a
receiver gets is exactly ``GET /v1/jobs/{id}``'s body.
"""
from __future__ import annotations

import asyncio

from api.cancellation import Cancellation
from api.job_serving import JobServing
from api.webhook_delivery import Sender
from api.webhook_dispatch import Dispatcher
from api.webhook_signing import network_secret
from api.webhook_targets import WebhookTargets, bucket_ttl_s
from bus.config import Settings
from bus.content import ContentStore
from bus.guard import connect_service
from bus.streams import cancels_bucket, webhooks_bucket
from ledger import open_ledger
from projections.readmodels import open_store


async def targets_of(js, settings: Settings) -> WebhookTargets:
    """The ``webhooks`` bucket (made if missing, in the home region) as targets."""
    kv = await webhooks_bucket(js, bucket_ttl_s(settings), settings.stream_replicas,
                               settings.home_placement())
    return WebhookTargets(kv, settings.webhook_allow_private)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Deliver webhooks until ``stop`` is set."""
    secret = network_secret(settings)
    nc = await connect_service(settings, "inferbus-webhooks")
    js = nc.jetstream()
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(open_ledger, settings)
    sender = Sender(settings.webhook_timeout_s, settings.webhook_allow_private)
    try:
        job_life_s = settings.job_timeout_s + settings.expiry_grace_s
        cancels = await cancels_bucket(js, job_life_s, settings.stream_replicas,
                                       settings.home_placement())
        content = ContentStore(js, settings.layout(), settings.content_retention_s)
        jobs = JobServing(store, ledger, Cancellation(nc, js, cancels), content)
        dispatcher = Dispatcher(js, await targets_of(js, settings), jobs, store, sender,
                                secret, settings)
        await dispatcher.run(stop)
    finally:
        await sender.close()
        await nc.drain()
        await asyncio.to_thread(store.close)
        await asyncio.to_thread(ledger.close)
