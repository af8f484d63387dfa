"""The expiry sweep on a real nats-server, ledger and read model: a reservation
no outcome resolved is refunded past its deadline, and one whose outcome is
logged is left to its (late) settlement."""
import asyncio
from datetime import datetime, timedelta, timezone

from bus import subjects
from bus.partitions import job_slot
from bus.publish import publish_event
from ledger import expiry, relay
from projections.readmodels import open_store_url
from tests import readmodels as views
from tests.integration.ledger.settling import completed, resolved
from tests.integration.projecting import project


async def test_reservation_held_past_its_deadline_is_swept_and_refunded(world, tmp_path):
    js, ledger = world.js, world.ledger
    ledger.deposit("acme", 10_000_000)
    ledger.reserve("acme", "stale", 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) - timedelta(seconds=1))
    await relay.Relay(ledger, js).once(0)  # the reservation reaches the read model
    store = open_store_url(tmp_path / "readmodels.sqlite3")
    await project(store, js, (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(expiry.sweep_expired(store, ledger, js, 0.0, stop))
    view = await resolved(ledger, "stale")
    stop.set()
    await sweeper
    store.close()
    assert (view.status, view.refunded) == ("refunded", 1_000_000)
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter="events.eu.JobExpired.*")
    # logged under the job's billing slot, where its shard's settlement reads it
    assert info.state.subjects == {f"events.eu.JobExpired.j{job_slot('stale'):x}": 1}


async def test_sweep_leaves_a_completed_job_to_its_late_settlement(world, tmp_path):
    js, ledger = world.js, world.ledger
    ledger.deposit("acme", 10_000_000)
    ledger.reserve("acme", "late", 1_000_000, key_id="k", zone="eu",
                   deadline=datetime.now(timezone.utc) - timedelta(seconds=5))
    await relay.Relay(ledger, js).once(0)
    await publish_event(js, completed(world.key, "late"), "eu")  # no seal: stays pending
    store = open_store_url(tmp_path / "readmodels.sqlite3")
    await project(store, js, (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
    now = datetime.now(timezone.utc)
    assert views.expired_reservations(store, now, 1.0, 60.0) == []
    assert views.expired_reservations(store, now + timedelta(seconds=60), 1.0, 60.0) == ["late"]
    store.close()
