"""Nodes are adversaries: a granted node ("mallory", operator ``mal``) tries every
attack it can with its own NATS credentials against a running network whose
honest node serves jobs. Each attempt is refused by the server or the gate,
costs nothing, pays nothing, and the network goes on: the next job completes
and settles, and the audit passes."""
from __future__ import annotations

import asyncio
import shutil
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
              "--operator", operator, "--tier", str(tier))
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
    assert got["expire"] == got["seal"] == got["beat-as-honest"] == "TimeoutError"
    assert len(got["refused"]) >= 5  # the server said no to each, by name
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
