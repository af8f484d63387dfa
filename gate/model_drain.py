"""A rollout ends by itself: a draining version that no live node serves any
more is retired.

After ``models push`` makes a new root serving, the one it replaced drains:
it stays routed while nodes still report it. The gate watches those nodes
(their heartbeats' roots, ``bus.model_book.NodeRoots``, and their liveness
pings) and retires the version once none of them has been live for
``INFERBUS_MODEL_DRAIN_S``, logging ``ModelRetired`` (reason ``drained``) and
collecting the chunks no live version uses. Several gates may do it at once:
retiring is a compare-and-set, so one of them logs it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bus.model_book import CatalogBook, NodeRoots
from bus.model_store import ModelStore

log = logging.getLogger("inferbus.gate")
TICK_S = 1.0


class Drain:
    def __init__(self, store: ModelStore, catalog: CatalogBook, roots: NodeRoots,
                 alive: Callable[[str], bool], drain_s: float, clock=time.monotonic) -> None:
        self.store, self.catalog, self.roots, self.alive = store, catalog, roots, alive
        self.drain_s, self.clock = drain_s, clock
        self._unserved: dict[tuple[str, str], float] = {}  # (name, root) -> since when

    def served(self, name: str, root: str) -> bool:
        return any(self.alive(node) and models.get(name) == root
                   for node, models in self.roots.roots.items())

    def due(self) -> list[tuple[str, str]]:
        """(name, root) of each draining version unserved for ``drain_s``."""
        now, due, seen = self.clock(), [], set()
        for entry in list(self.catalog.entries.values()):
            for version in entry.versions:
                if version.state != "draining":
                    continue
                key = (entry.name, version.root)
                seen.add(key)
                if self.served(*key):
                    self._unserved.pop(key, None)
                elif now - self._unserved.setdefault(key, now) >= self.drain_s:
                    due.append(key)
        self._unserved = {k: v for k, v in self._unserved.items() if k in seen}
        return due

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, root in self.due():
                try:
                    if await self.store.retire(name, root, "drained"):
                        log.info("model %s %s… drained: retired", name, root[:16])
                        await self.store.collect()
                except Exception:  # noqa: BLE001 - tried again next tick
                    log.exception("retiring drained %s %s… failed", name, root[:16])
                self._unserved.pop((name, root), None)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)
