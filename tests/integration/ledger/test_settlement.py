"""Settlement on a real nats-server and a real ledger: outcomes drive the
ledger exactly once, however often they are delivered."""
import asyncio
from types import SimpleNamespace

from bus import signing
from bus.events import JobFailed
from bus.pricing import Pricing
from bus.publish import publish_event
from ledger import settlement
from tests.integration.ledger.settling import USAGE, completed, reserve, resolved, run_and_seal

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


async def test_a_logged_completion_is_paid_long_after_its_lease_aged_out(world):
    """The gate checked the lease before it logged the result: settlement running
    later than the claims TTL (the lease entry gone) still pays it."""
    js, ledger = world.js, world.ledger
    reserve(ledger, "job4")
    await run_and_seal(world, "job4", world.key)
    await world.leases.kv.purge("job4")  # the claims bucket's TTL dropped the lease
    await publish_event(js, completed(world.key, "job4"), "eu")
    view = await resolved(ledger, "job4")
    assert view.status == "settled" and ledger.account("op").rcp == USAGE.completion_tokens


async def test_an_outcome_without_a_node_is_set_aside_while_a_node_holds_the_job(world):
    js, ledger = world.js, world.ledger
    reserve(ledger, "job5")
    await run_and_seal(world, "job5", world.key)
    # The API's cancel of what it took for a queued job: a node runs it, so it waits.
    await publish_event(js, JobFailed(job_id="job5", zone="eu", code="x", message="y"), "eu")
    await asyncio.sleep(0.5)
    assert ledger.reservation("job5").status == "pending"
    await publish_event(js, completed(world.key, "job5"), "eu")
    assert (await resolved(ledger, "job5")).status == "settled"


async def test_malformed_outcome_is_dead_lettered_and_settlement_goes_on(world, tmp_path):
    from bus import subjects
    from bus.events import DeadLetter
    from projections.readmodels import open_store_url
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


class Delivered:
    """A pulled message as :func:`settlement.settle_batch` sees it, recording its ack."""

    def __init__(self, seq: int, event=None, raw: bytes | None = None) -> None:
        self.data = raw if raw is not None else event.model_dump_json().encode()
        self.subject = f"events.eu.{type(event).__name__ if event else 'JobCompleted'}"
        self.metadata = SimpleNamespace(sequence=SimpleNamespace(stream=seq))
        self.acked, self.nacked = False, None

    async def ack(self) -> None:
        self.acked = True

    async def nak(self, delay=None) -> None:
        self.nacked = delay


class Picky(Pricing):
    """A tariff that cannot price one model: its outcomes can never settle."""

    def cost(self, model, usage):
        if model == "poison":
            raise ValueError("no price for poison")
        return super().cost(model, usage)


async def test_a_batch_with_an_outcome_that_cannot_settle_sets_it_aside_and_settles_the_rest(
        world):
    from bus.events import DeadLetter
    ledger, key = world.ledger, world.key
    for job in ("b1", "b2", "b3", "b4"):
        reserve(ledger, job)
    batch = [Delivered(1, completed(key, "b1")), Delivered(2, completed(key, "b2", model="poison")),
             Delivered(3, raw=b'{"type": "JobCompleted", "job_id": 7}'),
             Delivered(4, completed(key, "b3")), Delivered(5, completed(key, "b3")),
             Delivered(6, JobFailed(job_id="b4", zone="eu", code="x", message="y"))]
    dead = await world.js.subscribe("deadletter.>", ordered_consumer=True)
    picky = settlement.Settlement(ledger, Picky())
    await settlement.settle_batch(world.js, picky, world.leases, batch)

    assert [m.acked for m in batch] == [True] * 6 and not any(m.nacked for m in batch)
    statuses = [ledger.reservation(j).status for j in ("b1", "b2", "b3", "b4")]
    assert statuses == ["settled", "pending", "settled", "refunded"]  # the sweep refunds b2
    expected = Pricing().cost("m", USAGE)
    assert ledger.account("acme").spent == 2 * expected  # b3's repeat charged nothing
    assert ledger.account("op").rcp == 2 * USAGE.completion_tokens
    letters = [DeadLetter.model_validate_json((await dead.next_msg(timeout=5)).data)
               for _ in range(2)]
    assert {(d.consumer, d.stream_seq) for d in letters} == {("settlement", 2), ("settlement", 3)}


async def test_a_batch_hit_by_a_ledger_outage_nacks_every_message_and_changes_nothing(world):
    from eventsourcing.persistence import OperationalError
    ledger = world.ledger
    reserve(ledger, "o1")
    reserve(ledger, "o2")

    class Down:
        def resolve_many(self, commands):
            raise OperationalError("ledger database unavailable")

    down = settlement.Settlement(Down(), Pricing())
    batch = [Delivered(1, JobFailed(job_id=j, zone="eu", code="x", message="y"))
             for j in ("o1", "o2")]
    await settlement.settle_batch(world.js, down, world.leases, batch)
    assert [(m.acked, m.nacked) for m in batch] == [(False, settlement.RETRY_DELAY_S)] * 2
    assert ledger.reservation("o1").status == ledger.reservation("o2").status == "pending"
