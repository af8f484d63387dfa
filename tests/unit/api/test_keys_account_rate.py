"""The per-account rate the NATS server counts: exactly the limit admitted however
many connections race for it, and a stream that cannot be reached admits without
making every request wait."""
from __future__ import annotations

import asyncio
import time

import nats
import pytest

from api.account_rate import AccountRate
from api.errors import APIError
from bus.subjects.accounts import RATES_STREAM


def test_exactly_the_limit_is_admitted_across_connections(fresh_nats):
    async def race() -> list:
        conns = [await nats.connect(fresh_nats.url) for _ in range(2)]
        try:
            rates = [AccountRate(nc.jetstream(), 5) for nc in conns]
            await rates[0].ensure()
            return await asyncio.gather(*(rates[i % 2].admit("acme") for i in range(12)),
                                        rates[0].admit("other"), return_exceptions=True)
        finally:
            for nc in conns:
                await nc.close()
    outcomes = asyncio.run(race())
    refused = [o for o in outcomes if isinstance(o, APIError)]
    assert outcomes.count(None) == 6 and len(refused) == 7  # 5 of acme's, and other's one
    assert all(e.status == 429 and 50 <= int(e.headers["Retry-After"]) <= 60 for e in refused)


def test_an_unreachable_stream_admits_and_stops_asking_for_a_while(fresh_nats):
    async def run() -> tuple[float, float]:
        nc = await nats.connect(fresh_nats.url)
        try:
            rate = AccountRate(nc.jetstream(), 1)
            await rate.ensure()
            await nc.jetstream().delete_stream(RATES_STREAM)  # nothing stores rates.> now
            started = time.monotonic()
            await rate.admit("acme")
            first = time.monotonic() - started
            started = time.monotonic()
            for _ in range(20):
                await rate.admit("acme")
            return first, time.monotonic() - started
        finally:
            await nc.close()
    first, next_twenty = asyncio.run(run())
    assert first < 1.5 and next_twenty < 0.05


@pytest.mark.parametrize("limit", [3, 7])
def test_the_last_instance_to_start_sets_the_limit(fresh_nats, limit):
    async def run() -> int:
        nc = await nats.connect(fresh_nats.url)
        try:
            await AccountRate(nc.jetstream(), 100).ensure()
            await AccountRate(nc.jetstream(), limit).ensure()
            return (await nc.jetstream().stream_info(RATES_STREAM)).config.max_msgs_per_subject
        finally:
            await nc.close()
    assert asyncio.run(run()) == limit
