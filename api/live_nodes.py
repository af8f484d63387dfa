"""The API's view of live nodes, kept current by watching the ``nodes`` KV bucket.

Every API instance builds this itself from the replicated bucket: there is no
central scheduler. A node is live while its last heartbeat is younger than
``LIVE_S``. A heartbeat is a node's own word: it is believed only under the
key it was put under (a node's NATS user may put only its own key), only for a
node with an active grant, and only as far as the grant goes: zone, operator,
tier, subcloud and publicity come from the grant, models are those it reports
*and* was granted (``bus.grants``) *and* whose reported root the catalog
publishes for that name. Its declared coordinates are believed only
while the network believes its location (``NodeGrant.location_believed``):
otherwise the record has none, so discovery never places it (no ``within_km``
match, no nearest-node plan; last in a ``near`` ranking) and never shows them.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js.kv import KeyValue

from bus.grants import GrantBook
from bus.model_book import CatalogBook
from bus.node_record import ModelInfo, NodeRecord

log = logging.getLogger("inferbus.api")
LIVE_S = 3.0
FORGET_S = 30.0  # a crashed node's entry expires silently (no watch event): drop it


class LiveNodes:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 grants: GrantBook | None = None, check_locations: bool = False,
                 catalog: CatalogBook | None = None) -> None:
        self._clock, self._grants = clock, grants
        self.catalog = catalog  # which roots each model name means (None: any)
        # Whether the network checks locations (bus.node_location.checks_on): then only a
        # verified location is believed; otherwise every one that did not fail.
        self._check_locations = check_locations
        self._nodes: dict[str, tuple[float, NodeRecord]] = {}
        self._seen_models: set[str] = set()
        self._task: asyncio.Task | None = None
        self._pruned_at = clock()

    def update(self, record: NodeRecord, at: float | None = None) -> None:
        self._nodes[record.node_id] = (self._clock() if at is None else at, record)
        self._seen_models.update(m.name for m in record.models)

    def remove(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def live(self) -> list[NodeRecord]:
        now = self._clock()
        if now - self._pruned_at > FORGET_S:
            self._nodes = {k: v for k, v in self._nodes.items() if v[0] >= now - FORGET_S}
            self._pruned_at = now
        cutoff = now - LIVE_S
        return [rec for seen, rec in self._nodes.values() if seen >= cutoff and self._granted(rec)]

    def _granted(self, record: NodeRecord) -> bool:
        if self._grants is None:  # no grants to check against (a unit of the API alone)
            return True
        grant = self._grants.get(record.node_id)
        return grant is not None and grant.active

    def narrowed(self, key: str, record: NodeRecord) -> NodeRecord | None:
        """What the network believes of a heartbeat put under ``key``: None when no
        grant covers it; otherwise the record within its grant, listing only the models
        it reports a published root of (``bus.model_book``)."""
        if self.catalog is not None:
            record = record.model_copy(update={"models": tuple(
                m for m in record.models if self.catalog.refusal(m.name, m.root) is None)})
        if self._grants is None:
            return record if record.node_id == key else None
        grant = self._grants.get(key)
        if grant is None:
            return None
        believed = {"node_id": key, "zone": grant.zone, "operator": grant.operator,
                    "tier": grant.tier, "subcloud": grant.subcloud, "public": grant.public,
                    "standing": grant.status,
                    "models": tuple(m for m in record.models if m.name in grant.models)}
        if not grant.location_believed(self._check_locations):
            believed.update(lat=None, lon=None)
        return record.model_copy(update=believed)

    def locations(self) -> dict[str, tuple[str, str]] | None:
        """Each granted node's checked location and why, by node id (None: no grants)."""
        if self._grants is None:
            return None
        return {g.node_id: (g.location, g.location_note) for g in self._grants.all()}

    def standings(self) -> dict[str, int] | None:
        """How many granted nodes stand where (probation, verified, ..., suspended)."""
        if self._grants is None:
            return None
        counts: dict[str, int] = {}
        for grant in self._grants.all():
            counts[grant.status] = counts.get(grant.status, 0) + 1
        return dict(sorted(counts.items()))

    def models(self) -> dict[str, ModelInfo]:
        """Models served by at least one live node."""
        return {m.name: m for rec in self.live() for m in rec.models}

    def was_seen(self, model: str) -> bool:
        return model in self._seen_models

    async def watch(self, kv: KeyValue) -> None:
        """Load the current bucket, then follow it in the background."""
        watcher = await kv.watchall()
        async for entry in watcher:  # initial values end with a None marker
            if entry is None:
                break
            self._apply(entry)
        self._task = asyncio.create_task(self._follow(watcher))

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._apply(entry)

    def _apply(self, entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.remove(entry.key)
            return
        try:
            record = self.narrowed(entry.key, NodeRecord.model_validate_json(entry.value))
        except ValueError as exc:
            log.warning("ignoring malformed node record %s: %s", entry.key, exc)
            return
        if record is not None:
            self.update(record)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
