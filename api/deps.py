"""The API's typed dependencies: what a route may ask for.

The composition root (:mod:`api.app`) puts one :class:`Services` on
``app.state``; each dependency hands a route its part, typed
(``Annotated[..., Depends(...)]``), so a route names what it uses and a test
can override any of them (``app.dependency_overrides``). Every dependency is
``async`` and takes only the request: FastAPI runs a plain ``def`` one in a
worker thread, and solves each nested dependency on every request, which
together cost the API a sixth of its CPU per job (``bench.bus``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from api.discovery import parse_headers
from api.errors import APIError
from api.geoip import ZONE_HEADER, ZoneResolver
from api.job_serving import JobServing
from api.webhook_targets import HEADER as WEBHOOK_HEADER
from api.keys import KeyRing, Principal
from api.live_nodes import LiveNodes
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.serving import Call, Serving
from api.status_page import StatusBoard
from ledger import Books


@dataclass(frozen=True)
class Services:
    """Everything the routes of one API process use, built once at start."""

    keys: KeyRing
    zones: ZoneResolver
    nodes: LiveNodes
    ledger: Books
    serving: Serving
    jobs: JobServing
    status: StatusBoard


def services(request: Request) -> Services:
    return request.app.state.services


def health_of(request: Request) -> bool:
    """Whether this API process is connected to its NATS servers (False before start)."""
    nc = getattr(request.app.state, "nc", None)
    return nc is not None and nc.is_connected


# Each reads the request's app directly rather than through a ``services``
# dependency: every dependency FastAPI solves costs the request CPU.
async def serving(request: Request) -> Serving:
    return services(request).serving


async def jobs(request: Request) -> JobServing:
    return services(request).jobs


async def live_nodes(request: Request) -> LiveNodes:
    return services(request).nodes


async def ledger(request: Request) -> Books:
    return services(request).ledger


async def status_board(request: Request) -> StatusBoard:
    return services(request).status


ServingDep = Annotated[Serving, Depends(serving)]
JobsDep = Annotated[JobServing, Depends(jobs)]
NodesDep = Annotated[LiveNodes, Depends(live_nodes)]
LedgerDep = Annotated[Books, Depends(ledger)]
StatusDep = Annotated[StatusBoard, Depends(status_board)]


async def principal(request: Request) -> Principal:
    """Who calls: the account of the ``Authorization: Bearer`` key (401 for a
    missing, wrong, revoked or expired key)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       "missing_api_key")
    # Wrong keys are counted per client address (429 after too many, api.auth_failures).
    client = services(request).zones.client_ip(request.client.host if request.client else None,
                                               request.headers.get("x-forwarded-for"))
    return await services(request).keys.authenticate(key.strip(), client)


PrincipalDep = Annotated[Principal, Depends(principal)]


async def hung_up(request: Request) -> None:
    """Returns once the client of ``request`` has disconnected. Its body is read by
    then, so the next ASGI message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _call(body: ChatCompletionRequest | CompletionRequest, request: Request,
          idempotency_key: str | None) -> Call:
    zones = services(request).zones
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    return Call(body=body, zone=zones.resolve(request.headers.get(ZONE_HEADER), peer, forwarded),
                location=zones.locate(peer, forwarded),
                constraints=parse_headers(request.headers, body.model),
                respond_async="respond-async" in request.headers.get("prefer", "").lower(),
                idempotency_key=idempotency_key, base_url=str(request.base_url),
                gone=functools.partial(hung_up, request),
                webhook=request.headers.get(WEBHOOK_HEADER))


async def chat_call(body: ChatCompletionRequest, request: Request,
                    idempotency_key: str | None = Header(None)) -> Call:
    return _call(body, request, idempotency_key)


async def completion_call(body: CompletionRequest, request: Request,
                          idempotency_key: str | None = Header(None)) -> Call:
    return _call(body, request, idempotency_key)


ChatCallDep = Annotated[Call, Depends(chat_call)]
CompletionCallDep = Annotated[Call, Depends(completion_call)]
