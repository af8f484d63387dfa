"""Node grants: what the network's admin lets each node do, and the one place
services look a node up.

A grant is written by the admin (``inferbus nodes add``, ``suspend``,
``remove``) into the ``grants`` KV bucket under the node id, beside the NATS
user it is bound to (``bus.credentials``). Services follow the bucket
(:class:`GrantBook`), so a change reaches a running network within a watch
update. What a node reports about itself (heartbeats) can only narrow its
grant: zone, operator, tier, subcloud and models come from here.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Literal

from nats.js.kv import KeyValue
from pydantic import Field, ValidationError

from bus import subjects
from bus.bounds import Id, Name
from bus.events import Contract

log = logging.getLogger("inferbus.grants")
Status = Literal["unverified", "suspended"]


class NodeGrant(Contract):
    """One node's grant: who it is, whom it earns for, what it may serve, and where."""

    node_id: Id
    node_name: Id
    operator: Id  # the account its RCP is awarded to
    zone: Name
    models: tuple[Name, ...] = Field(min_length=1, max_length=64)
    tier: int = Field(default=1, ge=1, le=6)
    subcloud: Name | None = None
    public: bool = True
    status: Status = "unverified"

    @property
    def active(self) -> bool:
        return self.status != "suspended"

    def queues(self) -> list[str]:
        """The queues it may take jobs from, first choice first."""
        return subjects.worker_queues(self.zone, self.node_id, self.subcloud, self.public)

    def may_take(self, queue: str, model: str) -> bool:
        """Whether a job queued on ``queue`` for ``model`` is this node's to run."""
        return self.active and model in self.models and queue in self.queues()


async def put_grant(kv: KeyValue, grant: NodeGrant) -> None:
    await kv.put(grant.node_id, grant.model_dump_json().encode())


class GrantBook:
    """The grants bucket as it is now, followed in the background."""

    def __init__(self) -> None:
        self._grants: dict[str, NodeGrant] = {}
        self._task: asyncio.Task | None = None

    def get(self, node_id: str) -> NodeGrant | None:
        return self._grants.get(node_id)

    def all(self) -> list[NodeGrant]:
        return list(self._grants.values())

    def apply(self, key: str, value: bytes | None) -> None:
        """One bucket entry: a grant, or its removal (``value`` empty)."""
        if not value:
            self._grants.pop(key, None)
            return
        try:
            grant = NodeGrant.model_validate_json(value)
        except ValidationError as exc:
            log.warning("ignoring malformed grant %s: %s", key, exc.errors()[:1])
            return
        if grant.node_id != key:  # a grant is only believed under its own node's key
            log.warning("ignoring grant filed under another node's key %s", key)
            return
        self._grants[key] = grant

    async def follow(self, kv: KeyValue) -> "GrantBook":
        """Load the bucket, then keep following it until :meth:`close`."""
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
        gone = entry.operation in ("DEL", "PURGE")
        self.apply(entry.key, None if gone else entry.value)

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
