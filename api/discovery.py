"""Node discovery and tier-aware dispatch: pure functions over live ``NodeRecord``s.

Every function here takes the nodes it ranks (normally ``LiveNodes.live()``), so
any API instance decides from its own replicated view, with no I/O and no
central scheduler.

``candidates`` answers "which live public nodes serving model M satisfy these
constraints" (a subcloud's private node, ``public=False``, is never one): by distance from ``near`` then load, or without ``near`` by load
then tier (highest first); ties always fall to ``node_id`` so every API instance
with the same view orders them the same way.

Dispatch policy (``plan``), first rule that applies wins:

1. Explicit constraints (``X-Inferbus-Near`` / ``-Within-Km`` / ``-Tier``): the
   constraints' candidates, in order. None -> an empty ``nodes`` plan, and the
   caller answers 503 "no node satisfies the constraints"; a client that asked
   for a place or a tier is never silently served elsewhere.
2. A heavy job (prompt bound >= ``heavy_prompt_tokens`` or ``max_tokens`` >=
   ``heavy_max_tokens``): live nodes of tier >= ``heavy_min_tier`` ranked by load,
   then distance to the client when known. None live -> the rules below.
3. A small job whose client location is known: the ``nearest_k`` nearest
   located nodes serving the model, taken only from the client's zone when that
   zone has any serving node (so zone routing keeps its meaning: a job stays in
   its zone whenever the zone can serve it); else the nearest anywhere.
4. Otherwise queue routing: the zone queue when a live node of the zone serves
   the model, else the global queue.

A node whose location the network does not believe (its check failed, or the
network checks locations and has not verified it) reaches these functions
without coordinates (``api.live_nodes``): no distance limit or nearest-node plan
picks it, and a ``near`` ranking puts it last, with the nodes of unknown place.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.errors import APIError
# Re-exported: this module's callers measure distances with it.
from bus.geolocation import EARTH_RADIUS_KM, haversine_km  # noqa: F401
from bus.node_record import NodeRecord
from bus.subjects import GLOBAL
from bus.zones import is_zone

KM_PER_DEGREE = EARTH_RADIUS_KM * math.pi / 180  # along a meridian
MAX_K = 100
NEAR_HEADER, WITHIN_HEADER, TIER_HEADER = "x-inferbus-near", "x-inferbus-within-km", "x-inferbus-tier"
LatLon = tuple[float, float]


@dataclass(frozen=True)
class Constraints:
    """What a client asks of the nodes; ``None`` fields do not constrain."""
    model: str
    near: LatLon | None = None
    within_km: float | None = None  # needs ``near``: a node without coordinates fails it
    tier: tuple[int, int] | None = None  # inclusive
    min_free_vram_gb: float | None = None
    k: int = 5
    zone: str | None = None


@dataclass(frozen=True)
class Candidate:
    node_id: str
    zone: str
    tier: int
    gpu: str
    vram_free_gb: float
    distance_km: float | None  # None without ``near`` or without the node's coordinates
    load: int  # busy + queue_depth at its last heartbeat
    lat: float | None
    lon: float | None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.distance_km is not None:
            out["distance_km"] = round(self.distance_km, 1)
        return out


# --- parsing: every bad value is a 400 naming the parameter ---------------------------------

def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", "invalid_constraint", param)


def _number(raw: str, param: str, lo: float, hi: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _bad(param, f"{raw!r} is not a number") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _bad(param, f"{raw!r} is out of range [{lo:g}, {hi:g}]")
    return value


def _near(raw: str, param: str) -> LatLon:
    parts = raw.split(",")
    if len(parts) != 2:
        raise _bad(param, f"{raw!r} is not 'LAT,LON' (e.g. '52.5,13.4')")
    return _number(parts[0].strip(), param, -90, 90), _number(parts[1].strip(), param, -180, 180)


def _tier(raw: str, param: str) -> tuple[int, int]:
    lo_s, sep, hi_s = raw.strip().partition("-")
    try:
        lo, hi = int(lo_s), int(hi_s if sep else lo_s)
    except ValueError:
        raise _bad(param, f"{raw!r} is not a tier 'N' or a range 'LO-HI' of tiers 1-6") from None
    if not 1 <= lo <= hi <= 6:
        raise _bad(param, f"{raw!r} is not within 1-6 with LO <= HI")
    return lo, hi


def _build(model: str, near: LatLon | None, within: float | None, within_param: str,
           **rest) -> Constraints:
    if within is not None and near is None:
        raise _bad(within_param, "a distance limit needs a point to measure from ('near')")
    return Constraints(model=model, near=near, within_km=within, **rest)


def parse_query(params: Mapping[str, str]) -> Constraints:
    """``?model=M&near=LAT,LON&within_km=50&tier=4-6&min_free_vram_gb=G&k=5&zone=Z``."""
    model = (params.get("model") or "").strip()
    if not model:
        raise _bad("model", "required")
    near = _near(params["near"], "near") if params.get("near") else None
    within = _number(params["within_km"], "within_km", 0, 20_100) if params.get("within_km") \
        else None
    tier = _tier(params["tier"], "tier") if params.get("tier") else None
    vram = (_number(params["min_free_vram_gb"], "min_free_vram_gb", 0, 1e6)
            if params.get("min_free_vram_gb") else None)
    k = 5
    if params.get("k"):
        if not params["k"].strip().isdigit() or not 1 <= int(params["k"]) <= MAX_K:
            raise _bad("k", f"{params['k']!r} is not an integer 1-{MAX_K}")
        k = int(params["k"])
    zone = (params.get("zone") or "").strip().lower() or None
    if zone is not None and not is_zone(zone):
        raise _bad("zone", f"unknown zone {zone!r}")
    return _build(model, near, within, "within_km", tier=tier, min_free_vram_gb=vram, k=k,
                  zone=None if zone == GLOBAL else zone)


def parse_headers(headers: Mapping[str, str], model: str) -> Constraints | None:
    """Constraints from a chat request's ``X-Inferbus-*`` headers; None when it sends none.

    ``headers`` must look names up case-insensitively (Starlette's ``Headers`` does)."""
    raw = {h: headers.get(h) for h in (NEAR_HEADER, WITHIN_HEADER, TIER_HEADER)}
    if not any(v and v.strip() for v in raw.values()):
        return None
    near = _near(raw[NEAR_HEADER], NEAR_HEADER) if raw[NEAR_HEADER] else None
    within = _number(raw[WITHIN_HEADER], WITHIN_HEADER, 0, 20_100) if raw[WITHIN_HEADER] else None
    tier = _tier(raw[TIER_HEADER], TIER_HEADER) if raw[TIER_HEADER] else None
    return _build(model, near, within, WITHIN_HEADER, tier=tier)


# --- ranking ---------------------------------------------------------------------------------

def _serves(rec: NodeRecord, model: str) -> bool:
    """Whether ``rec`` takes public jobs for ``model``: a subcloud's private node
    (``public=False``) is never offered, listed or planned for anyone else."""
    if not rec.public:
        return False
    for m in rec.models:  # a plain loop: any(<genexpr>) costs ~3x on this hot path
        if m.name == model:
            return True
    return False


_Match = tuple[NodeRecord, "float | None"]  # a node and its distance from ``near``


def _matching(nodes: Iterable[NodeRecord], c: Constraints) -> list[_Match]:
    """Every node of ``nodes`` that serves ``c.model`` within ``c`` (``k`` ignored).

    Cheapest tests first; a ``Candidate`` is only built for the winners."""
    zone, tier, vram, near, within = c.zone, c.tier, c.min_free_vram_gb, c.near, c.within_km
    # |delta latitude| alone bounds the great-circle distance from below, so most
    # far nodes are skipped without trigonometry.
    max_dlat = within / KM_PER_DEGREE + 1e-9 if within is not None and near else math.inf
    found: list[_Match] = []
    for rec in nodes:
        if zone is not None and rec.zone != zone:
            continue
        if tier is not None and not tier[0] <= rec.tier <= tier[1]:
            continue
        if vram is not None and rec.vram_free_gb < vram:
            continue
        if not _serves(rec, c.model):
            continue
        dist = None
        if near is not None and rec.lat is not None and rec.lon is not None:
            if abs(rec.lat - near[0]) > max_dlat:
                continue
            dist = haversine_km(near[0], near[1], rec.lat, rec.lon)
        if within is not None and (dist is None or dist > within):
            continue
        found.append((rec, dist))
    return found


def _by_distance(m: _Match) -> tuple:
    rec, dist = m
    return dist is None, dist or 0.0, rec.busy + rec.queue_depth, rec.node_id


def _by_load(m: _Match) -> tuple:
    rec = m[0]
    return rec.busy + rec.queue_depth, -rec.tier, rec.node_id


def _by_load_then_distance(m: _Match) -> tuple:
    rec, dist = m
    return rec.busy + rec.queue_depth, dist is None, dist or 0.0, rec.node_id


def _ranked(nodes: Iterable[NodeRecord], c: Constraints, key=None) -> list[_Match]:
    key = key or (_by_distance if c.near is not None else _by_load)
    # nsmallest == sorted(...)[:k] (documented), without sorting every match
    return heapq.nsmallest(c.k, _matching(nodes, c), key=key)


def candidates(nodes: Iterable[NodeRecord], c: Constraints) -> list[Candidate]:
    """The top ``c.k`` of ``nodes`` (taken as live) that serve ``c.model`` within ``c``.

    With ``near``: nearest first, then least loaded; nodes without coordinates
    come last (and never pass ``within_km``). Without: least loaded, then
    highest tier. ``node_id`` breaks every tie."""
    return [Candidate(r.node_id, r.zone, r.tier, r.gpu, r.vram_free_gb, d, r.busy + r.queue_depth,
                      r.lat, r.lon) for r, d in _ranked(nodes, c)]


# --- dispatch policy -------------------------------------------------------------------------

class Policy(BaseModel):
    """Dispatch thresholds (the module docstring says how they are used)."""
    model_config = ConfigDict(frozen=True)
    heavy_prompt_tokens: int = Field(2048, ge=1)
    heavy_max_tokens: int = Field(1024, ge=1)
    heavy_min_tier: int = Field(4, ge=1, le=6)
    nearest_k: int = Field(3, ge=1, le=MAX_K)

    def is_heavy(self, prompt_tokens_bound: int, max_tokens: int) -> bool:
        return prompt_tokens_bound >= self.heavy_prompt_tokens or max_tokens >= self.heavy_max_tokens


@dataclass(frozen=True)
class Plan:
    """Where a job goes: the ``zone``'s queue, the global queue, or ``nodes`` in order
    (try the first, fall to the next). ``reason`` names the rule that decided."""
    route: Literal["zone", "global", "nodes"]
    zone: str | None = None
    nodes: tuple[str, ...] = ()
    reason: Literal["constraints", "heavy", "nearest", "zone", "global"] = "global"


def _ids(found: list[_Match]) -> tuple[str, ...]:
    return tuple(rec.node_id for rec, _ in found)


def plan(policy: Policy, nodes: Iterable[NodeRecord], model: str, zone: str,
         client_location: LatLon | None, prompt_tokens_bound: int, max_tokens: int,
         constraints: Constraints | None = None) -> Plan:
    """Decide where one job goes from the live ``nodes`` (see the module docstring)."""
    if constraints is not None:
        return Plan("nodes", nodes=_ids(_ranked(nodes, constraints)), reason="constraints")
    nodes = list(nodes)  # iterated more than once below
    if policy.is_heavy(prompt_tokens_bound, max_tokens):
        strong = Constraints(model, near=client_location, tier=(policy.heavy_min_tier, 6),
                             k=policy.nearest_k)
        if best := _ranked(nodes, strong, _by_load_then_distance):
            return Plan("nodes", nodes=_ids(best), reason="heavy")
    # A short-circuiting scan: the common no-location case stops at the first match.
    in_zone = zone != GLOBAL and any(r.zone == zone and _serves(r, model) for r in nodes)
    if client_location is not None:
        # within_km=inf admits every located node and drops those without coordinates:
        # "nearest" means known to be near. The zone's own nodes when it has any.
        near = Constraints(model, near=client_location, within_km=math.inf, k=policy.nearest_k,
                           zone=zone if in_zone else None)
        if found := _ranked(nodes, near):
            return Plan("nodes", nodes=_ids(found), reason="nearest")
    if in_zone:
        return Plan("zone", zone=zone, reason="zone")
    return Plan("global", reason="global")
