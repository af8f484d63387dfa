"""Untrusted nodes: each worker connects as its own nkey user, which the server lets
pull its own queues and log its jobs' outcomes, and refuses everything else."""
from __future__ import annotations

import asyncio
import shutil
import time
from datetime import datetime, timedelta, timezone

import httpx
import nats
import openai
import pytest
from nats.js.api import ConsumerConfig, StreamConfig
from nats.js.errors import KeyNotFoundError

from bus import signing, subjects
from bus.content import put
from bus.credentials import CredentialStore, WorkerGrant
from bus.events import ChatMessage, JobCompleted, JobSubmitted, Sampling
from bus.publish import enqueue_job, event_subject, publish_event
from bus.streams import (cancels_bucket, claims_bucket, ensure_streams, ensure_work_consumer,
                         nodes_bucket, wait_for_streams)
from cli import natsserver
from cli.main import main
from tests.conftest import TINY_MODEL
from tests.e2e.test_up import ctrl_c, start_up
from tests.histories import signed_job
from tests.natsauth import AuthNatsServer, completions_of, connect_as, environ_of, start_with_seed
from tests.natsd import free_port
from tests.stack import Stack
from workers.pull_loop import Doorbell, JobSource

MODEL = "m"  # the model of tests.histories' signed jobs
REFUSED_WAIT_S = 0.5  # a refused request is dropped: the client waits this long for nothing


@pytest.fixture
async def network(tmp_path):
    """A server with the service user and workers eu-1 (node A) and na-1 (node B),
    its streams and buckets made by the service."""
    eu_key = signing.load_or_create_key(tmp_path / "node" / "eu-1.key")
    na_key = signing.load_or_create_key(tmp_path / "node" / "na-1.key")
    server = AuthNatsServer(tmp_path)
    server.store.ensure_service()
    server.store.grant_worker(WorkerGrant("eu-1", "eu", MODEL, signing.node_id(eu_key)))
    server.store.grant_worker(WorkerGrant("na-1", "na", MODEL, signing.node_id(na_key)))
    server.start()
    service, _ = await connect_as(server.url, tmp_path, server.store.service_seed)
    js = service.jetstream()
    await ensure_streams(js)
    await nodes_bucket(js)
    await claims_bucket(js, 600)
    await cancels_bucket(js, 600)
    worker, refusals = await connect_as(server.url, tmp_path, server.store.worker_seed("eu-1"))
    try:
        yield server, service, worker, refusals, eu_key, signing.node_id(na_key)
    finally:
        await worker.close()
        await service.close()
        server.stop()


async def refused(refusals, subject: str, request) -> None:
    """``request`` gets no answer, and the server says why."""
    await refused_all(refusals, {subject: request})


async def refused_all(refusals, requests: dict) -> None:
    """Each request (by the subject it is refused on) gets no answer, and the server
    says why; they wait out their timeouts together."""
    results = await asyncio.gather(*requests.values(), return_exceptions=True)
    for subject, result in zip(requests, results):
        assert isinstance(result, nats.errors.TimeoutError), (subject, result)
        await refusals.expect(subject)


def a_job(job_id: str, route: str = "zone") -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="alice", key_id="k", model=MODEL, kind="chat",
                        messages=(ChatMessage(role="user", content="hi"),),
                        sampling=Sampling(max_tokens=4), zone="eu", route=route,
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


async def test_worker_user_pulls_its_queues_and_speaks_only_through_the_gate(network):
    server, service, worker, refusals, key, other = network
    node = signing.node_id(key)
    sjs, wjs = service.jetstream(), worker.jetstream(timeout=REFUSED_WAIT_S)
    await wait_for_streams(wjs)
    sources = {}
    for queue in subjects.worker_queues("eu", node):
        consumer = await ensure_work_consumer(wjs, queue, MODEL, ack_wait_s=30)
        sources[queue] = await JobSource(worker, subjects.JOBS_STREAM, consumer).start()
    bell = await Doorbell(worker, [subjects.jobs(q, MODEL) for q in sources]).start()
    await enqueue_job(sjs, a_job("job-zone"))
    await enqueue_job(sjs, a_job("job-global", route="global"))
    await bell.wait(2)
    cancels, nodes = [await wjs.key_value(b) for b in (subjects.CANCELS_BUCKET,
                                                       subjects.NODES_BUCKET)]
    for queue, job_id in (("eu", "job-zone"), (subjects.GLOBAL, "job-global")):
        msg = (await sources[queue].take(1))[0]
        job = JobSubmitted.model_validate_json(msg.data)
        assert job.job_id == job_id and (job.account, job.key_id) == ("-", "-")  # anonymous
        with pytest.raises(KeyNotFoundError):
            await cancels.get(job_id)
        await msg.in_progress()
        await msg.ack()
    for kind in (subjects.NODE_LEASE, subjects.NODE_OUTCOME, subjects.NODE_ALIVE):
        await worker.publish(subjects.node_says(node, kind), b"{}")
    await worker.publish(subjects.node_live(node, "replies.api1"), b"{}")
    await nodes.put(node, b"{}")
    await worker.flush()
    assert refusals.seen == []
    assert (await sjs.stream_info(subjects.JOBS_STREAM)).state.messages == 0  # both acked

    # The log, the claims, the API's inboxes and other nodes' subjects are not its own.
    completed = next(e for _, e in signed_job(key, "job-zone", "alice", "op")
                     if isinstance(e, JobCompleted))
    claims = subjects.kv_key(subjects.CLAIMS_BUCKET, "job-zone")
    await refused_all(refusals, {
        event_subject(completed, "eu"): publish_event(wjs, completed, "eu",
                                                      timeout=REFUSED_WAIT_S),
        claims: worker.request(claims, b"{}", timeout=REFUSED_WAIT_S)})
    for subject in ("replies.api1", subjects.node_says(other, subjects.NODE_OUTCOME)):
        await worker.publish(subject, b"{}")
        await refusals.expect(subject)


async def test_worker_user_cannot_log_money_keys_submissions_or_queue_jobs(network):
    _, service, worker, refusals, key, _ = network
    wjs = worker.jetstream(timeout=REFUSED_WAIT_S)
    attempts = {event_subject(event, zone): publish_event(wjs, event, zone,
                                                          timeout=REFUSED_WAIT_S)
                for zone, event in signed_job(key, "job-1", "alice", "op", award_to=("op", "n"))
                if not isinstance(event, JobCompleted)}  # money, the submission
    attempts[subjects.jobs("eu", MODEL)] = enqueue_job(wjs, a_job("job-2"), timeout=REFUSED_WAIT_S)
    assert {s.split(".")[2] for s in attempts} >= {
        "CreditsDeposited", "CreditsReserved", "JobSubmitted", "CreditsDebited",
        "CreditsRefunded", "RCPAwarded", MODEL}
    await refused_all(refusals, attempts)
    log = await service.jetstream().stream_info(subjects.EVENTS_STREAM)
    assert log.state.messages == 0


async def test_worker_user_cannot_write_content_checks_or_a_copy_of_a_regions_data(network):
    """Content and check requests are written only by services: a node could
    otherwise plant a result in the content store, frame another node with a check
    request, or make a stream that copies a region's content elsewhere."""
    _, service, worker, refusals, _, _ = network
    wjs = worker.jetstream(timeout=REFUSED_WAIT_S)
    spy = "$JS.API.STREAM.CREATE.SPY"
    await refused_all(refusals, {
        subjects.content("eu", "job-x", "output"): put(wjs, "eu", "job-x", "output", b"{}"),
        subjects.check("eu"): wjs.publish(subjects.check("eu"), b"{}", timeout=REFUSED_WAIT_S),
        spy: worker.request(spy, b'{"name": "SPY", "mirror": {"name": "CONTENT"}}',
                            timeout=REFUSED_WAIT_S)})
    content = await service.jetstream().stream_info(subjects.CONTENT_STREAM)
    assert content.state.messages == 0


async def test_worker_user_cannot_take_another_zones_jobs(network):
    _, service, worker, refusals, _, _ = network
    await ensure_work_consumer(service.jetstream(), "na", MODEL, ack_wait_s=30)
    wjs = worker.jetstream(timeout=REFUSED_WAIT_S)
    pull = await JobSource(worker, subjects.JOBS_STREAM, subjects.consumer_name("na", MODEL)).start()
    await pull.take(1)
    await refusals.expect(subjects.pull_next(subjects.JOBS_STREAM, subjects.consumer_name("na", MODEL)))
    await refused(refusals, subjects.consumer_create(subjects.JOBS_STREAM, "work_na_m", "jobs.na.m"),
                  ensure_work_consumer(wjs, "na", MODEL, ack_wait_s=30))
    # Its own zone's shared consumer cannot be refiltered onto another zone either.
    refilter = ConsumerConfig(name="work_eu_m", durable_name="work_eu_m",
                              filter_subject=subjects.jobs("na", MODEL))
    await refused(refusals, subjects.consumer_create(subjects.JOBS_STREAM, "work_eu_m", "jobs.na.m"),
                  wjs.add_consumer(subjects.JOBS_STREAM, refilter))
    await worker.subscribe(subjects.jobs("na", MODEL))
    await refusals.expect(subjects.jobs("na", MODEL))
    await worker.subscribe("_INBOX.>")  # other clients' replies
    await refusals.expect("_INBOX.>")


async def test_worker_user_cannot_beat_for_another_node(network):
    _, service, worker, refusals, key, other = network
    nodes = await worker.jetstream(timeout=REFUSED_WAIT_S).key_value(subjects.NODES_BUCKET)
    await nodes.put(signing.node_id(key), b"{}")
    await refused(refusals, subjects.kv_key(subjects.NODES_BUCKET, other), nodes.put(other, b"{}"))
    await refused(refusals, subjects.kv_key(subjects.NODES_BUCKET, other), nodes.delete(other))
    seen = await service.jetstream().key_value(subjects.NODES_BUCKET)
    assert await seen.keys() == [signing.node_id(key)]


async def test_worker_user_cannot_create_alter_delete_or_purge_streams(network):
    _, service, worker, refusals, _, _ = network
    wjs = worker.jetstream(timeout=REFUSED_WAIT_S)
    sjs = service.jetstream()
    await enqueue_job(sjs, a_job("job-3"))
    events = (await sjs.stream_info(subjects.EVENTS_STREAM)).config
    attempts = {
        "$JS.API.STREAM.DELETE.EVENTS": wjs.delete_stream(subjects.EVENTS_STREAM),
        "$JS.API.STREAM.PURGE.JOBS": wjs.purge_stream(subjects.JOBS_STREAM),
        "$JS.API.STREAM.MSG.DELETE.JOBS": wjs.delete_msg(subjects.JOBS_STREAM, 1),
        "$JS.API.STREAM.CREATE.EVIL": wjs.add_stream(StreamConfig(name="EVIL",
                                                                   subjects=["evil.>"])),
        "$JS.API.STREAM.UPDATE.EVENTS": wjs.update_stream(
            StreamConfig.from_response({**events.as_dict(), "deny_purge": False})),
        "$JS.API.STREAM.DELETE.KV_claims": wjs.delete_key_value(subjects.CLAIMS_BUCKET),
    }
    await refused_all(refusals, attempts)
    assert (await sjs.stream_info(subjects.JOBS_STREAM)).state.messages == 1
    assert (await sjs.stream_info(subjects.EVENTS_STREAM)).config.deny_purge


async def test_unknown_users_are_turned_away(network):
    server, *_ = network
    with pytest.raises(Exception, match="[Aa]uthorization"):
        await nats.connect(server.url, allow_reconnect=False, max_reconnect_attempts=0)


async def test_nodes_add_lets_a_new_node_into_the_running_embedded_server(tmp_path, monkeypatch,
                                                                          capsys):
    store = CredentialStore(tmp_path)
    store.ensure_service()
    port = free_port()
    embedded = natsserver.start(tmp_path, port, store.write_config())  # as `inferbus up` does
    try:
        monkeypatch.setenv("INFERBUS_DATA_DIR", str(tmp_path))
        assert main(["nodes", "add", "--zone", "eu", "--model", MODEL, "--node-name", "late"]) == 0
        assert "reloaded" in capsys.readouterr().out
        deadline = time.monotonic() + 5
        while True:  # the server reloads its users a moment after the signal
            try:
                late, refusals = await connect_as(f"nats://127.0.0.1:{port}", tmp_path,
                                                  store.worker_seed("late"))
                break
            except Exception:  # noqa: BLE001 - not let in yet
                assert time.monotonic() < deadline, "the new node was never let in"
                await asyncio.sleep(0.1)
        await late.close()
        assert refusals.seen == []
    finally:
        embedded.terminate()
        embedded.wait(timeout=10)


@pytest.fixture
def auth_stack(tmp_path, models_dir):
    """API and projector on the data dir's service user; no worker yet."""
    shutil.copytree(models_dir, tmp_path / "models")
    server = AuthNatsServer(tmp_path)
    stack = Stack(tmp_path, server.url)
    added = stack.cli("nodes", "add", "--zone", "eu", "--model", TINY_MODEL,
                      "--node-name", "worker-eu")
    assert "worker-eu.seed" in added.stdout, added.stdout
    server.start()
    try:
        stack.start_projector()
        stack.start_api()
        yield stack
    finally:
        stack.stop()
        server.stop()


def test_a_worker_on_its_own_user_serves_a_chat_completion_that_is_settled(auth_stack):
    s = auth_stack
    seed = s.data_dir / "nats-auth" / "workers" / "worker-eu.seed"
    start_with_seed(s, "worker-eu", seed, "worker", "--zone", "eu", "--model", TINY_MODEL,
                    "--node-name", "worker-eu")
    key = s.new_key("dora", "100")
    s.wait_for_model(key, TINY_MODEL)
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key=key, max_retries=0, timeout=60)
    reply = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "hello"}], extra_headers={"X-Inferbus-Zone": "eu"})
    assert reply.parse().choices[0].message.content
    job_id = reply.headers["x-inferbus-job"]
    node = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "worker-eu.key"))
    done = completions_of(s.nats_url, s.data_dir, job_id)
    assert [e.node_id for e in done] == [node]
    deadline = time.monotonic() + 20
    while float(_account(s, key)["spent"]) == 0:  # settlement runs on the service user
        assert time.monotonic() < deadline, _account(s, key)
        time.sleep(0.2)
    assert "permissions violation" not in s.log("worker-eu").lower()
    assert environ_of(s.procs["worker-eu"].pid)["INFERBUS_NATS_NKEY_SEED"] == str(seed)


def test_up_runs_nats_with_a_user_per_worker(tmp_path, models_dir):
    data_dir = tmp_path / "inferbus"
    shutil.copytree(models_dir, data_dir / "models")
    proc, lines = start_up(data_dir, free_port())
    try:
        auth = data_dir / "nats-auth"
        assert "authorization" in (auth / "auth.conf").read_text()
        seeds = sorted(p.name for p in (auth / "workers").glob("*.seed"))
        # The chat workers' own users, and the embeddings worker's beside them.
        assert {f"eu-{TINY_MODEL}.seed", f"na-{TINY_MODEL}.seed"} <= set(seeds)
        assert len(seeds) == 3
        url = (data_dir / "nats.url").read_text().strip()
        with pytest.raises(Exception, match="[Aa]uthorization"):
            asyncio.run(nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0))
        workers = [p for p in _children(proc.pid) if b"worker" in _cmdline(p)]
        assert sorted(environ_of(p)["INFERBUS_NATS_NKEY_SEED"] for p in workers) == \
            sorted(str(auth / "workers" / s) for s in seeds)
        assert any(line.startswith("curl ") for line in lines)
    finally:
        ctrl_c(proc)


def _account(s: Stack, key: str) -> dict:
    return httpx.get(f"{s.base_url}/v1/account", headers={"Authorization": f"Bearer {key}"}).json()


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]
