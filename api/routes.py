"""The HTTP routes: each takes its typed dependencies (:mod:`api.deps`), calls
one serving method and maps the result to a response. Nothing here decides.

``GET /v1/network/candidates?model=M&near=52.5,13.4&within_km=50&tier=4-6
&min_free_vram_gb=8&k=5&zone=eu`` lists the live nodes that would serve a
model, from this API instance's own view of the ``nodes`` bucket: a node is
listed while its last heartbeat is younger than ``api.live_nodes.LIVE_S``. A
model no live node serves is an empty list, not an error. ``/status``,
``/status.json`` and ``/metrics`` are public; everything else needs a key.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.responses import StreamingResponse

from api.deps import (health_of, ChatCallDep, CompletionCallDep, JobsDep, LedgerDep, NodesDep, PrincipalDep,
                      ServingDep, StatusDep)
from api.discovery import candidates, parse_query
from api.errors import APIError
from api.protocol import account_body, models_body
from api.answers import Accepted, Answer, Stream
from api.status_page import PAGE, REQUESTS, STARTED, render_metrics

router = APIRouter()


def respond(answer: Answer) -> Response:
    if isinstance(answer, Accepted):
        return JSONResponse(answer.body, status_code=202, headers=answer.headers)
    if isinstance(answer, Stream):
        return StreamingResponse(answer.chunks, media_type="text/event-stream",
                                 headers={**answer.headers, "Cache-Control": "no-cache"})
    return JSONResponse(answer.body, headers=answer.headers)


@router.post("/v1/chat/completions")
async def chat_completions(who: PrincipalDep, call: ChatCallDep, serving: ServingDep) -> Response:
    return respond(await serving.generate(who, call))


@router.post("/v1/completions")
async def completions(who: PrincipalDep, call: CompletionCallDep, serving: ServingDep) -> Response:
    return respond(await serving.generate(who, call))


@router.get("/v1/models")
async def models(_: PrincipalDep, nodes: NodesDep) -> dict:
    return models_body(nodes.models(), nodes.catalog)


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, _: PrincipalDep, nodes: NodesDep) -> dict:
    for item in models_body(nodes.models(), nodes.catalog)["data"]:
        if item["id"] == model_id:
            return item
    raise APIError(404, f"The model {model_id!r} does not exist", "model_not_found", "model")


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, who: PrincipalDep, jobs: JobsDep) -> dict:
    return await jobs.get(who.account, job_id)


@router.delete("/v1/jobs/{job_id}/content")
async def forget_job(job_id: str, who: PrincipalDep, jobs: JobsDep) -> dict:
    """Erase the job's prompt and result; its usage and cost stay on the log."""
    return await jobs.forget(who.account, job_id)


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(job_id: str, who: PrincipalDep, jobs: JobsDep) -> dict:
    """Stop a job: what it produced is charged, the rest of its reservation refunded."""
    return await jobs.cancel(who.account, job_id)


@router.get("/v1/account")
async def account(who: PrincipalDep, ledger: LedgerDep) -> dict:
    view = await asyncio.to_thread(ledger.account, who.account)
    return account_body(who.account, view.balance, view.held, view.spent, view.rcp)


@router.get("/v1/network/candidates")
async def network_candidates(request: Request, _: PrincipalDep, nodes: NodesDep) -> dict:
    found = candidates(nodes.live(), parse_query(request.query_params))
    return {"object": "list", "data": [c.to_dict() for c in found]}


@router.get("/health")
@router.get("/healthz")
async def health(request: Request) -> JSONResponse:
    """Up, and connected to its region's NATS servers (503 while it is not: a load
    balancer sends the traffic elsewhere)."""
    connected = health_of(request)
    return JSONResponse({"ok": connected, "status": "ok" if connected else "unavailable",
                         "nats": connected}, status_code=200 if connected else 503)


@router.get("/status.json")
async def status_json(board: StatusDep) -> dict:
    return await board.body()


@router.get("/status", response_class=HTMLResponse)
async def status_page() -> HTMLResponse:
    # Read per request: a small file, and edits show without a restart.
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(board: StatusDep) -> PlainTextResponse:
    return PlainTextResponse(render_metrics(await board.body(), REQUESTS, STARTED),
                             media_type="text/plain; version=0.0.4; charset=utf-8")
