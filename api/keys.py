"""API keys: issued once, stored and published only as a SHA-256 hash.

Lookups read the key's own subject on the event log (one direct get), so a key
created by ``inferbus keys create`` works on every API instance at once.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.events import ApiKeyIssued

PREFIX = "ib-"
CACHE_S = 30.0


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    account: str
    key_id: str
    subcloud: str | None


class KeyRing:
    """Resolves a presented key to its account, caching hits for ``CACHE_S``."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def lookup(self, presented: str) -> Principal | None:
        if not presented.startswith(PREFIX):
            return None
        digest = hash_key(presented)
        hit = self._cache.get(digest)
        if hit and time.monotonic() - hit[0] < CACHE_S:
            return hit[1]
        issued = await self._last(subjects.key_issued(digest))
        if issued is None or await self._last(subjects.key_revoked(digest)) is not None:
            return None
        event = ApiKeyIssued.model_validate_json(issued)
        # The subject already matched the hash; comparing again in constant time
        # keeps the check honest if the lookup path ever changes.
        if not hmac.compare_digest(event.key_hash, digest):
            return None
        principal = Principal(event.account, digest[:16], event.subcloud)
        self._cache[digest] = (time.monotonic(), principal)
        return principal

    async def _last(self, subject: str) -> bytes | None:
        try:
            return (await self._js.get_last_msg(subjects.EVENTS_STREAM, subject, direct=True)).data
        except NotFoundError:
            return None
