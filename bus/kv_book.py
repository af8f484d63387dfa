"""A KV bucket as a process sees it: loaded once, then followed in the background.

Subclasses say what one entry means (:meth:`KVBook.apply`); the grants
(``bus.grants.GrantBook``), the model catalog and the nodes' reported roots
(``bus.model_book``) are followed this way."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.js.kv import KeyValue

log = logging.getLogger("inferbus.bus")


class KVBook:
    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def apply(self, key: str, value: bytes | None) -> None:
        """One bucket entry: a value, or its removal (``value`` None or empty);
        raises ValueError for one that cannot be read (it is logged and skipped)."""
        raise NotImplementedError

    async def follow(self, kv: KeyValue):
        """Load the bucket, then keep following it until :meth:`close`; returns self."""
        watcher = await kv.watchall()
        async for entry in watcher:  # the current values end with a None marker
            if entry is None:
                break
            self._entry(entry)
        self._task = asyncio.create_task(self._follow(watcher))
        return self

    async def _follow(self, watcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._entry(entry)

    def _entry(self, entry) -> None:
        gone = entry.operation in ("DEL", "PURGE") or not entry.value
        try:
            self.apply(entry.key, None if gone else entry.value)
        except ValueError as exc:
            log.warning("ignoring malformed entry %s of %s: %s", entry.key,
                        type(self).__name__, exc)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
