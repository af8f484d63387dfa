"""Thin HTTP routers: parse, authenticate, call serving, shape the response."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from api.errors import APIError
from api.jobs import job_body
from api.keys import Principal
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.zones import ZONE_HEADER

router = APIRouter()


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


async def _serve(request: Request, body: ChatCompletionRequest | CompletionRequest,
                 who: Principal) -> Response:
    state = request.app.state
    zone = state.zones.resolve(request.headers.get(ZONE_HEADER),
                               request.client.host if request.client else None,
                               request.headers.get("x-forwarded-for"))
    is_async = wants_async(request)
    sub = await state.serving.submit(who, body, zone, live=not is_async)
    if is_async:
        headers = {**sub.headers(), "Location": f"/v1/jobs/{sub.job.job_id}",
                   "Preference-Applied": "respond-async"}
        return JSONResponse({"id": sub.job.job_id, "object": "job", "status": "queued"},
                            status_code=202, headers=headers)
    if body.stream:
        headers, chunks = await state.serving.start_stream(sub)
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    result, headers = await state.serving.complete(sub)
    return JSONResponse(result, headers=headers)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatCompletionRequest,
                           who: Principal = Depends(principal)) -> Response:
    return await _serve(request, body, who)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest,
                      who: Principal = Depends(principal)) -> Response:
    return await _serve(request, body, who)


@router.get("/v1/models")
async def models(request: Request, _: Principal = Depends(principal)) -> dict:
    served = request.app.state.nodes.models()
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "inferbus",
         "context_length": info.context_length} for name, info in sorted(served.items())]}


@router.get("/v1/jobs/{job_id}")
async def get_job(request: Request, job_id: str, who: Principal = Depends(principal)) -> dict:
    view = await request.app.state.jobs.find(job_id, who.account)
    if view is None:
        raise APIError(404, f"No job {job_id!r}", "job_not_found")
    return job_body(view)


@router.get("/healthz")
async def healthz() -> dict:
    return {"ok": True}
