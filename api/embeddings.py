"""``POST /v1/embeddings``: the route, which parses the body
(:mod:`api.embedding_protocol`), says where the call comes from (zone,
location, discovery constraints, as for chat) and hands it to
:class:`~api.embedding_serving.EmbeddingServing`. Nothing here decides."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from api.deps import PrincipalDep, services
from api.discovery import parse_headers
from api.embedding_protocol import parse
from api.embedding_serving import EmbeddingCall, EmbeddingServing
from api.errors import APIError
from api.geoip import ZONE_HEADER
from bus.pricing import EMBEDDING_MODEL

router = APIRouter()


async def embedding_serving(request: Request) -> EmbeddingServing:
    return request.app.state.embeddings


EmbeddingServingDep = Annotated[EmbeddingServing, Depends(embedding_serving)]
# The OpenAPI document shows the body; the route parses it itself, so every
# refusal names its field in OpenAI's error shape (api.embedding_protocol).
_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input", "model"], "additionalProperties": False,
    "properties": {
        "input": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "model": {"type": "string", "examples": [EMBEDDING_MODEL]},
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1}, "user": {"type": "string"}}}}}}}


@router.post("/v1/embeddings", openapi_extra=_SCHEMA)
async def embeddings(request: Request, who: PrincipalDep, serving: EmbeddingServingDep,
                     idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    try:
        payload = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: not a body
        raise APIError(400, "We could not parse the JSON body of your request.",
                       "invalid_json") from None
    body = parse(payload)
    zones = services(request).zones
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    call = EmbeddingCall(body=body,
                         zone=zones.resolve(request.headers.get(ZONE_HEADER), peer, forwarded),
                         location=zones.locate(peer, forwarded),
                         constraints=parse_headers(request.headers, body.model),
                         idempotency_key=idempotency_key)
    answer, headers = await serving.embed(who, call)
    return JSONResponse(answer, headers=headers)
