"""Where an async job's outcome is delivered: the ``X-Inferbus-Webhook`` header,
checked and kept in the ``webhooks`` KV bucket at admission.

The target never rides the job message nodes read (a node must not learn where
a consumer's callbacks go): the API writes it to the bucket, keyed by the job
id, before the job is logged, so the dispatcher (``api.webhook_dispatch``)
finds it however fast the job ends. The same entry records the delivery's
attempts (:class:`Target`).

The header reaches admission with the call (``api.serving.Call.webhook``).
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import uuid
from dataclasses import asdict, dataclass, replace
from urllib.parse import urlsplit

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from api.errors import APIError
from bus.config import Settings

HEADER = "X-Inferbus-Webhook"
MAX_URL = 2048
RESOLVE_S = 3.0


def retry_delay(attempts: int, base_s: float, max_s: float) -> float:
    """The pause after the ``attempts``-th failed attempt: ``base_s`` doubling, at most ``max_s``."""
    return min(base_s * 2 ** min(attempts - 1, 60), max_s)


def bucket_ttl_s(settings: Settings) -> float:
    """How long a target is kept: a job's life, then every retry's pause and timeout."""
    window = sum(retry_delay(n, settings.webhook_retry_base_s, settings.webhook_retry_max_s)
                 for n in range(1, settings.webhook_max_attempts + 1))
    return (settings.job_timeout_s + settings.expiry_grace_s + window
            + settings.webhook_max_attempts * settings.webhook_timeout_s + 3600.0)


def _bad(why: str) -> APIError:
    return APIError(400, f"{HEADER}: {why}", "invalid_webhook", HEADER)


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM),
                                       RESOLVE_S)
    except (OSError, UnicodeError, ValueError, asyncio.TimeoutError):  # no such name, or no name
        return []
    return list(dict.fromkeys(info[4][0] for info in infos))


async def check_url(url: str, allow_private: bool, param: str = HEADER) -> str:
    """``url`` if a webhook may be sent there, else a 400 naming ``param`` (the
    header, or a key's ``webhook_url``): http(s) only, no credentials in it, and
    (unless ``allow_private``) a host that resolves only to public addresses, so
    a caller cannot aim the network at its own loopback or private services."""
    try:
        return await _checked(url, allow_private)
    except APIError as exc:
        if param == HEADER:
            raise
        raise APIError(400, exc.message.replace(HEADER, param, 1), exc.code, param) from None


async def _checked(url: str, allow_private: bool) -> str:
    if len(url) > MAX_URL:
        raise _bad(f"the URL is longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise _bad(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _bad("must be an absolute http:// or https:// URL")
    if parts.username or parts.password:
        raise _bad("must not carry credentials; verify the signature instead")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise _bad("must not contain spaces or control characters")
    if allow_private:
        return url
    addresses = await resolve(parts.hostname)
    if not addresses:
        raise _bad(f"the host {parts.hostname!r} does not resolve")
    if not all(_public(a) for a in addresses):
        raise _bad(f"the host {parts.hostname!r} is a loopback or private address")
    return url


@dataclass(frozen=True)
class Target:
    """One job's webhook: where, for whom, and its delivery so far. ``delivery_id``
    stays the same across retries (``X-Inferbus-Delivery``), so a receiver can
    drop a repeat."""

    url: str
    account: str
    delivery_id: str
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_at: float | None = None
    delivered_at: float | None = None
    given_up_at: float | None = None

    @property
    def done(self) -> bool:
        return self.delivered_at is not None or self.given_up_at is not None


class WebhookTargets:
    """The ``webhooks`` bucket: each async job's target, and its delivery record."""

    def __init__(self, kv: KeyValue, allow_private: bool) -> None:
        self._kv, self._allow_private = kv, allow_private

    async def requested_for(self, value: str | None, respond_async: bool) -> str | None:
        """The checked URL a request's header names (None: no header); 400 on a
        bad one, or on one sent with a call that is not async."""
        if value is None:
            return None
        if not respond_async:
            raise _bad("a webhook needs an async call ('Prefer: respond-async')")
        return await check_url(value.strip(), self._allow_private)

    async def record(self, job_id: str, account: str, url: str) -> None:
        """Keep ``url`` as ``job_id``'s target (before the job is logged). A job
        that has one keeps it: a repeated ``Idempotency-Key`` names the same job,
        whose delivery (perhaps done already) must not start over."""
        target = Target(url=url, account=account, delivery_id=uuid.uuid4().hex)
        with contextlib.suppress(KeyWrongLastSequenceError):
            await self._kv.create(job_id, json.dumps(asdict(target)).encode())

    async def get(self, job_id: str) -> tuple[Target, int] | None:
        """The job's target and its entry's revision; None: no webhook."""
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return Target(**json.loads(entry.value)), entry.revision

    async def update(self, job_id: str, target: Target, revision: int, **changes) -> Target:
        """Record a delivery step, only over the revision read (another dispatcher
        that moved it first wins: raises ``KeyWrongLastSequenceError``)."""
        changed = replace(target, **changes)
        await self._kv.update(job_id, json.dumps(asdict(changed)).encode(), last=revision)
        return changed

