"""Thin HTTP routers: parse, authenticate, call serving, shape the response."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.discovery import parse_headers
from api.errors import APIError
from api.jobs import result_of
from api.keys import Principal
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.serving import Duplicate
from api.zones import ZONE_HEADER
from bus.pricing import credits

router = APIRouter()
CANCEL_WAIT_S = 1.0


async def principal(request: Request) -> Principal:
    auth = request.headers.get("authorization", "")
    scheme, _, key = auth.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.",
                       "missing_api_key")
    who = await request.app.state.keys.lookup(key.strip())
    if who is None:
        raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
    return who


def wants_async(request: Request) -> bool:
    return "respond-async" in request.headers.get("prefer", "").lower()


def accepted(job_id: str, headers: dict[str, str]) -> JSONResponse:
    return JSONResponse({"id": job_id, "object": "job", "status": "queued"}, status_code=202,
                        headers={**headers, "Location": f"/v1/jobs/{job_id}",
                                 "Preference-Applied": "respond-async"})


async def _repeat(request: Request, job_id: str, who: Principal, is_async: bool) -> Response:
    """A repeated Idempotency-Key: the first request's job, never a second one."""
    jobs = request.app.state.jobs
    if is_async:
        return accepted(job_id, {"X-Inferbus-Job": job_id})
    view = await jobs.find(job_id, who.account)
    if view is None:
        raise APIError(404, f"No job {job_id!r}", "job_not_found")
    view = await jobs.until_terminal(view, request.app.state.settings.job_timeout_s)
    if (body := result_of(view)) is None:
        raise APIError(409 if not view.terminal else 500,
                       f"the job for this Idempotency-Key is {view.status}", view.status)
    return JSONResponse(body, headers={"X-Inferbus-Job": job_id,
                                       "X-Inferbus-Zone": view.served_zone or view.zone,
                                       "X-Inferbus-Route": view.route or "zone"})


async def _serve(request: Request, body: ChatCompletionRequest | CompletionRequest,
                 who: Principal, idempotency_key: str | None) -> Response:
    state = request.app.state
    if body.sampling().max_tokens > state.settings.max_tokens_limit:
        raise APIError(400, f"max_tokens is at most {state.settings.max_tokens_limit} here",
                       "max_tokens_too_large", "max_tokens")
    await state.limits.admit(who)  # before anything is reserved
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    zone = state.zones.resolve(request.headers.get(ZONE_HEADER), peer, forwarded)
    constraints = parse_headers(request.headers, body.model)
    is_async = wants_async(request)
    try:
        sub = await state.serving.submit(who, body, zone, not is_async, idempotency_key,
                                         constraints, state.zones.locate(peer, forwarded))
    except Duplicate as dup:
        return await _repeat(request, dup.job_id, who, is_async)
    if is_async:
        return accepted(sub.job.job_id, sub.headers())
    if body.stream:
        headers, chunks = await state.serving.start_stream(sub)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    result, headers = await state.serving.complete(sub)
    return JSONResponse(result, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest,
                           who: Principal = Depends(principal),
                           idempotency_key: str | None = Header(None)) -> Response:
    return await _serve(request, body, who, idempotency_key)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest,
                      who: Principal = Depends(principal),
                      idempotency_key: str | None = Header(None)) -> Response:
    return await _serve(request, body, who, idempotency_key)


@router.get("/v1/models")
async def models(request: Request, _: Principal = Depends(principal)) -> dict:
    served = request.app.state.nodes.models()
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "inferbus",
         "context_length": info.context_length} for name, info in sorted(served.items())]}


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str, who: Principal = Depends(principal)) -> dict:
    jobs = request.app.state.jobs
    view = await jobs.find(job_id, who.account)
    if view is None:
        raise APIError(404, f"No job {job_id!r}", "job_not_found")
    return await jobs.body(view)


@router.delete("/v1/jobs/{job_id}")
async def cancel_job(request: Request, job_id: str, who: Principal = Depends(principal)) -> dict:
    """Stop a job: what it produced is charged, the rest of its reservation refunded."""
    jobs, serving = request.app.state.jobs, request.app.state.serving
    view = await jobs.find(job_id, who.account)
    if view is None:
        raise APIError(404, f"No job {job_id!r}", "job_not_found")
    if not view.terminal:
        await serving.cancel(job_id, view.zone, queued=False)
        view = await jobs.until_terminal(view, CANCEL_WAIT_S)
        if not view.terminal and view.status == "queued":  # no worker holds it: close it here
            await serving.cancel(job_id, view.zone, queued=True)
            view = await jobs.until_terminal(view, CANCEL_WAIT_S)
    return await jobs.body(view)


@router.get("/v1/account")
async def account(request: Request, who: Principal = Depends(principal)) -> dict:
    view = await asyncio.to_thread(request.app.state.ledger.account, who.account)
    return {"object": "account", "account": who.account, "balance": credits(view.balance),
            "held": credits(view.held), "spent": credits(view.spent), "rcp": view.rcp}


@router.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}
