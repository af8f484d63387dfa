"""The API's composition root: connects the bus and read models, wires routes."""
from __future__ import annotations

from contextlib import asynccontextmanager

import nats
from fastapi import FastAPI

from api import errors
from api.jobs import JobQueries
from api.keys import KeyRing
from api.nodes import LiveNodes
from api.replies import ReplyRouter
from api.routes import router
from api.serving import Serving
from api.zones import ZoneResolver
from bus.config import Settings
from bus.streams import ensure_streams, nodes_bucket
from projections.store import open_store


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = await nats.connect(settings.resolved_nats_url(), name="api",
                                max_reconnect_attempts=-1)
        js = nc.jetstream()
        await ensure_streams(js, settings.stream_replicas)
        nodes, replies = LiveNodes(), ReplyRouter(nc)
        await nodes.watch(await nodes_bucket(js, settings.stream_replicas))
        await replies.start()
        store = open_store(settings)
        app.state.keys = KeyRing(js)
        app.state.nodes = nodes
        app.state.zones = ZoneResolver(settings.geoip_db, settings.trusted_proxies)
        app.state.serving = Serving(js, nodes, replies, settings.job_timeout_s)
        app.state.jobs = JobQueries(store)
        try:
            yield
        finally:
            await nodes.close()
            await replies.stop()
            await nc.drain()
            store.close()

    app = FastAPI(title="inferbus", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    return app
