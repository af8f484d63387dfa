"""One webhook attempt: a signed POST of a job's body, bounded in time.

An attempt succeeds on a 2xx answer. Redirects are not followed and, unless
private receivers are allowed, the host is resolved again before each attempt
(a name that now points inside the network is refused), so a receiver cannot
steer the dispatcher to an address the admission check would have refused.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx

from api.webhook_signing import sign
from api.webhook_targets import Target, check_url

SIGNATURE = "X-Inferbus-Signature"
DELIVERY = "X-Inferbus-Delivery"
EVENT = "X-Inferbus-Event"


@dataclass(frozen=True)
class Attempt:
    """How one attempt went: ``status`` the HTTP answer, ``error`` why there was none."""

    ok: bool
    status: int | None = None
    error: str | None = None


class Sender:
    """Signs and POSTs webhook bodies, each attempt within ``timeout_s``."""

    def __init__(self, timeout_s: float, allow_private: bool) -> None:
        self._timeout_s, self._allow_private = timeout_s, allow_private
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False,
                                         timeout=httpx.Timeout(timeout_s))

    async def post(self, target: Target, secret: str, event: str, job: dict) -> Attempt:
        body = json.dumps(job, separators=(",", ":")).encode()
        try:
            await check_url(target.url, self._allow_private)
        except Exception as exc:  # noqa: BLE001 - an APIError: the host moved inside
            return Attempt(False, error=getattr(exc, "message", str(exc)))
        headers = {"Content-Type": "application/json", "User-Agent": "inferbus-webhooks/1",
                   SIGNATURE: sign(secret, body, int(time.time())),
                   DELIVERY: target.delivery_id, EVENT: event}
        try:
            # The whole attempt is bounded, not each read: a receiver trickling bytes
            # must not hold a delivery slot past its timeout.
            # Only the status is read: a receiver's body, however large, is never loaded.
            async with asyncio.timeout(self._timeout_s):
                async with self._client.stream("POST", target.url, content=body,
                                               headers=headers) as answer:
                    status = answer.status_code
        except Exception as exc:  # noqa: BLE001 - any failure of one attempt is a failed attempt
            return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:300] or "timeout")
        return Attempt(200 <= status < 300, status=status)

    async def close(self) -> None:
        await self._client.aclose()

