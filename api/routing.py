"""Where a job goes first, and where it moves if nobody starts it.

Order of decisions: a key bound to a subcloud keeps the job in that
subcloud's zones (its private pool first, when one is live; a strict
subcloud never falls back). Otherwise the dispatch policy (api.discovery)
picks chosen nodes (explicit constraints, heavy jobs, a nearest node), or the
zone's queue when a live node there serves the model, or global. The chain
lists the queues the escalator moves the job to, in order.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from nats.js import JetStreamContext

from api.discovery import Constraints, Policy, plan
from api.errors import APIError
from api.keys import Principal
from api.live_nodes import LiveNodes
from api.subclouds import Subclouds
from bus import regions, subjects
from bus.regions import Layout


@dataclass(frozen=True)
class Route:
    zone: str  # the job's zone: its log subject and, for a strict subcloud, its residency
    queue: str  # the first queue
    chain: tuple[str, ...]  # where the escalator moves it next
    route: str  # "zone" or "global", as planned
    subcloud: str | None = None
    strict: bool = False


class RegionProbe:
    """Whether a region answers: its jobs stream's info within ``timeout_s``,
    remembered for ``ttl_s`` so a dead region costs one probe, not one per request."""

    def __init__(self, js: JetStreamContext, layout: Layout, timeout_s: float = 0.5,
                 ttl_s: float = 2.0) -> None:
        self._js, self._layout, self._timeout_s, self._ttl_s = js, layout, timeout_s, ttl_s
        self._seen: dict[str, tuple[float, bool]] = {}

    async def up(self, region: str) -> bool:
        when, answer = self._seen.get(region, (0.0, False))
        if time.monotonic() - when < self._ttl_s:
            return answer
        try:
            await asyncio.wait_for(self._js.stream_info(self._layout.jobs_stream(region)),
                                   self._timeout_s)
            answer = True
        except Exception:  # noqa: BLE001 - no responders, a timeout: it does not answer
            answer = False
        self._seen[region] = (time.monotonic(), answer)
        return answer


class Routing:
    def __init__(self, nodes: LiveNodes, subclouds: Subclouds, policy: Policy,
                 layout: Layout | None = None, region: str | None = None,
                 probe: RegionProbe | None = None) -> None:
        self._nodes, self._subclouds, self._policy = nodes, subclouds, policy
        self._layout = layout or regions.single()
        self._region = region or self._layout.home
        self._probe = probe

    @property
    def regions(self) -> bool:
        """Whether the network has several regions (a job can be re-homed)."""
        return self._layout.split

    async def region_down(self, zone: str) -> bool:
        """Whether the region keeping ``zone``'s jobs does not answer (probed; never
        with one region, where there is nowhere else to go)."""
        return self._layout.split and self._probe is not None and \
            not await self._probe.up(self._layout.region_of(zone))

    async def decide(self, who: Principal, model: str, zone: str, *,
                     constraints: Constraints | None = None,
                     location: tuple[float, float] | None = None,
                     prompt_tokens: int = 0, max_tokens: int = 0) -> Route:
        if who.subcloud:
            return await self._subcloud_route(who.subcloud, model, zone)
        live = self._nodes.live()
        decided = plan(self._policy, live, model, zone, location, prompt_tokens,
                       max_tokens, constraints)
        if decided.route == "nodes":
            if not decided.nodes:
                raise APIError(503, "no live node satisfies the requested constraints",
                               "no_capacity")
            zone_of = {n.node_id: n.zone for n in live}  # a node's queue is kept in its region
            queues = tuple(subjects.node_queue(n, zone_of[n]) for n in decided.nodes)
            tail = () if constraints is not None else (subjects.GLOBAL,)
            return Route(zone, queues[0], queues[1:] + tail, "zone")
        if decided.route == "zone":
            return Route(zone, zone, (subjects.GLOBAL,), "zone")
        return Route(zone, subjects.GLOBAL, (), "global")

    async def _subcloud_route(self, name: str, model: str, zone: str) -> Route:
        sc = await self._subclouds.get(name)
        if sc is None:
            raise APIError(403, f"this key's subcloud {name!r} does not exist", "no_subcloud")
        zone = zone if zone in sc.zones else sc.zones[0]
        home = self._layout.region_of(zone)
        if sc.strict and home != self._region:
            # Its prompt must not be stored, or even pass, outside its region: refused
            # before anything is held or published.
            if self._probe is not None and not await self._probe.up(home):
                raise APIError(503, f"region {home}, which keeps this key's subcloud "
                               f"{name!r}, is unavailable; its jobs run nowhere else",
                               "region_unavailable")
            raise APIError(421, f"this key's subcloud {name!r} keeps its data in region "
                           f"{home}; send its requests to an API in {home}", "wrong_region")
        private = [n for n in self._nodes.live() if n.subcloud == name
                   and any(m.name == model for m in n.models)
                   and (not sc.strict or n.zone == zone)]
        # A strict subcloud's pool is kept per zone, in its region: it never leaves.
        pool = subjects.subcloud_queue(name, zone if sc.strict else subjects.GLOBAL)
        if sc.strict:  # never leaves its zones: no global in the chain, ever
            first = pool if private else zone
            return Route(zone, first, (zone,) if first == pool else (), "zone", name, True)
        if private:
            return Route(zone, pool, (zone, subjects.GLOBAL), "zone", name)
        return Route(zone, zone, (subjects.GLOBAL,), "zone", name)
