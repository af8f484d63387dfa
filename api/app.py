"""The API's composition root: connects the bus, ledger and read models, builds
the :class:`~api.deps.Services` the routes use, and serves them with uvicorn."""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from api import dashboard, errors
from api.admission import Admission
from api.cancellation import Cancellation
from api import embeddings
from api.embedding_serving import EmbeddingServing
from api.deps import Services
from api.discovery import Policy
from api.escalation import Escalator
from api.geoip import ZoneResolver
from api.job_serving import JobServing
from api.keys import KeyRing
from api.limits import BodyLimit, KeyLimiter, SpendGuard
from api import account_routes
from api.account_rate import account_rate_of
from api.account_serving import Accounts
from api.auth_failures import AuthFailures
from api.live_nodes import LiveNodes
from api.reply_router import ReplyRouter
from api.routes import router
from api.routing import RegionProbe, Routing
from api.serving import Serving, ServingConfig
from api.status_page import RequestCounter, StatusBoard
from api.subclouds import Subclouds
from api import asyncapi, webhook_routes
from api import referral_routes
from api.webhook_service import targets_of
from api.webhook_signing import network_secret
from bus.config import Settings
from bus.content import ContentStore
from bus.guard import connect_service, preflight
from bus.grants import GrantBook
from bus.model_book import CatalogBook
from bus.node_location import checks_on
from bus.streams import (cancels_bucket, claims_bucket, grants_bucket, models_bucket,
                         nodes_bucket)
from ledger import open_ledger
from projections.readmodels import open_store


class RegionHeader:
    """Every response says which region processed it (``X-Inferbus-Region``)."""

    def __init__(self, app, region: str) -> None:
        self.app, self.header = app, (b"x-inferbus-region", region.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def tagged(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)
        await self.app(scope, receive, tagged)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        nc = app.state.nc = await connect_service(settings, "api")
        js = nc.jetstream()
        replicas, home = settings.stream_replicas, settings.home_placement()
        grants = await GrantBook().follow(await grants_bucket(js, replicas, home))
        catalog = await CatalogBook(settings.published_models_only).follow(
            await models_bucket(js, replicas, home))
        nodes = LiveNodes(grants=grants, check_locations=checks_on(settings), catalog=catalog)
        replies = ReplyRouter(nc)
        await nodes.watch(await nodes_bucket(js, replicas, home))
        await replies.start()
        job_life_s = settings.job_timeout_s + settings.expiry_grace_s
        cancels = await cancels_bucket(js, job_life_s, replicas, home)
        claims = await claims_bucket(js, job_life_s, replicas, home)
        webhooks = app.state.webhook_targets = await targets_of(js, settings)
        app.state.webhook_secret = await asyncio.to_thread(network_secret, settings)
        escalator = Escalator(js, claims, settings.zone_wait_s, settings.node_wait_s)
        store = app.state.read_store = await asyncio.to_thread(open_store, settings)
        ledger = await asyncio.to_thread(open_ledger, settings)
        cancellation = Cancellation(nc, js, cancels)
        content = ContentStore(js, settings.layout(), settings.content_retention_s)
        jobs = JobServing(store, ledger, cancellation, content)
        routing = Routing(nodes, Subclouds(js), Policy(), settings.layout(),
                          settings.this_region(), RegionProbe(js, settings.layout()))
        keys = KeyRing(js, AuthFailures(settings.auth_failures_per_window,
                                        settings.auth_failure_window_s))
        admission = Admission(js, nodes, routing, ledger,
                              settings.pricing, escalator, settings.job_timeout_s,
                              webhooks=webhooks, spend=SpendGuard(store, keys))
        serving = Serving(ServingConfig.of(settings), admission=admission, replies=replies,
                          jobs=jobs, cancellation=cancellation,
                          limits=KeyLimiter(store, settings.rate_per_minute,
                                            settings.max_jobs_in_flight,
                                            await account_rate_of(js, settings)))
        # Embeddings share the chat path's admission, replies and the key's limits.
        app.state.embeddings = EmbeddingServing(admission, replies, serving._limits, jobs,
                                                settings.job_timeout_s)
        zones = ZoneResolver(settings.geoip_db, settings.trusted_proxies, settings.zone_table())
        app.state.accounts = Accounts(js, store, keys, settings.webhook_allow_private)
        app.state.services = Services(keys, zones, nodes, ledger, serving, jobs,
                                      StatusBoard(nodes, store))
        try:
            yield
        finally:
            await escalator.close()
            await nodes.close()
            await grants.close()
            await catalog.close()
            await replies.stop()
            await nc.drain()
            store.close()
            ledger.close()

    app = FastAPI(title="inferbus", version="0.1.0", lifespan=lifespan)
    errors.install(app)
    app.include_router(router)
    app.include_router(embeddings.router)
    app.include_router(account_routes.router)
    app.include_router(asyncapi.router)
    app.include_router(webhook_routes.router)
    app.include_router(referral_routes.router)
    app.include_router(dashboard.router)
    app.add_middleware(RequestCounter)
    app.add_middleware(RegionHeader, region=settings.this_region())
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """``inferbus api``: serve the HTTP API with uvicorn."""
    asyncio.run(preflight(settings))  # a production refusal as one line, before uvicorn
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning",
                proxy_headers=False)  # X-Forwarded-For is judged by api.geoip, not uvicorn
