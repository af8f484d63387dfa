"""Nodes are adversaries: a granted node ("mallory", operator ``mal``) tries every
attack it can with its own NATS credentials against a running network whose
honest node serves jobs. Each attempt is refused by the server or the gate,
costs nothing, pays nothing, and the network goes on: the next job completes
and settles, and the audit passes."""
from __future__ import annotations

import asyncio
import shutil
import sys
import time

import httpx
import nats
import pytest

from bus import signing, subjects
from bus.events import JobExpired, NodeStrike, output_hash
from bus.node_messages import Completed, LeaseAnswer, LeaseAsk, OutcomeAnswer
from bus.publish import publish_event
from tests.eventlog import read_log
from tests.natsauth import AuthNatsServer, connect_as, start_with_seed
from tests.stack import Stack
from workers.echo import write_echo_model

MODEL = "echo"
WAIT_S = 0.5


@pytest.fixture
def network(tmp_path, models_dir):
    shutil.copytree(models_dir, tmp_path / "models")
    write_echo_model(tmp_path / "models" / MODEL)
    server = AuthNatsServer(tmp_path)
    s = Stack(tmp_path, server.url)
    for name, operator, tier in (("worker-eu", "honest", 2), ("mallory", "mal", 1)):
        s.cli("nodes", "add", "--zone", "eu", "--model", MODEL, "--node-name", name,
              "--operator", operator, "--tier", str(tier), "--verified")  # no probe jobs
    server.start()
    try:
        s.start_projector()
        s.start_api()
        start_with_seed(s, "worker-eu", s.data_dir / "nats-auth/workers/worker-eu.seed",
                        "worker", "--zone", "eu", "--model", MODEL, "--node-name", "worker-eu")
        s.key = s.new_key("carol", "100")
        s.wait_for_model(s.key, MODEL)
        yield s, server
    finally:
        s.stop()
        server.stop()


def chat(s, words: str) -> httpx.Response:
    return httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {s.key}"},
                      json={"model": MODEL, "max_tokens": 4,
                            "messages": [{"role": "user", "content": words}]})


def account(s) -> dict:
    return httpx.get(f"{s.base_url}/v1/account",
                     headers={"Authorization": f"Bearer {s.key}"}, timeout=10).json()


async def attack(s, server) -> dict:
    """Every attack mallory can mount; returns what each got."""
    nc, refusals = await connect_as(server.url, s.data_dir,
                                    s.data_dir / "nats-auth/workers/mallory.seed")
    js = nc.jetstream(timeout=WAIT_S)
    me = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "mallory.key"))
    honest = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "worker-eu.key"))
    victim = chat(s, "a paid job").headers["x-inferbus-job"]
    got = {}
    # The log and the claims are the network's: expiring, failing or sealing a job.
    for name, attempt in (
            ("expire", publish_event(js, JobExpired(job_id=victim, zone="eu"), "eu",
                                     timeout=WAIT_S)),
            ("seal", nc.request(subjects.kv_key(subjects.CLAIMS_BUCKET, victim), b"{}",
                                timeout=WAIT_S)),
            # A forged spot-check request could frame an honest node.
            ("check", js.publish(subjects.check("eu"), b"{}", timeout=WAIT_S)),
            # Its own grant, rewritten: verified, tier 6, no failed checks.
            ("promote", nc.request(subjects.kv_key(subjects.GRANTS_BUCKET, me),
                                   b'{"status": "verified", "tier": 6}', timeout=WAIT_S)),
            ("beat-as-honest", nc.request(subjects.kv_key(subjects.NODES_BUCKET, honest), b"{}",
                                          timeout=WAIT_S))):
        try:
            await attempt
            got[name] = "accepted"
        except Exception as exc:  # noqa: BLE001
            got[name] = type(exc).__name__
    # Speaking as another node, or answering another tenant's caller.
    for subject in (subjects.node_says(honest, subjects.NODE_OUTCOME), "replies.anything"):
        await nc.publish(subject, b"{}")
    await nc.flush()
    await asyncio.sleep(WAIT_S)
    got["refused"] = list(refusals.seen)

    async def ask(kind: str, body: bytes):
        reply = await nc.request(subjects.node_says(me, kind), body, timeout=3)
        return reply.data
    # A lease for a job it was never delivered; a poison attempt number.
    forged = LeaseAsk(op="acquire", job_id=victim, attempt=1, message=1)
    got["lease"] = LeaseAnswer.model_validate_json(
        await ask(subjects.NODE_LEASE, forged.model_dump_json().encode())).action
    got["poison"] = LeaseAnswer.model_validate_json(await ask(
        subjects.NODE_LEASE, forged.model_dump_json().replace('"attempt":1',
                                                              '"attempt":9223372036854775808')
        .encode())).action
    # A self-signed completion of a job it does not hold, and one claiming usage.
    key = signing.load_or_create_key(s.data_dir / "node" / "mallory.key")
    sig = signing.sign_output(key, victim, 1, MODEL, "x", output_hash("mine"))
    fake = Completed(job_id=victim, attempt=1, text="mine", finish_reason="stop", signature=sig)
    got["complete"] = OutcomeAnswer.model_validate_json(
        await ask(subjects.NODE_OUTCOME, fake.model_dump_json().encode())).logged
    inflated = fake.model_dump_json()[:-1] + ', "usage": {"completion_tokens": 1000000000}}'
    got["inflate"] = OutcomeAnswer.model_validate_json(
        await ask(subjects.NODE_OUTCOME, inflated.encode())).logged
    # A resume request for a job whose caller waits: only its lease holder is answered.
    try:
        await nc.request(subjects.node_live(me, "replies.x"), b'{"kind": "resume", "job_id": "'
                         + victim.encode() + b'", "attempt": 1}', timeout=WAIT_S)
        got["resume"] = "answered"
    except Exception as exc:  # noqa: BLE001
        got["resume"] = type(exc).__name__
    got["strikes"] = [e for _, e in await read_log((await nats.connect(
        server.url, nkeys_seed=str(s.data_dir / "nats-auth/service.seed"))).jetstream())
        if isinstance(e, NodeStrike)]
    await nc.close()
    return got


def test_a_granted_node_cannot_steal_void_or_stall_anything(network):
    s, server = network
    got = asyncio.run(attack(s, server))
    assert got["expire"] == got["seal"] == got["beat-as-honest"] == got["check"] == \
        got["promote"] == "TimeoutError"
    assert len(got["refused"]) >= 7  # the server said no to each, by name
    assert got["lease"] == got["poison"] == "stop"
    assert got["complete"] is False and got["inflate"] is False
    assert got["resume"] in ("TimeoutError", "NoRespondersError")
    me = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "mallory.key"))
    assert {e.node_id for e in got["strikes"]} == {me}

    # The network goes on: a job completes and settles; mallory earned nothing.
    started = time.monotonic()
    before = account(s)
    reply = chat(s, "after the attack")
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    while account(s)["spent"] == before["spent"]:
        assert time.monotonic() - started < 10, account(s)
        time.sleep(0.2)
    audit = s.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    status = httpx.get(f"{s.base_url}/status.json", timeout=10).json()
    assert "mal" not in str(status.get("rcp", ""))


async def hold_and_forge(s, server) -> dict:
    """Mallory, holding a real lease on a job sent to its own queue, reports a result
    it did not sign, renews a lease that is not its own, and boasts in its heartbeat."""
    from datetime import datetime, timedelta, timezone

    from bus.events import ChatMessage, JobSubmitted, Sampling
    from bus.node_record import ModelInfo, NodeRecord
    from bus.publish import enqueue_job
    from bus.streams import ensure_work_consumer
    from workers.gate_client import GateClient
    from workers.pull_loop import JobSource
    me = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "mallory.key"))
    honest = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "worker-eu.key"))
    service = await nats.connect(server.url, nkeys_seed=str(s.data_dir / "nats-auth/service.seed"))
    nc, refusals = await connect_as(server.url, s.data_dir,
                                    s.data_dir / "nats-auth/workers/mallory.seed")
    got = {}
    try:
        job = JobSubmitted(job_id="mine-now", account="carol", key_id="k", model=MODEL,
                           kind="chat", messages=(ChatMessage(role="user", content="x y z"),),
                           sampling=Sampling(max_tokens=3), zone="eu", route="zone",
                           deadline=datetime.now(timezone.utc) + timedelta(minutes=5),
                           queue=subjects.node_queue(me, "eu"), then=(subjects.GLOBAL,))
        await enqueue_job(service.jetstream(), job)
        js = nc.jetstream(timeout=2)
        consumer = await ensure_work_consumer(js, subjects.node_queue(me, "eu"), MODEL, 30)
        source = await JobSource(nc, subjects.JOBS_STREAM, consumer).start()
        (msg,) = await source.take(1)
        gate = GateClient(nc, me)
        got["lease"] = (await gate.lease("acquire", msg, job.job_id)).action
        key = signing.load_or_create_key(s.data_dir / "node" / "worker-eu.key")  # not its own
        sig = signing.sign_output(key, job.job_id, 1, MODEL, job.input_hash(), output_hash("x"))
        got["forged"] = (await gate.report(Completed(
            job_id=job.job_id, attempt=1, text="x", finish_reason="stop", signature=sig))).logged
        other = LeaseAsk(op="renew", job_id="someone-elses", attempt=1, message=1)
        reply = await nc.request(subjects.node_says(me, subjects.NODE_LEASE),
                                 other.model_dump_json().encode(), timeout=3)
        got["renew"] = LeaseAnswer.model_validate_json(reply.data).action
        boast = NodeRecord(node_id=honest, zone="na", operator="mal", tier=6,
                           models=(ModelInfo(name=MODEL, context_length=8192),))
        await nc.request(subjects.kv_key(subjects.NODES_BUCKET, me),
                         boast.model_dump_json().encode(), timeout=3)
        got["refused"] = list(refusals.seen)
        # The job it was given moves on: the honest node completes it.
        got["done_by"] = None
        for _ in range(100):
            done = [e for _, e in await read_log(service.jetstream())
                    if getattr(e, "job_id", None) == job.job_id and e.type == "JobCompleted"]
            if done:
                got["done_by"] = done[0].node_id
                break
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
        await service.close()
    got["me"], got["honest"] = me, honest
    return got


def test_a_node_holding_a_job_cannot_forge_its_result_or_boast_its_way_up(network):
    s, server = network
    got = asyncio.run(hold_and_forge(s, server))
    assert got["lease"] == "run" and got["forged"] is False and got["renew"] == "stop"
    assert got["refused"] == [] and got["done_by"] == got["honest"]
    time.sleep(1.5)  # the boast is the latest heartbeat the API has seen
    tier6 = httpx.get(f"{s.base_url}/v1/network/candidates", params={"model": MODEL, "tier": "6"},
                      headers={"Authorization": f"Bearer {s.key}"}, timeout=10).json()["data"]
    assert tier6 == []  # the grant says tier 1, whatever it reports


def test_a_suspended_node_is_out_of_the_network_within_a_second(network):
    """``nodes suspend`` on a running network: the gate refuses the node at once (it
    follows the grants bucket), and a server that reloads its users file closes the
    node's connection (``inferbus up`` reloads its own; here the test is the admin)."""
    s, server = network

    async def suspend_and_watch() -> tuple[float, float, str]:
        nc, _ = await connect_as(server.url, s.data_dir,
                                 s.data_dir / "nats-auth/workers/mallory.seed")
        me = signing.node_id(signing.load_or_create_key(s.data_dir / "node" / "mallory.key"))
        ask = LeaseAsk(op="acquire", job_id="any", attempt=1, message=1).model_dump_json()

        async def refused_by_gate() -> bool:
            reply = await nc.request(subjects.node_says(me, subjects.NODE_LEASE),
                                     ask.encode(), timeout=2)
            return "no active grant" in LeaseAnswer.model_validate_json(reply.data).reason
        assert not await refused_by_gate()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "nodes", "suspend", "mallory", env=s.env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await proc.communicate())[0].decode()
        done = time.monotonic()
        while not await refused_by_gate():
            assert time.monotonic() - done < 5
        by_gate = time.monotonic() - done
        server.reload()
        reloaded = time.monotonic()
        while nc.is_connected and time.monotonic() - reloaded < 5:
            await asyncio.sleep(0.02)
        by_server = time.monotonic() - reloaded
        await nc.close()
        return by_gate, by_server, out

    by_gate, by_server, out = asyncio.run(suspend_and_watch())
    assert "suspended" in out, out
    assert by_gate < 1.0 and by_server < 1.0, (by_gate, by_server)
    listed = [line for line in s.cli("nodes", "list").stdout.splitlines()
              if line.startswith("mallory")]
    assert listed and " suspended " in listed[0]
    assert chat(s, "still served").status_code == 200
