"""``GET /v1/network/candidates``: which live nodes would serve a model, and where.

Answers from this API instance's own ``LiveNodes`` view (the replicated
``nodes`` bucket), so a node is listed while its last heartbeat is younger than
``api.nodes.LIVE_S`` and gone after that, crashed or not.

    GET /v1/network/candidates?model=M&near=52.5,13.4&within_km=50&tier=4-6
        &min_free_vram_gb=8&k=5&zone=eu
    -> {"object": "list", "data": [{"node_id", "zone", "tier", "gpu", "vram_free_gb",
                                     "distance_km", "load", "lat", "lon"}, ...]}

Bad values are 400 ``invalid_constraint`` naming the parameter; a model no live
node serves is an empty list, not an error (it answers "who could serve this").
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from api.discovery import candidates, parse_query
from api.keys import Principal
from api.routes import principal

router = APIRouter()


@router.get("/v1/network/candidates")
async def network_candidates(request: Request, _: Principal = Depends(principal)) -> dict:
    found = candidates(request.app.state.nodes.live(), parse_query(request.query_params))
    return {"object": "list", "data": [c.to_dict() for c in found]}
