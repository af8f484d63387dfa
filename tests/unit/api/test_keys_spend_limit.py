"""A key's spend limit: holds the read model does not show yet still count, once
each, so a burst at one API instance cannot pass it."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from api.errors import APIError
from api.keys import Principal
from api.limits import SpendGuard
from bus.events import CreditsDebited, CreditsRefunded, CreditsReserved
from projections.readmodels import PROJECTIONS, SCHEMA
from projections.store import SqliteStore

LIMIT = 10


class Ring:
    """The one thing the guard asks the key ring: the limits of a key it resolved."""

    def resolved(self, key_id: str) -> Principal | None:
        return Principal("acme", key_id, None, spend_limit=LIMIT) if key_id == "k" else None


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "rm.db", SCHEMA)
    yield s
    s.close()


def project(store, *events) -> None:
    with store.transaction() as tx:
        for event in events:
            for read_model in PROJECTIONS:
                read_model.apply(tx, event, "eu")


def reserved(job: str, amount: int) -> CreditsReserved:
    return CreditsReserved(account="acme", job_id=job, key_id="k", amount=amount, zone="eu",
                           deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


def check(guard: SpendGuard, job: str, amount: int, key: str = "k") -> None:
    asyncio.run(guard.check(key, job, amount))


def test_a_hold_not_yet_projected_counts_and_a_projected_one_counts_once(store):
    guard = SpendGuard(store, Ring())
    check(guard, "j1", 6)
    with pytest.raises(APIError) as err:
        check(guard, "j2", 6)  # j1 is held, though the read model has not seen it
    assert err.value.status == 402 and err.value.code == "spend_limit_exceeded"
    project(store, reserved("j1", 6))
    with pytest.raises(APIError):
        check(guard, "j2", 6)  # 6 projected + 6 asked: still over, and j1 not counted twice
    check(guard, "j2", 4)
    project(store, reserved("j2", 4), CreditsDebited(account="acme", job_id="j1", amount=1,
                                                     zone="eu"),
            CreditsRefunded(account="acme", job_id="j1", amount=5, zone="eu",
                            reason="settled"))
    check(guard, "j3", 5)  # spent 1 + held 4 + 5 = 10


def test_a_repeat_of_the_same_job_is_not_counted_against_itself(store):
    guard = SpendGuard(store, Ring())
    check(guard, "j1", 6)
    check(guard, "j1", 6)


def test_concurrent_requests_of_one_key_cannot_pass_its_limit(store):
    guard = SpendGuard(store, Ring())

    async def burst() -> list:
        return await asyncio.gather(*(guard.check("k", f"j{i}", 3) for i in range(6)),
                                    return_exceptions=True)
    outcomes = asyncio.run(burst())
    assert outcomes.count(None) == 3 and all(isinstance(o, APIError) for o in outcomes if o)


def test_a_key_without_a_limit_is_not_checked(store):
    check(SpendGuard(store, Ring()), "j1", 10**12, key="other")
