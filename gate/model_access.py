"""The gate's side of model fetches: nodes read exactly what their grant allows.

A node asks on ``node.<id>.model`` (``bus.model_fetch.ModelAsk``):

- ``manifest`` of a name its grant lists: the serving version's root and
  manifest (checked against its root before it is handed out);
- ``fetch`` of chunks of a root of that name: the gate makes the node's fetch
  consumer on the store of the node's own region when that region holds the
  root, else on another region's (the fallback), and then copies the root
  into the node's region in the background, so the region's next node reads
  it one hop away. Regions that served the node bad bytes (``avoid``) come
  last.

A name outside the grant, or chunks outside the root, are refused; the gate
counts a strike for them as for any request outside a grant. A node asking for
plans faster than ``PLAN_EVERY_S`` is told to try again.
"""
from __future__ import annotations

import asyncio
import logging
import time

from bus import subjects
from bus.grants import NodeGrant
from bus.model_fetch import FetchPlan, ModelAnswer, ModelAsk, plan, replicate
from bus.model_manifest import Manifest
from bus.model_store import ModelStore, ModelVersion, NotPublished

log = logging.getLogger("inferbus.gate")
# A plan costs the gate a lookup per chunk and a consumer; a node gets one this often
# at most (an honest fetch asks once per 1,024 chunks, seconds apart).
PLAN_EVERY_S = 0.25


class OutsideGrant(Exception):
    """A model request the node's grant does not cover."""


class ModelAccess:
    def __init__(self, store: ModelStore, clock=time.monotonic) -> None:
        self.store, self.clock = store, clock
        self._manifests: dict[str, Manifest] = {}
        self._planned: dict[str, float] = {}  # node id -> when the gate last made it a plan
        self._copying: dict[tuple[str, str], asyncio.Task] = {}

    async def answer(self, grant: NodeGrant, ask: ModelAsk) -> ModelAnswer:
        """Raises :class:`OutsideGrant` for what the node may not ask."""
        if ask.name not in grant.models:
            raise OutsideGrant(f"this node's grant does not list model {ask.name}")
        entry, _ = await self.store.entry(ask.name)
        current = entry.current() if entry else None
        if current is None:
            return ModelAnswer(ok=False, reason=f"model {ask.name} is not published"
                               + (" (retired)" if entry else ""))
        if ask.op == "manifest":
            return ModelAnswer(ok=True, root=current.root,
                               manifest=await self._manifest(current.root, current.regions))
        version = entry.version(ask.root or "")
        if version is None or version.state == "retired":
            raise OutsideGrant(f"{(ask.root or '')[:16]}… is not a live root of {ask.name}")
        manifest = await self._manifest(version.root, version.regions)
        if stray := set(ask.chunks) - set(manifest.chunk_set()):
            raise OutsideGrant(f"{len(stray)} chunks asked are not {ask.name}'s")
        now = self.clock()
        if now - self._planned.get(grant.node_id, -1e9) < PLAN_EVERY_S:
            return ModelAnswer(ok=False, reason="try again")  # the node asks again, later
        self._planned[grant.node_id] = now
        return ModelAnswer(ok=True, root=ask.root,
                           plan=await self._plan(grant, ask, ask.name, version))

    async def _plan(self, grant: NodeGrant, ask: ModelAsk, name: str,
                    version: ModelVersion) -> FetchPlan:
        """The node's consumer on the nearest store holding ``version`` (its own
        region's, else another's while a copy into its own starts)."""
        home = self.store.layout.region_of(grant.zone)
        if home not in version.regions:
            self._copy(name, version.root, home)
        holders = sorted(version.regions, key=lambda r: (r in ask.avoid, r != home))
        for region in holders:
            try:
                return await plan(self.store, region, ask.chunks,
                                  consumer=subjects.fetch_consumer(grant.node_id))
            except NotPublished as exc:  # that region's copy is incomplete: the next one
                log.warning("model %s in %s: %s", name, region, exc)
        raise NotPublished(f"no region holds all of {name} {version.root[:16]}…")

    async def _manifest(self, root: str, regions) -> Manifest:
        if root not in self._manifests:
            self._manifests[root] = await self.store.manifest(root, regions)
        return self._manifests[root]

    def _copy(self, name: str, root: str, region: str) -> None:
        """Replicate ``root`` into ``region`` once, in the background."""
        key = (root, region)
        if key in self._copying and not self._copying[key].done():
            return
        log.info("replicating %s %s… into %s for its first node there", name, root[:16], region)

        async def copy() -> None:
            try:
                copied = await replicate(self.store, name, root, region)
                log.info("replicated %s into %s: %d bytes", name, region, copied)
            except Exception:  # noqa: BLE001 - the next node's request tries again
                log.exception("replicating %s into %s failed", name, region)
        self._copying[key] = asyncio.create_task(copy())
