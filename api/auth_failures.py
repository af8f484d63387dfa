"""Failed authentication, limited per client address.

A client address (the one :meth:`api.geoip.ZoneResolver.client_ip` resolves,
so ``X-Forwarded-For`` counts only from a trusted proxy) that presents
``max_failures`` wrong keys within ``window_s`` is refused with 429 and
``Retry-After`` for every request that presents a key, the correct one too,
until the window that holds those failures has passed. Guessing keys from one
address thus costs ``window_s`` per ``max_failures`` tries.

The count is held by each API instance: an attacker spreading guesses over N
instances gets N times the tries. Keys carry 256 random bits, so that is still
no way in; what it bounds is the load of a guessing flood.
"""
from __future__ import annotations

import math
import time
from collections import deque

from api.errors import APIError

MAX_FAILURES = 20
WINDOW_S = 60.0
MAX_ADDRESSES = 100_000  # addresses tracked at once: a flood of spoofed ones cannot grow it


class AuthFailures:
    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures, self.window_s = max_failures, window_s
        self._failures: dict[str, deque[float]] = {}

    def check(self, client: str | None, now: float | None = None) -> None:
        """429 while ``client`` has ``max_failures`` failures within the window."""
        if client is None or (times := self._recent(client, now)) is None:
            return
        if len(times) >= self.max_failures:
            wait = max(1, math.ceil(times[0] + self.window_s - (now or time.monotonic())))
            raise APIError(429, f"too many failed authentications from this address; "
                           f"try again in {wait} s", "auth_rate_limited",
                           headers={"Retry-After": str(wait)})

    def failed(self, client: str | None, now: float | None = None) -> None:
        """Count one wrong key from ``client``."""
        if client is None:
            return
        now = now or time.monotonic()
        times = self._recent(client, now)
        if times is None:
            if len(self._failures) >= MAX_ADDRESSES:
                self._sweep(now)
            times = self._failures.setdefault(client, deque())
        times.append(now)
        while len(times) > self.max_failures:  # only the last max_failures matter
            times.popleft()

    def _recent(self, client: str, now: float | None) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        cutoff = (now or time.monotonic()) - self.window_s
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def _sweep(self, now: float) -> None:
        for client in list(self._failures):
            self._recent(client, now)
        if len(self._failures) >= MAX_ADDRESSES:  # still full of fresh ones: drop the oldest
            for client in list(self._failures)[: len(self._failures) // 2]:
                del self._failures[client]
