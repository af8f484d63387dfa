"""The API's typed dependencies: what a route may ask for.

The composition root (:mod:`api.app`) puts one :class:`Services` on
``app.state``; each dependency hands a route its part, typed
(``Annotated[..., Depends(...)]``), so a route names what it uses and a test
can override any of them (``app.dependency_overrides``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from api.discovery import parse_headers
from api.errors import APIError
from api.geoip import ZONE_HEADER, ZoneResolver
from api.job_serving import JobServing
from api.keys import KeyRing, Principal
from api.live_nodes import LiveNodes
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.serving import Call, Serving
from api.status_page import StatusBoard
from ledger import Ledger


@dataclass(frozen=True)
class Services:
    """Everything the routes of one API process use, built once at start."""

    keys: KeyRing
    zones: ZoneResolver
    nodes: LiveNodes
    ledger: Ledger
    serving: Serving
    jobs: JobServing
    status: StatusBoard


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def serving(s: ServicesDep) -> Serving:
    return s.serving


def jobs(s: ServicesDep) -> JobServing:
    return s.jobs


def live_nodes(s: ServicesDep) -> LiveNodes:
    return s.nodes


def ledger(s: ServicesDep) -> Ledger:
    return s.ledger


def status_board(s: ServicesDep) -> StatusBoard:
    return s.status


ServingDep = Annotated[Serving, Depends(serving)]
JobsDep = Annotated[JobServing, Depends(jobs)]
NodesDep = Annotated[LiveNodes, Depends(live_nodes)]
LedgerDep = Annotated[Ledger, Depends(ledger)]
StatusDep = Annotated[StatusBoard, Depends(status_board)]


async def principal(request: Request, s: ServicesDep) -> Principal:
    """Who calls: the account of the ``Authorization: Bearer`` key (401 otherwise)."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       "missing_api_key")
    who = await s.keys.lookup(key.strip())
    if who is None:
        raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
    return who


PrincipalDep = Annotated[Principal, Depends(principal)]


def _call(body: ChatCompletionRequest | CompletionRequest, request: Request,
          zones: ZoneResolver, idempotency_key: str | None) -> Call:
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    return Call(body=body, zone=zones.resolve(request.headers.get(ZONE_HEADER), peer, forwarded),
                location=zones.locate(peer, forwarded),
                constraints=parse_headers(request.headers, body.model),
                respond_async="respond-async" in request.headers.get("prefer", "").lower(),
                idempotency_key=idempotency_key)


async def chat_call(body: ChatCompletionRequest, request: Request, s: ServicesDep,
                    idempotency_key: str | None = Header(None)) -> Call:
    return _call(body, request, s.zones, idempotency_key)


async def completion_call(body: CompletionRequest, request: Request, s: ServicesDep,
                          idempotency_key: str | None = Header(None)) -> Call:
    return _call(body, request, s.zones, idempotency_key)


ChatCallDep = Annotated[Call, Depends(chat_call)]
CompletionCallDep = Annotated[Call, Depends(completion_call)]
