"""Settlement on a real nats-server and a real ledger: outcomes drive the
ledger exactly once, however often they are delivered."""
import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from types import SimpleNamespace

from faststream.nats import NatsBroker

from bus import signing
from bus.events import JobCompleted, JobFailed, Usage, output_hash
from bus.leases import Leases
from bus.pricing import Pricing
from bus.publish import publish_event
from bus.streams import claims_bucket
from tests.fakeclock import Clock
from projections import settlement

USAGE = Usage(prompt_tokens=10, completion_tokens=20)


@pytest.fixture
async def world(js, ledger, fresh_nats, tmp_path):
    broker = NatsBroker(fresh_nats.url)
    clock = Clock()
    leases = Leases(await claims_bucket(js, 600), lease_s=10, clock=clock)
    settlement.subscribe(broker, settlement.Settlement(ledger, Pricing()), js, leases,
                         ack_wait_s=2)
    await broker.start()
    world = SimpleNamespace(js=js, ledger=ledger, leases=leases, clock=clock,
                            key=signing.load_or_create_key(tmp_path / "node.key"),
                            other=signing.load_or_create_key(tmp_path / "other.key"))
    yield world
    await broker.stop()


def reserve(ledger, job_id: str, account: str = "acme") -> None:
    ledger.deposit(account, 10_000_000)
    ledger.reserve(account, job_id, 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


async def run_and_seal(world, job_id: str, key, attempt: int = 1, message: int = 1) -> None:
    """``key``'s node takes the job's lease and seals it, as a worker does before it
    publishes its outcome."""
    held = await world.leases.acquire(job_id, signing.node_id(key), attempt, message)
    assert await world.leases.seal(held)


def completed(key, job_id: str, **kw) -> JobCompleted:
    """``key``'s node's validly signed result (``kw`` overrides fields before signing)."""
    fields = {**dict(job_id=job_id, operator="op", tier=1, attempt=1, input_hash="i",
                     output_hash=output_hash("x")), **kw}
    sig = signing.sign_result(key, usage=USAGE, **fields)
    return JobCompleted(model="m", node_id=signing.node_id(key), zone="eu", text="x",
                        finish_reason="stop", usage=USAGE, signature=sig, **fields)


async def resolved(ledger, job_id: str):
    for _ in range(200):
        view = await asyncio.to_thread(ledger.reservation, job_id)
        if view.status != "pending":
            return view
        await asyncio.sleep(0.02)
    raise TimeoutError(job_id)


async def test_outcome_delivered_three_times_is_charged_once(world):
    js, ledger, key = world.js, world.ledger, world.key
    reserve(ledger, "job1")
    await run_and_seal(world, "job1", key)
    event = completed(key, "job1")
    for _ in range(3):  # three distinct messages: JetStream cannot deduplicate them
        await publish_event(js, event.model_copy(update={"event_id": f"e{_}"}), "eu")
    view = await resolved(ledger, "job1")
    await asyncio.sleep(0.5)  # give the two repeats time to (not) act
    expected = Pricing().cost("m", USAGE)
    assert (view.status, view.debited, view.refunded) == ("settled", expected, 1_000_000 - expected)
    assert ledger.account("acme").spent == expected
    assert ledger.account("op").rcp == USAGE.completion_tokens


async def test_result_with_a_forged_signature_is_refunded_and_never_paid(world):
    js, ledger, key = world.js, world.ledger, world.key
    reserve(ledger, "job2")
    await run_and_seal(world, "job2", key)
    forged = completed(key, "job2").model_copy(update={"operator": "mallory"})
    await publish_event(js, forged, "eu")
    view = await resolved(ledger, "job2")
    assert (view.status, view.debited) == ("refunded", 0)
    assert ledger.account("mallory").rcp == 0


async def test_failed_job_is_refunded_in_full(world):
    js, ledger = world.js, world.ledger
    reserve(ledger, "job3")
    await publish_event(js, JobFailed(job_id="job3", zone="eu", code="worker_error",
                                      message="boom"), "eu")
    view = await resolved(ledger, "job3")
    assert (view.status, view.refunded) == ("refunded", 1_000_000)
    assert ledger.account("acme").held == 0


async def test_late_result_of_a_node_whose_lease_was_taken_over_is_never_paid(world):
    js, ledger, leases = world.js, world.ledger, world.leases
    reserve(ledger, "job4")
    slow = await leases.acquire("job4", signing.node_id(world.key), 1, 7)
    world.clock.now += 60  # the first node stopped renewing: its lease ran out
    taker = await leases.acquire("job4", signing.node_id(world.other), 2, 7)
    assert taker.took_over and not await leases.seal(slow)  # the late node cannot seal...
    # ...and its outcome, validly signed, published anyway, changes nothing.
    await publish_event(js, completed(world.key, "job4"), "eu")
    await asyncio.sleep(0.5)
    assert ledger.reservation("job4").status == "pending"
    assert await leases.seal(taker)
    await publish_event(js, completed(world.other, "job4", attempt=2, operator="op2"), "eu")
    view = await resolved(ledger, "job4")
    assert view.status == "settled"
    assert (ledger.account("op").rcp, ledger.account("op2").rcp) == (0, USAGE.completion_tokens)


async def test_outcome_of_a_node_that_never_held_the_job_is_set_aside(world):
    js, ledger = world.js, world.ledger
    reserve(ledger, "job5")
    await run_and_seal(world, "job5", world.key)
    for intruder in (completed(world.other, "job5"),
                     JobFailed(job_id="job5", zone="eu", code="x", message="y"),
                     JobFailed(job_id="job5", node_id=signing.node_id(world.other), zone="eu",
                               code="x", message="y")):
        await publish_event(js, intruder, "eu")
    await asyncio.sleep(0.5)
    assert ledger.reservation("job5").status == "pending"
    await publish_event(js, completed(world.key, "job5"), "eu")
    assert (await resolved(ledger, "job5")).status == "settled"


async def test_reservation_held_past_its_deadline_is_swept_and_refunded(world, tmp_path):
    from projections.store import open_store_url
    from bus import relay, subjects
    from tests.integration.projecting import project
    js, ledger = world.js, world.ledger
    ledger.deposit("acme", 10_000_000)
    ledger.reserve("acme", "stale", 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) - timedelta(seconds=1))
    await relay.relay_once(ledger, js, 0)  # the reservation reaches the read model
    store = open_store_url(tmp_path / "readmodels.sqlite3")
    await project(store, js, (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(settlement.sweep_expired(store, ledger, js, 0.0, stop))
    view = await resolved(ledger, "stale")
    stop.set()
    await sweeper
    store.close()
    assert (view.status, view.refunded) == ("refunded", 1_000_000)
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter="events.eu.JobExpired")
    assert info.state.subjects == {"events.eu.JobExpired": 1}


async def test_sweep_leaves_a_completed_job_to_its_late_settlement(world, tmp_path):
    from bus import relay, subjects
    from projections import views
    from projections.store import open_store_url
    from tests.integration.projecting import project
    js, ledger = world.js, world.ledger
    ledger.deposit("acme", 10_000_000)
    ledger.reserve("acme", "late", 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) - timedelta(seconds=5))
    await relay.relay_once(ledger, js, 0)
    await publish_event(js, completed(world.key, "late"), "eu")  # no seal: stays pending
    store = open_store_url(tmp_path / "readmodels.sqlite3")
    await project(store, js, (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
    now = datetime.now(timezone.utc)
    assert views.expired_reservations(store, now, 1.0, 60.0) == []
    assert views.expired_reservations(store, now + timedelta(seconds=60), 1.0, 60.0) == ["late"]
    store.close()


async def test_malformed_outcome_is_dead_lettered_and_settlement_goes_on(world, tmp_path):
    from bus import subjects
    from bus.events import DeadLetter
    from projections.store import open_store_url
    from tests.integration.projecting import project
    js, ledger = world.js, world.ledger
    bad = await js.publish("events.eu.JobCompleted", b'{"type": "JobCompleted", "job_id": 7}')
    reserve(ledger, "after")
    await publish_event(js, JobFailed(job_id="after", zone="eu", code="x", message="y"), "eu")
    assert (await resolved(ledger, "after")).status == "refunded"  # the consumer went on

    store = open_store_url(tmp_path / "readmodels.sqlite3")  # the projector goes on too
    await project(store, js, (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
    store.close()
    sub = await js.subscribe("deadletter.>", ordered_consumer=True)
    letters = [DeadLetter.model_validate_json((await sub.next_msg(timeout=5)).data)
               for _ in range(2)]
    assert {(d.consumer, d.stream_seq) for d in letters} == {("settlement", bad.seq),
                                                              ("projector", bad.seq)}
    assert all("job_id" in d.reason or "validation" in d.reason.lower() for d in letters)
