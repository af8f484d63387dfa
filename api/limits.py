"""Limits checked before anything is reserved or published.

- ``BodyLimit``: a request body over ``max_bytes`` is a 413 (ASGI middleware,
  so no route ever parses it).
- ``KeyLimiter``: per key, a token bucket of ``per_minute`` requests (429 with
  ``Retry-After``) held by this API instance, and at most ``max_in_flight``
  unfinished jobs counted from the shared jobs read model, so the cap holds
  across instances (a burst inside the projection lag, a few milliseconds,
  can pass it; the rate limit bounds such bursts). Far below the cap the
  count may be up to ``ACTIVE_READ_S`` old, with the jobs admitted here since
  added; near the cap it is read for each request. With ``account_rate``
  (:class:`api.account_rate.AccountRate`), the account's requests are also
  counted network-wide, once the local checks passed; that count is a round
  trip, made while the job is prepared (which holds nothing), not before it.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import math
import time
from typing import Awaitable, TypeVar

from api.account_rate import AccountRate
from api.errors import APIError
from api.keys import Principal
from bus.credits import credits
from projections.api_keys import key_spend
from projections.job_status import active_jobs

T = TypeVar("T")
# How stale the read-model count of a key's unfinished jobs may be. Reading it for
# every request cost the API a third of its CPU at 64 requests in flight.
ACTIVE_READ_S = 0.1
# How long a hold this instance admitted counts while the read model does not show it.
UNSEEN_S = 10.0


class BodyLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size, more = [], 0, True
        while more:  # buffered: bodies here are small, and a stream can lie about its length
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send)
            more = message.get("more_body", False)
        await self.app(scope, _replay(chunks, receive), send)

    async def _too_large(self, send) -> None:
        body = json.dumps(APIError(413, f"request body over {self.max_bytes} bytes",
                                   "request_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages: list[dict], then=None):
    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        if then is not None:
            return await then()  # e.g. http.disconnect, which streaming responses watch for
        return {"type": "http.disconnect"}
    return receive


class KeyLimiter:
    def __init__(self, store, per_minute: int, max_in_flight: int,
                 account_rate: AccountRate | None = None) -> None:
        self._store, self._rate, self._max_in_flight = store, per_minute, max_in_flight
        self._account_rate = account_rate  # network-wide, per account; after the local checks
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        # key -> (unfinished jobs when read, admitted here since, read at)
        self._active: dict[str, tuple[int, int, float]] = {}

    async def admit(self, who: Principal, meanwhile: Awaitable[T] | None = None) -> T | None:
        """Admit one request of ``who`` (429 over a limit) and return ``meanwhile``'s
        result: work that holds nothing (the job's preparation), run while the
        account's network-wide count is made, so it does not wait for that round
        trip. Nothing may be reserved until this returns."""
        try:
            await self._local(who)
        except BaseException:
            if inspect.iscoroutine(meanwhile):
                meanwhile.close()
            raise
        if meanwhile is None:
            meanwhile = asyncio.sleep(0)
        if self._account_rate is None:
            return await meanwhile
        counted = asyncio.ensure_future(self._account_rate.admit(who.account))
        await asyncio.sleep(0)  # the count's publish goes out before the preparation runs
        try:
            result = await meanwhile
        except Exception:
            await counted  # over the rate is the answer, as it was before any preparing
            raise
        except BaseException:  # cancelled: the count completes on its own
            counted.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise
        await counted
        return result

    async def _local(self, who: Principal) -> None:
        """This instance's checks of the key: its rate and its unfinished jobs."""
        now = time.monotonic()
        tokens, at = self._buckets.get(who.key_id, (float(self._rate), now))
        tokens = min(float(self._rate), tokens + (now - at) * self._rate / 60.0)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) * 60.0 / self._rate)
            self._buckets[who.key_id] = (tokens, now)
            raise APIError(429, f"over {self._rate} requests per minute for this key",
                           "rate_limit_exceeded", headers={"Retry-After": str(wait)})
        active = await self._active_jobs(who.key_id, now)
        if active >= self._max_in_flight:
            self._buckets[who.key_id] = (tokens, now)
            raise APIError(429, f"this key has {active} unfinished jobs (at most "
                           f"{self._max_in_flight})", "too_many_jobs_in_flight",
                           headers={"Retry-After": "1"})
        self._buckets[who.key_id] = (tokens - 1.0, now)
        count, since, at = self._active[who.key_id]
        self._active[who.key_id] = (count, since + 1, at)

    async def _active_jobs(self, key_id: str, now: float) -> int:
        """The key's unfinished jobs. Far below the cap, the read-model count of up to
        ``ACTIVE_READ_S`` ago plus the jobs this instance admitted since (some of which
        may have finished) will do; near it, the count is read afresh."""
        count, since, at = self._active.get(key_id, (0, 0, -ACTIVE_READ_S))
        if now - at < ACTIVE_READ_S and count + since < self._max_in_flight - 1:
            return count + since
        count = await asyncio.to_thread(active_jobs, self._store, key_id)
        self._active[key_id] = (count, 0, now)
        return count


class SpendGuard:
    """A key's spend limit, checked when a job's worst case is about to be held:
    what the key has spent and holds now, plus this hold, must stay within it
    (402 otherwise; nothing is held).

    Spent and held come from the read models, which trail the ledger by the
    projection lag (milliseconds). So each instance also counts the holds it
    admitted that the read model does not show yet (by job id, so none counts
    twice), and checks one key's requests one at a time: a burst at one instance
    cannot pass the limit. Bursts at several instances at once can, by what they
    hold within the lag."""

    def __init__(self, store, keys) -> None:
        self._store, self._keys = store, keys  # keys: api.keys.KeyRing (limits by key id)
        self._unseen: dict[str, dict[str, tuple[int, float]]] = {}  # key -> job -> (amount, at)
        self._locks: dict[str, asyncio.Lock] = {}

    async def check(self, key_id: str, job_id: str, amount: int) -> None:
        who = self._keys.resolved(key_id)
        if who is None or who.spend_limit is None:
            return
        async with self._locks.setdefault(key_id, asyncio.Lock()):
            now = time.monotonic()
            # A hold the read model never shows (its job was refused by the ledger)
            # stops counting after UNSEEN_S.
            unseen = {job: held for job, held in self._unseen.get(key_id, {}).items()
                      if now - held[1] < UNSEEN_S and job != job_id}
            used, seen = await asyncio.to_thread(key_spend, self._store, key_id, list(unseen))
            unseen = {job: held for job, held in unseen.items() if job not in seen}
            used += sum(amount for amount, _ in unseen.values())
            if used + amount > who.spend_limit:
                self._unseen[key_id] = unseen
                raise APIError(402, f"This request may cost up to {float(credits(amount))} "
                               f"credits; this key has used {float(credits(used))} of its spend "
                               f"limit of {float(credits(who.spend_limit))}.",
                               "spend_limit_exceeded")
            self._unseen[key_id] = {**unseen, job_id: (amount, now)}
