"""The gate and published models: a node gets a model's manifest and chunks only
within its grant, is offered a model's jobs only while it reports a published
root of it, and a result signed for other weights is refused."""
from __future__ import annotations

import asyncio

import pytest

from bus import signing, subjects
from bus.config import Settings
from bus.events import JobCompleted, NodeStrike, output_hash
from bus.model_cache import ChunkRefused
from bus.model_events import ModelRetired
from bus.model_fetch import ModelAnswer, ModelAsk
from bus.model_manifest import build_manifest
from bus.model_store import ModelStore
from bus.node_messages import Completed
from bus.node_record import ModelInfo, NodeRecord
from bus.streams import nodes_bucket
from cli import model_admin
from tests.integration.gate.conftest import MODEL, a_job
from tests.integration.gate.test_node_requests import events_of
from workers.echo import write_echo_model
from workers.model_source import ModelUnavailable, obtain


@pytest.fixture
async def published(gate_world, fresh_nats, tmp_path):
    """The echo model published as ``MODEL``; its root."""
    settings = Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "admin")
    write_echo_model(tmp_path / "echo-dir")
    pushed = await model_admin.push(settings, tmp_path / "echo-dir", MODEL, None)
    await asyncio.sleep(0.2)  # the gate follows the catalog
    return pushed.root


async def heartbeat(world, node: str, root: str | None) -> None:
    kv = await nodes_bucket(world.js)
    record = NodeRecord(node_id=world.ids[node], zone="eu", operator="op",
                        models=(ModelInfo(name=MODEL, context_length=512, root=root),))
    await kv.put(world.ids[node], record.model_dump_json().encode())
    await asyncio.sleep(0.2)


async def ask(world, node: str, request: ModelAsk) -> ModelAnswer:
    reply = await world.nc.request(subjects.node_says(world.ids[node], subjects.NODE_MODEL),
                                   request.model_dump_json().encode(), timeout=5)
    return ModelAnswer.model_validate_json(reply.data)


async def test_a_node_reporting_other_weights_is_offered_no_jobs(gate_world, published):
    w = gate_world
    await heartbeat(w, "A", "0" * 64)
    await w.queue(a_job("m1"))
    msg = await w.take("eu")
    lease = await w.gate["A"].lease("acquire", msg, "m1")
    assert lease.action == "wait" and "not a published one" in lease.reason
    await heartbeat(w, "A", published)
    assert (await w.gate["A"].lease("acquire", msg, "m1")).action == "run"


async def report_run_with(world, job_id: str, published: str, root: str):
    """Node A, reporting ``published``, leases job ``job_id`` and reports "one two"
    signed as run with ``root``; the gate's answer."""
    await heartbeat(world, "A", published)
    job = a_job(job_id)
    await world.queue(job)
    await world.gate["A"].lease("acquire", await world.take("eu"), job_id)
    sig = signing.sign_output(world.keys["A"], job_id, 1, MODEL, job.input_hash(),
                              output_hash("one two"), root)
    return await world.gate["A"].report(Completed(job_id=job_id, attempt=1, text="one two",
                                                  finish_reason="stop", signature=sig,
                                                  model_root=root))


async def test_a_result_signed_for_another_root_is_refused(gate_world, published):
    answer = await report_run_with(gate_world, "m2", published, "1" * 64)
    assert not answer.logged and "not a published one" in answer.reason
    assert await events_of(gate_world, NodeStrike)


async def test_a_result_names_the_root_it_was_signed_for(gate_world, published):
    answer = await report_run_with(gate_world, "m3", published, published)
    assert answer.logged
    (done,) = await events_of(gate_world, JobCompleted, "m3")
    assert done.model_root == published and signing.verify_result(done)


async def test_a_model_outside_the_grant_is_refused_with_a_strike(gate_world, published):
    w = gate_world
    answer = await ask(w, "A", ModelAsk(op="manifest", name="not-granted"))
    assert not answer.ok and "does not list model not-granted" in answer.reason
    assert await events_of(w, NodeStrike)


async def test_chunks_outside_the_root_are_refused(gate_world, published):
    answer = await ask(gate_world, "A", ModelAsk(op="fetch", name=MODEL, root=published,
                                                 chunks=("ab" * 32,)))
    assert not answer.ok and "are not echo's" in answer.reason


async def test_a_node_fetches_a_granted_model_through_the_gate(gate_world, published, tmp_path,
                                                               fresh_nats):
    settings = Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "node-a")
    got = await obtain(settings, gate_world.nc, gate_world.ids["A"], MODEL)
    assert got.root == published and build_manifest(got.path).root() == published
    assert got.path.parent == settings.models_dir / "roots"


async def test_a_corrupt_stored_chunk_stops_the_fetch_and_names_the_chunk(
        gate_world, published, tmp_path, fresh_nats):
    store = ModelStore(gate_world.js, Settings().layout())
    manifest = await store.manifest(published)
    victim = max((c for f in manifest.files for c in f.chunks), key=lambda c: c.size)
    await store.put_chunk(store.layout.home, victim.sha256, b"x" * victim.size)
    settings = Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "node-b")
    with pytest.raises(ChunkRefused, match=victim.sha256):
        await obtain(settings, gate_world.nc, gate_world.ids["B"], MODEL)


async def test_an_unpublished_name_without_a_local_copy_is_unavailable(gate_world, tmp_path,
                                                                       fresh_nats):
    settings = Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "node-c")
    with pytest.raises(ModelUnavailable, match="not published"):
        await obtain(settings, gate_world.nc, gate_world.ids["C"], MODEL)


@pytest.fixture
def quick_drain(monkeypatch):
    monkeypatch.setenv("INFERBUS_MODEL_DRAIN_S", "0.5")


async def test_a_replaced_version_is_retired_once_no_live_node_serves_it(
        quick_drain, gate_world, fresh_nats, tmp_path):
    w = gate_world
    settings = Settings(nats_url=fresh_nats.url, data_dir=tmp_path / "admin")
    old = (await model_admin.push(settings, write_echo_model(tmp_path / "v1"), MODEL, None)).root
    await heartbeat(w, "A", old)
    stop = asyncio.Event()

    async def pinging() -> None:  # node A lives, serving the old root
        while not stop.is_set():
            await w.nc.publish(subjects.node_says(w.ids["A"], subjects.NODE_ALIVE), b"")
            await asyncio.sleep(0.1)
    pings = asyncio.create_task(pinging())
    new = (await model_admin.push(settings, write_echo_model(tmp_path / "v2", 1024), MODEL,
                                  None)).root
    store = ModelStore(w.js, Settings().layout())
    await asyncio.sleep(2.0)
    entry, _ = await store.entry(MODEL)
    assert entry.version(old).state == "draining"  # still served: still routed
    stop.set()
    await pings
    for _ in range(40):
        entry, _ = await store.entry(MODEL)
        if entry.version(old).state == "retired":
            break
        await asyncio.sleep(0.1)
    assert entry.version(old).state == "retired" and entry.current().root == new
    (retired,) = await events_of(w, ModelRetired)
    assert (retired.root, retired.reason) == (old, "drained")


async def test_a_node_asking_for_plans_in_a_flood_is_told_to_try_again(gate_world, published):
    w = gate_world
    manifest = (await ask(w, "A", ModelAsk(op="manifest", name=MODEL))).manifest
    chunks = tuple(manifest.chunk_set())
    fetch = ModelAsk(op="fetch", name=MODEL, root=published, chunks=chunks)
    answers = [await ask(w, "A", fetch) for _ in range(5)]
    assert answers[0].ok and all(a.reason == "try again" for a in answers[1:])
    await asyncio.sleep(0.3)
    assert (await ask(w, "A", fetch)).ok
    assert (await ask(w, "B", fetch)).ok  # another node's plans are its own
