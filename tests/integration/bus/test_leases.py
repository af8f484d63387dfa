"""Job leases on a real KV bucket: one holder at a time, takeover only after the
lease ran out, and a node that lost its lease can neither renew nor seal it."""
from __future__ import annotations

import pytest

from bus.leases import HeldLease, Leases, Skip
from bus.streams import claims_bucket
from tests.fakeclock import Clock


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def leases(js, clock):
    return Leases(await claims_bucket(js, 600), lease_s=10, clock=clock)


async def test_second_node_cannot_take_a_live_lease(leases):
    first = await leases.acquire("j1", "node-a", 1, message=5)
    assert isinstance(first, HeldLease) and not first.took_over
    # The same message redelivered while its holder lives: wait for the lease to end.
    again = await leases.acquire("j1", "node-b", 2, message=5)
    assert isinstance(again, Skip) and again.action == "wait" and 10 <= again.delay_s <= 11
    # A copy of the job on another queue (escalation) is not needed at all.
    assert await leases.acquire("j1", "node-b", 1, message=9) == Skip("discard")


async def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(leases, clock):
    old = await leases.acquire("j2", "node-a", 1, message=5)
    clock.now += 11
    new = await leases.acquire("j2", "node-b", 2, message=5)
    assert isinstance(new, HeldLease) and new.took_over and new.lease.attempt == 2
    assert (old.lease.runs, new.lease.runs) == (1, 2)  # each node that ran it counts
    assert not await leases.renew(old) and not await leases.seal(old)
    assert await leases.renew(new) and await leases.seal(new)
    lease = await leases.read("j2")
    assert (lease.node_id, lease.attempt, lease.done) == ("node-b", 2, True)


async def test_renewal_keeps_the_lease_from_being_taken(leases, clock):
    held = await leases.acquire("j3", "node-a", 1, message=5)
    for _ in range(3):
        clock.now += 6
        assert await leases.renew(held)
    assert isinstance(await leases.acquire("j3", "node-b", 2, message=5), Skip)


async def test_sealed_job_is_never_run_again(leases, clock):
    held = await leases.acquire("j4", "node-a", 1, message=5)
    assert await leases.seal(held)
    clock.now += 100
    assert await leases.acquire("j4", "node-b", 2, message=5) == Skip("discard")


async def test_a_restarted_node_retakes_its_own_redelivered_job_at_once(leases):
    await leases.acquire("j5", "node-a", 1, message=5)  # then the process died
    again = await leases.acquire("j5", "node-a", 2, message=5)
    assert isinstance(again, HeldLease) and again.took_over


async def test_unknown_job_has_no_lease(leases):
    assert await leases.read("nope") is None
