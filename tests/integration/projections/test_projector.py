"""The job-status projection against a real nats-server and real stores.

Every test runs on SQLite and, when ``INFERBUS_TEST_DATABASE_URL`` points at a
PostgreSQL database, on PostgreSQL too (each test in its own schema).
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from bus.events import (ApiKeyIssued, JobCancelled, JobCompleted, JobExpired, JobFailed,
                        JobStarted, Usage, output_hash)
from projections.projector import apply_batch
from projections.rebuild import rebuild
from projections.replay import Delivery
from projections.store import Store
from tests import readmodels as views
from tests.integration.projecting import publish, running, submitted

pytestmark = pytest.mark.asyncio

PG_URL_ENV = "INFERBUS_TEST_DATABASE_URL"


@pytest.fixture
def nats_server(fresh_nats) -> str:
    """Each test counts stream contents, so each gets a server of its own."""
    return fresh_nats.url


def started(job_id: str, attempt: int = 1, node: str = "node-a") -> JobStarted:
    return JobStarted(job_id=job_id, node_id=node, zone="us", attempt=attempt)


def completed(job_id: str, text: str = "hi there") -> JobCompleted:
    return JobCompleted(
        job_id=job_id, model="m", node_id="node-a", operator="op", zone="us", attempt=1, text=text,
        finish_reason="stop", usage=Usage(prompt_tokens=5, completion_tokens=2),
        input_hash="in", output_hash=output_hash(text), signature="sig")


async def test_job_lifecycle_is_projected(store: Store, js) -> None:
    async with running(store, js) as projector:
        await projector.wait_for(await publish(js, submitted("j1")))
        queued = views.get_job(store, "j1")
        assert queued is not None and queued.status == "queued" and queued.attempt == 0
        assert (queued.account, queued.key_id, queued.model, queued.kind, queued.zone,
                queued.route) == ("acct-1", "key-1", "tiny", "chat", "eu", "zone")

        await projector.wait_for(await publish(js, started("j1")))
        assert views.get_job(store, "j1").status == "running"

        last = await publish(js, completed("j1", text="the answer"))
        await projector.wait_for(last)

    job = views.get_job(store, "j1")
    assert job.status == "completed" and job.terminal
    assert (job.text, job.finish_reason, job.prompt_tokens, job.completion_tokens) == (
        "the answer", "stop", 5, 2)
    assert (job.zone, job.served_zone, job.node_id, job.attempt) == ("eu", "us", "node-a", 1)
    assert job.error_code is None and job.error_message is None
    for stamp in (job.created_at, job.started_at, job.finished_at):
        assert stamp is not None and stamp.tzinfo is not None
    assert job.created_at <= job.started_at <= job.finished_at
    assert views.get_job(store, "missing") is None
    assert views.position(store, "jobs") == last


async def test_terminal_events_set_their_status(store: Store, js) -> None:
    last = await publish(
        js, submitted("f"), started("f"),
        JobFailed(job_id="f", node_id="node-a", zone="eu", code="model_error", message="boom"),
        submitted("c"), JobCancelled(job_id="c", zone="eu", reason="client went away"),
        submitted("x"), JobExpired(job_id="x", zone="eu"))
    async with running(store, js) as projector:
        await projector.wait_for(last)

    failed, cancelled, expired = (views.get_job(store, j) for j in ("f", "c", "x"))
    assert (failed.status, failed.error_code, failed.error_message) == ("failed", "model_error", "boom")
    assert failed.node_id == "node-a" and failed.finished_at is not None
    assert (cancelled.status, cancelled.error_message) == ("cancelled", "client went away")
    assert expired.status == "expired" and expired.finished_at is not None


async def test_late_started_does_not_reopen_completed_job(store: Store, js) -> None:
    done = await publish(js, submitted("j1"), started("j1"), completed("j1", text="final"))
    async with running(store, js) as projector:
        await projector.wait_for(done)
        before = views.get_job(store, "j1")
        # A retry's start and a stray failure, both logged after completion.
        late = await publish(js, started("j1", attempt=2, node="node-b"),
                             JobFailed(job_id="j1", zone="eu", code="timeout", message="late"))
        await projector.wait_for(late)

    assert views.get_job(store, "j1") == before
    assert before.status == "completed" and before.attempt == 1 and before.node_id == "node-a"


async def test_event_for_unseen_job_still_creates_row(store: Store, js) -> None:
    seq = await publish(js, completed("orphan", text="ok"))
    async with running(store, js) as projector:
        await projector.wait_for(seq)
        orphan = views.get_job(store, "orphan")
        assert (orphan.status, orphan.text, orphan.zone, orphan.served_zone) == (
            "completed", "ok", "eu", "us")
        assert orphan.account is None and orphan.created_at is None
        # The submission, logged late, fills in what was missing, status stays.
        await projector.wait_for(await publish(js, submitted("orphan")))

    filled = views.get_job(store, "orphan")
    assert (filled.status, filled.account, filled.text) == ("completed", "acct-1", "ok")
    assert filled.created_at is not None


async def test_projector_resumes_from_stored_position_without_reapplying(stores, js) -> None:
    first_store = stores()
    seq = await publish(js, submitted("a"), submitted("b"), started("a"))
    async with running(first_store, js) as first:
        await first.wait_for(seq)
    assert (first.applied, first.stale) == (3, 0)
    job_a = views.get_job(first_store, "a")
    first_store.close()

    # A restarted process: the same database, a new projector.
    store = stores()
    assert views.position(store, "jobs") == seq
    async with running(store, js) as second:
        last = await publish(js, completed("b"))
        await second.wait_for(last)
    # It consumed from position + 1: nothing before it was redelivered.
    assert (second.applied, second.stale, second.position) == (1, 0, last)
    assert views.get_job(store, "a") == job_a
    assert views.get_job(store, "b").status == "completed"
    assert len(views.list_jobs(store)) == 2


async def test_deliveries_at_or_below_the_position_are_skipped(store: Store) -> None:
    data = submitted("j1").model_dump_json().encode()
    first = apply_batch(store, [Delivery(7, "events.eu.JobSubmitted", data)])
    assert (first.position, first.applied, first.stale) == (7, 1, 0)

    # Redelivered (e.g. a consumer reset), even with different content: ignored.
    late_start = started("j1").model_dump_json().encode()  # would set "running"
    again = apply_batch(store, [Delivery(6, "events.eu.JobStarted", late_start),
                                Delivery(7, "events.eu.JobStarted", late_start)])
    assert (again.position, again.applied, again.stale) == (7, 0, 2)
    assert views.get_job(store, "j1").status == "queued"
    assert views.position(store, "jobs") == 7


async def test_malformed_event_is_skipped_and_consumer_continues(store: Store, js, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="inferbus.projections")
    bad = (await js.publish("events.eu.JobSubmitted", b"not json")).seq
    wrong_shape = (await js.publish("events.eu.Mystery", b'{"type": "Mystery"}')).seq
    last = await publish(js, submitted("j1"))
    async with running(store, js) as projector:
        await projector.wait_for(last)
        assert views.get_job(store, "j1").status == "queued"
        # Still consuming after the bad ones.
        await projector.wait_for(await publish(js, started("j1")))

    assert views.get_job(store, "j1").status == "running"
    assert (projector.malformed, projector.applied) == (2, 2)
    for seq in (bad, wrong_shape):
        assert f"malformed event at stream sequence {seq} " in caplog.text


async def test_rebuild_from_first_event_equals_live_model(stores, js) -> None:
    live = stores("live")
    await js.publish("events.eu.JobSubmitted", b"{broken")
    await publish(js, ApiKeyIssued(key_hash="ab" * 32, account="acct-1"), zone="global")
    for i in range(30):
        job = f"job-{i:02d}"
        await publish(js, submitted(job), started(job))
        if i % 3 == 0:
            await publish(js, completed(job, text=f"answer {i}"))
        elif i % 3 == 1:
            await publish(js, JobCancelled(job_id=job, zone="eu", reason="stop"), started(job, 2))
    last = await publish(js, JobExpired(job_id="job-02", zone="eu"))
    async with running(live, js) as projector:
        await projector.wait_for(last)

    rebuilt = stores("rebuilt")
    assert await rebuild(rebuilt, js, timeout=30) == last
    assert views.list_jobs(rebuilt) == views.list_jobs(live)
    assert len(views.list_jobs(live)) == 30
    assert views.position(rebuilt, "jobs") == views.position(live, "jobs") == last

    with pytest.raises(ValueError, match="empty store"):
        await rebuild(live, js)


async def test_a_job_s_events_milliseconds_apart_are_applied_in_one_batch(
        store: Store, js, monkeypatch) -> None:
    from projections import projector as module
    sizes: list[int] = []
    real = module.apply_batch

    def counted(store_, deliveries, *args, **kwargs):
        sizes.append(len(deliveries))
        return real(store_, deliveries, *args, **kwargs)
    monkeypatch.setattr(module, "apply_batch", counted)
    monkeypatch.setattr(module, "LINGER_S", 0.5)  # ample on a loaded machine: the mechanism
    async with running(store, js) as projector:
        await projector.wait_for(await publish(js, submitted("j0")))  # caught up, then idle
        sizes.clear()
        last = await publish(js, submitted("j1"), started("j1"), completed("j1"))
        await projector.wait_for(last)
    # Each publish awaits its ack, a millisecond or so apart: a projector that took
    # what had arrived alone would have committed three transactions.
    assert sizes == [3]
    assert views.get_job(store, "j1").status == "completed"


async def test_a_key_issued_while_a_job_s_events_linger_is_applied_at_once(
        store: Store, js, monkeypatch) -> None:
    from projections import projector as module
    monkeypatch.setattr(module, "LINGER_S", 30.0)  # waited out, it would fail the wait below
    async with running(store, js) as projector:
        await publish(js, submitted("j1"))  # a job's event: the projector lingers on it
        await asyncio.sleep(0.2)
        seq = await publish(js, ApiKeyIssued(key_hash="cd" * 32, account="acct-1"),
                            zone="global")
        # A caller that made a key lists its keys next: the read model has it now,
        # and the job's event with it.
        await projector.wait_for(seq, timeout=5)
    assert views.get_job(store, "j1") is not None
