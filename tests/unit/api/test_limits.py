"""The per-key cap on unfinished jobs: far below it the read model is not asked for
every request, near it every request sees a fresh count."""
from __future__ import annotations

import asyncio

import pytest

from api import limits
from api.errors import APIError
from api.keys import Principal


@pytest.fixture
def read_model(monkeypatch):
    """The jobs read model's count of unfinished jobs, and how often it was read."""
    state = {"active": 0, "reads": 0}

    def active_jobs(_store, _key_id: str) -> int:
        state["reads"] += 1
        return state["active"]
    monkeypatch.setattr(limits, "active_jobs", active_jobs)
    return state


def who() -> Principal:
    return Principal(account="a", key_id="k", subcloud=None)


def test_far_below_the_cap_a_burst_reads_the_count_once(read_model):
    limiter = limits.KeyLimiter(None, per_minute=10**6, max_in_flight=100)

    async def burst() -> None:
        for _ in range(50):
            await limiter.admit(who())
    asyncio.run(burst())
    assert read_model["reads"] == 1


def test_near_the_cap_each_request_reads_a_fresh_count(read_model):
    limiter = limits.KeyLimiter(None, per_minute=10**6, max_in_flight=3)

    async def run() -> None:
        read_model["active"] = 1
        await limiter.admit(who())
        read_model["active"] = 2
        await limiter.admit(who())
        read_model["active"] = 3
        with pytest.raises(APIError) as refused:
            await limiter.admit(who())
        assert refused.value.code == "too_many_jobs_in_flight"
        read_model["active"] = 0  # they finished: admitted again at once
        await limiter.admit(who())
    asyncio.run(run())
    assert read_model["reads"] == 4
