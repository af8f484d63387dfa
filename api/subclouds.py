"""Subclouds: named groups of zones that keys can be bound to.

Created with ``inferbus subclouds create`` (a ``SubcloudCreated`` event on the
log); every API instance finds one with a direct get on its subject and caches
it, as it does keys.
"""
from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.events import SubcloudCreated


class Subclouds:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._cache: dict[str, SubcloudCreated] = {}

    async def get(self, name: str) -> SubcloudCreated | None:
        if name in self._cache:
            return self._cache[name]
        try:
            msg = await self._js.get_last_msg(subjects.EVENTS_STREAM,
                                              subjects.subcloud_created(name), direct=True)
        except NotFoundError:
            return None
        self._cache[name] = SubcloudCreated.model_validate_json(msg.data)
        return self._cache[name]
