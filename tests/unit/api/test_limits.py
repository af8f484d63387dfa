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


class SlowAccountRate:
    """The network-wide count, a round trip of ``delay`` seconds; ``refuse``: over it."""

    def __init__(self, delay: float, refuse: bool = False) -> None:
        self.delay, self.refuse, self.done_at = delay, refuse, None

    async def admit(self, account: str) -> None:
        await asyncio.sleep(self.delay)
        self.done_at = asyncio.get_running_loop().time()
        if self.refuse:
            raise APIError(429, "over", "rate_limit_exceeded")


def test_the_job_is_prepared_while_the_account_is_counted_not_after(read_model):
    rate = SlowAccountRate(0.05)
    limiter = limits.KeyLimiter(None, per_minute=10**6, max_in_flight=100, account_rate=rate)

    async def run() -> tuple[float, str]:
        async def prepare() -> str:
            return asyncio.get_running_loop().time(), "job"
        (prepared_at, job) = await limiter.admit(who(), prepare())
        return prepared_at, job
    prepared_at, job = asyncio.run(run())
    assert job == "job" and prepared_at < rate.done_at


def test_an_account_over_its_rate_gets_429_even_when_its_job_was_prepared(read_model):
    limiter = limits.KeyLimiter(None, per_minute=10**6, max_in_flight=100,
                                account_rate=SlowAccountRate(0.01, refuse=True))

    async def prepare() -> str:
        return "job"
    with pytest.raises(APIError) as refused:
        asyncio.run(limiter.admit(who(), prepare()))
    assert refused.value.status == 429


def test_a_key_over_its_own_rate_is_refused_without_preparing_anything(read_model):
    limiter = limits.KeyLimiter(None, per_minute=1, max_in_flight=100)
    prepared = []

    async def prepare() -> None:
        prepared.append(1)

    async def run() -> None:
        await limiter.admit(who(), prepare())
        with pytest.raises(APIError):
            await limiter.admit(who(), prepare())
    asyncio.run(run())
    assert prepared == [1]


def test_over_the_account_rate_a_bad_request_is_still_a_429(read_model):
    limiter = limits.KeyLimiter(None, per_minute=10**6, max_in_flight=100,
                                account_rate=SlowAccountRate(0.01, refuse=True))

    async def prepare() -> None:
        raise APIError(404, "no such model", "model_not_found")
    with pytest.raises(APIError) as refused:
        asyncio.run(limiter.admit(who(), prepare()))
    assert refused.value.status == 429
