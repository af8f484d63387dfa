"""Node grants: what the network's admin lets each node do, and the one place
services look a node up.

A grant is written by the admin (``inferbus nodes add``, ``suspend``,
``remove``) into the ``grants`` KV bucket under the node id, beside the NATS
user it is bound to (``bus.credentials``). Services follow the bucket
(:class:`GrantBook`), so a change reaches a running network within a watch
update. What a node reports about itself (heartbeats) can only narrow its
grant: zone, operator, tier, subcloud and models come from here.

A grant also holds the node's standing, which the network's spot checks earn
it (``verifier/``): a node the admin adds starts on ``probation`` (every
result checked, no RCP) and becomes ``verified``; failed checks suspend it.
``unverified`` is a node that granted itself on an open network (no NATS auth).
Filing the admin's grant again keeps the standing (:func:`file_grant`).

Apart from that standing, the network checks where the node is
(``verifier/location.py``): its NATS user (``nats_user``) finds its connections
in the servers' connection lists, and their addresses and round trips are held
against its zone and declared coordinates. ``location`` stays ``unchecked`` on
an open network or while the network does not check; ``location_note`` says why.
"""
from __future__ import annotations

import logging
from typing import Callable, Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import Field, ValidationError

from bus import subjects
from bus.bounds import Id, Name
from bus.events import Contract
from bus.kv_book import KVBook

log = logging.getLogger("inferbus.grants")
Status = Literal["probation", "verified", "unverified", "suspended"]
Location = Literal["unchecked", "verified", "failed"]


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
    passed: int = Field(default=0, ge=0)  # spot checks passed
    failed: int = Field(default=0, ge=0)  # spot checks failed
    strikes: int = Field(default=0, ge=0)  # other refusals (NodeStrike), counted by the verifier
    nats_user: str | None = Field(default=None, max_length=64)  # its nkey (U...); None: open
    location: Location = "unchecked"  # where it connects from, as the network checked it
    location_note: str = Field(default="", max_length=500)  # why; never an address

    @property
    def active(self) -> bool:
        return self.status != "suspended"

    def location_believed(self, checking: bool) -> bool:
        """Whether the network may rely on where this node is (strict-residency jobs,
        distance-constrained dispatch). ``checking``: the network checks locations,
        so only a verified one counts; otherwise only a failed one is refused."""
        return self.location == "verified" or (not checking and self.location != "failed")

    def queues(self) -> list[str]:
        """The queues it may take jobs from, first choice first."""
        return subjects.worker_queues(self.zone, self.node_id, self.subcloud, self.public)

    def may_take(self, queue: str, model: str) -> bool:
        """Whether a job queued on ``queue`` for ``model`` is this node's to run."""
        return self.active and model in self.models and queue in self.queues()


async def put_grant(kv: KeyValue, grant: NodeGrant) -> None:
    await kv.put(grant.node_id, grant.model_dump_json().encode())


async def change_grant(kv: KeyValue, node_id: str,
                       change: Callable[[NodeGrant | None], NodeGrant | None]) -> NodeGrant | None:
    """Compare-and-set the node's grant: ``change`` gets the filed grant (None when
    there is none, or it is unreadable) and returns the new one (None: leave it).
    Retried when another writer got there first, so no update is lost."""
    while True:
        try:
            entry = await kv.get(node_id)
        except KeyNotFoundError:
            entry = None
        known = None
        if entry is not None and entry.value:
            try:
                known = NodeGrant.model_validate_json(entry.value)
            except ValidationError:
                pass
        new = change(known)
        if new is None:
            return known
        body = new.model_dump_json().encode()
        try:
            if entry is None:
                await kv.create(node_id, body)
            else:
                await kv.update(node_id, body, last=entry.revision)
            return new
        except KeyWrongLastSequenceError:  # another writer was first: read it again
            continue


async def file_grant(kv: KeyValue, grant: NodeGrant) -> NodeGrant | None:
    """File the admin's ``grant``, keeping the standing the network gave the node:
    its check counts, and its status unless the admin suspends or vouches for it
    (``verified``). A node the network suspended stays suspended: ``nodes
    remove`` and ``add`` start it over. Its checked location is kept while its
    NATS user is the same (another user's connections are another matter)."""
    def merged(known: NodeGrant | None) -> NodeGrant:
        if known is None or known.status == "unverified":
            return grant
        status = grant.status if grant.status in ("suspended", "verified") else known.status
        if known.status == "suspended":
            status = "suspended"
        kept = {"status": status, "passed": known.passed, "failed": known.failed,
                "strikes": known.strikes}
        if known.nats_user == grant.nats_user:
            kept.update(location=known.location, location_note=known.location_note)
        return grant.model_copy(update=kept)
    return await change_grant(kv, grant.node_id, merged)


class GrantBook(KVBook):
    """The grants bucket as it is now, followed in the background."""

    def __init__(self) -> None:
        super().__init__()
        self._grants: dict[str, NodeGrant] = {}

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
