"""The API's composition root: connects the bus, ledger and read models, wires routes."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors
from api.discovery import Policy
from api.escalation import Escalator
from api.jobs import JobQueries
from api.keys import KeyRing
from api.limits import BodyLimit, KeyLimiter
from api.network import router as network_router
from api.nodes import LiveNodes
from api.replies import ReplyRouter
from api.routes import router
from api.routing import Routing
from api.serving import Serving
from api.status import RequestCounter
from api.status import router as status_router
from api.subclouds import Subclouds
from api.zones import ZoneResolver
from bus.config import Settings
from bus.connection import connect
from bus.guard import refuse_unsafe_bus
from bus.ledger import Ledger
from bus.streams import cancels_bucket, claims_bucket, ensure_streams, nodes_bucket
from projections.store import open_store


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await connect(settings, "api")
        js = nc.jetstream()
        replicas = settings.stream_replicas
        await ensure_streams(js, replicas)
        await refuse_unsafe_bus(settings, js)
        nodes, replies = LiveNodes(), ReplyRouter(nc)
        await nodes.watch(await nodes_bucket(js, replicas))
        await replies.start()
        job_life_s = settings.job_timeout_s + settings.expiry_grace_s
        cancels = await cancels_bucket(js, job_life_s, replicas)
        claims = await claims_bucket(js, job_life_s, replicas)
        escalator = Escalator(js, claims, settings.zone_wait_s, settings.node_wait_s)
        routing = Routing(nodes, Subclouds(js), Policy())
        store = await asyncio.to_thread(open_store, settings)
        ledger = await asyncio.to_thread(Ledger.open, settings)
        app.state.settings = settings
        app.state.ledger = ledger
        app.state.keys = KeyRing(js)
        app.state.nodes = nodes
        app.state.zones = ZoneResolver(settings.geoip_db, settings.trusted_proxies,
                                       settings.zone_table())
        app.state.serving = Serving(nc, js, nodes, replies, ledger, settings.pricing, cancels,
                                    routing, escalator, settings.job_timeout_s)
        app.state.jobs = JobQueries(store, ledger)
        app.state.jobs_store = store
        app.state.limits = KeyLimiter(store, settings.rate_per_minute,
                                      settings.max_jobs_in_flight)
        try:
            yield
        finally:
            await escalator.close()
            await nodes.close()
            await replies.stop()
            await nc.drain()
            store.close()
            ledger.close()

    app = FastAPI(title="inferbus", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    app.include_router(network_router)
    app.include_router(status_router)
    app.add_middleware(RequestCounter)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
