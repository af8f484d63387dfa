"""API keys: issued once, stored and published only as a SHA-256 hash.

Lookups read the key's own subject on the event log (one direct get), so a key
created by ``inferbus keys create`` or ``POST /v1/keys`` works on every API
instance at once. A hit is cached for ``CACHE_S``; a revocation reaches every
instance within a network round trip, because each one subscribes to the
revocation subjects (:func:`bus.subjects.accounts.all_key_revocations`) before its first
lookup and forgets the key the moment one arrives. Should that message be lost
(a reconnect), the cache still expires after ``CACHE_S`` and the direct get of
the revocation subject refuses it from then on.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from api.errors import APIError
from api.auth_failures import AuthFailures
from bus import subjects
from bus.subjects.accounts import all_key_revocations
from bus.events import ApiKeyIssued

PREFIX = "ib-"
CACHE_S = 30.0
KEY_ID_CHARS = 16  # a key's public id: the first characters of its hash


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(digest: str) -> str:
    return digest[:KEY_ID_CHARS]


@dataclass(frozen=True)
class Principal:
    """Who calls: an account, through one of its keys, with that key's limits."""

    account: str
    key_id: str
    subcloud: str | None
    admin: bool = False
    spend_limit: int | None = None  # micro-credits of debits and holds, at most
    expires_at: datetime | None = None
    name: str | None = None
    webhook_url: str | None = None  # its async jobs' default webhook

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or datetime.now(timezone.utc)) >= self.expires_at


def principal_of(event: ApiKeyIssued) -> Principal:
    return Principal(event.account, key_id_of(event.key_hash), event.subcloud, event.admin,
                     event.spend_limit, event.expires_at, event.name, event.webhook_url)


class KeyRing:
    """Resolves a presented key to its account, caching hits for ``CACHE_S``, and
    forgetting revoked keys as soon as their revocation is published."""

    def __init__(self, js: JetStreamContext, failures: AuthFailures | None = None) -> None:
        self._js = js
        self._failures = failures or AuthFailures()
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._revoked: set[str] = set()  # hashes revoked since start: never cached again
        self._by_id: dict[str, Principal] = {}  # key id -> the principal last resolved
        self._watching = None

    async def authenticate(self, presented: str, client: str | None) -> Principal:
        """The principal of ``presented``, or an APIError: 401 for a wrong, revoked or
        expired key, 429 while ``client`` is blocked for too many wrong ones."""
        self._failures.check(client)
        who = await self.lookup(presented)
        if who is None:
            self._failures.failed(client)
            raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
        if who.expired():
            raise APIError(401, f"This API key expired at {who.expires_at.isoformat()}.",
                           "expired_api_key")
        return who

    async def lookup(self, presented: str) -> Principal | None:
        if not presented.startswith(PREFIX):
            return None
        await self._watch()
        digest = hash_key(presented)
        if digest in self._revoked:
            return None
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        issued = await self._last(subjects.key_issued(digest))
        if issued is None or await self._last(subjects.key_revoked(digest)) is not None:
            return None
        event = ApiKeyIssued.model_validate_json(issued)
        # The subject already matched the hash; comparing again in constant time
        # keeps the check honest if the lookup path ever changes.
        if not hmac.compare_digest(event.key_hash, digest) or digest in self._revoked:
            return None
        principal = principal_of(event)
        self._cache[digest] = (time.monotonic(), principal)
        self._by_id[principal.key_id] = principal
        return principal

    def resolved(self, key_id: str) -> Principal | None:
        """The principal this instance last resolved for ``key_id`` (its limits)."""
        return self._by_id.get(key_id)

    def forget(self, digest: str) -> None:
        """Refuse ``digest`` from now on in this instance (a revocation seen)."""
        self._revoked.add(digest)
        if (hit := self._cache.pop(digest, None)) is not None:
            self._by_id.pop(hit[1].key_id, None)

    async def _watch(self) -> None:
        # Subscribed before the first direct get, so no revocation can fall between;
        # concurrent first lookups share the one subscribe.
        if self._watching is None:
            self._watching = asyncio.ensure_future(
                self._js._nc.subscribe(all_key_revocations(), cb=self._on_revoked))
        if isinstance(self._watching, asyncio.Future):
            pending = self._watching
            try:
                subscription = await asyncio.shield(pending)
            except Exception:
                if self._watching is pending:  # the next lookup tries again
                    self._watching = None
                raise
            self._watching = subscription

    async def _on_revoked(self, msg) -> None:
        # The subject names the hash (bus.publish.event_subject): no body to parse.
        self.forget(msg.subject.rsplit(".", 1)[-1])

    async def _last(self, subject: str) -> bytes | None:
        try:
            return (await self._js.get_last_msg(subjects.EVENTS_STREAM, subject, direct=True)).data
        except NotFoundError:
            return None
