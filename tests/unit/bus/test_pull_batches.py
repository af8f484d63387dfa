"""``bus.streams.batches``: an idle fetch is no failure, whichever timeout the
client raises for it; a real failure is waited out and retried."""
import asyncio
import logging

import nats.errors

from bus.streams import batches


class Sub:
    """A pull subscription whose fetches answer from a script."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    async def fetch(self, size: int, timeout: float):
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def first_batch(sub: Sub, poll_s: float) -> list:
    stop = asyncio.Event()
    async for msgs in batches(sub, stop, 10, "test", poll_s=poll_s):
        return msgs
    return []


async def test_an_idle_fetch_ending_in_asyncios_own_timeout_is_not_a_failure(caplog):
    sub = Sub(asyncio.TimeoutError(), nats.errors.TimeoutError(), ["m1", "m2"])
    with caplog.at_level(logging.WARNING):
        # a poll this long would hang the test if the idle answer were waited out
        got = await asyncio.wait_for(first_batch(sub, poll_s=30.0), 5)
    assert got == ["m1", "m2"]
    assert "fetch failed" not in caplog.text


async def test_a_failed_fetch_is_logged_and_retried_after_a_pause(caplog):
    sub = Sub(ConnectionError("gone"), ["m"])
    with caplog.at_level(logging.WARNING):
        assert await asyncio.wait_for(first_batch(sub, poll_s=0.01), 5) == ["m"]
    assert "test: fetch failed; retrying" in caplog.text


async def lingering_batch(sub: Sub, size: int = 10) -> list:
    stop = asyncio.Event()
    async for msgs in batches(sub, stop, size, "test", poll_s=1.0, linger_s=0.01,
                              linger_below=4):
        return msgs
    return []


async def test_a_small_fetch_lingers_and_takes_what_came_meanwhile():
    sub = Sub(["m1"], ["m2", "m3"])
    assert await lingering_batch(sub) == ["m1", "m2", "m3"]


async def test_a_linger_that_brings_nothing_yields_the_first_fetch_alone():
    sub = Sub(["m1"], nats.errors.TimeoutError(), ["later"])
    assert await lingering_batch(sub) == ["m1"]
    assert sub.answers == [["later"]]  # the next batch's, untouched


async def test_a_fetch_of_many_does_not_linger():
    sub = Sub(["m1", "m2", "m3", "m4"], ["later"])
    assert await lingering_batch(sub) == ["m1", "m2", "m3", "m4"]
    assert sub.answers == [["later"]]
