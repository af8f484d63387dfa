"""Wrong work is caught: nodes the admin adds start on probation and are
verified by probe jobs; a node that returns another model's output is caught
by the verifier's spot checks, suspended, and its consumers are refunded and
its RCP revoked; the audit (I6 included) passes."""
from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import nats
import pytest

from bus.events import (CreditsReimbursed, NodeStrike, NodeSuspended, NodeVerified, RCPRevoked,
                        SpotChecked)
from tests.conftest import TINY_MODEL
from tests.eventlog import read_log
from tests.natsauth import AuthNatsServer, start_with_seed
from tests.stack import Stack
from workers.echo import write_echo_model

MODEL = "echo"


@pytest.fixture
def network(tmp_path, models_dir):
    shutil.copytree(models_dir, tmp_path / "models")
    write_echo_model(tmp_path / "models" / MODEL)
    server = AuthNatsServer(tmp_path)
    # Every completion checked, so the test need not wait for a 2% sample.
    s = Stack(tmp_path, server.url, env_extra={"INFERBUS_SPOT_CHECK_SHARE": "1.0"})
    s.cli("nodes", "add", "--zone", "eu", "--model", MODEL, "--node-name", "newcomer",
          "--operator", "newbie", "--tier", "2")
    # An operator the admin trusted, whose node serves a tiny random model under the
    # echo model's name: "another model's output", from the real worker.
    s.cli("nodes", "add", "--zone", "eu", "--model", MODEL, "--node-name", "cheat",
          "--operator", "crook", "--tier", "3", "--verified")
    cheat_dir = tmp_path / "cheat"
    shutil.copytree(models_dir / TINY_MODEL, cheat_dir / "models" / MODEL)
    (cheat_dir / "node").mkdir()
    shutil.copy(tmp_path / "node" / "cheat.key", cheat_dir / "node" / "cheat.key")
    server.start()
    try:
        s.start_projector()
        s.start_api()
        s.key = s.new_key("carol", "100")
        yield s, server, cheat_dir
    finally:
        s.stop()
        server.stop()


def worker(s, name: str, data_dir=None):
    stack = s if data_dir is None else Stack(data_dir, s.nats_url, procs=s.procs)
    start_with_seed(stack, name, s.data_dir / f"nats-auth/workers/{name}.seed",
                    "worker", "--zone", "eu", "--model", MODEL, "--node-name", name)


def chat(s, words: str) -> httpx.Response:
    return httpx.post(f"{s.base_url}/v1/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {s.key}"},
                      json={"model": MODEL, "max_tokens": 4,
                            "messages": [{"role": "user", "content": words}]})


def account(s, key: str | None = None) -> dict:
    return httpx.get(f"{s.base_url}/v1/account", timeout=10,
                     headers={"Authorization": f"Bearer {key or s.key}"}).json()


def events(server, *types) -> list:
    async def read():
        nc = await nats.connect(server.url, nkeys_seed=str(server.data_dir /
                                                           "nats-auth/service.seed"))
        try:
            return [e for _, e in await read_log(nc.jetstream()) if isinstance(e, types)]
        finally:
            await nc.close()
    return asyncio.run(read())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"{what} not seen in {timeout} s"
        time.sleep(0.3)
    return found


def test_a_new_node_is_verified_by_probes_and_a_cheat_is_caught_suspended_and_refunded(network):
    s, server, cheat_dir = network
    listed = s.cli("nodes", "list").stdout
    assert "probation" in listed and "verified" in listed, listed

    # Probation: probe jobs reach the newcomer's own queue; it passes and is verified.
    worker(s, "newcomer")
    verified = wait_for(lambda: events(server, NodeVerified), 60, "NodeVerified")
    probes = [e for e in events(server, SpotChecked) if e.probe]
    assert probes and all(e.passed for e in probes)
    assert "verified" in next(line for line in s.cli("nodes", "list").stdout.splitlines()
                              if line.startswith("newcomer")), verified
    s.kill("newcomer")
    # Until its heartbeat lapses the killed node still counts as serving the model,
    # and waiting for the model below would not wait for the cheat.
    wait_for(lambda: s.live_zones(MODEL) == 0, 60, "the killed node's heartbeat lapsing")

    # The cheat serves paid jobs with another model's output: each fails its check.
    worker(s, "cheat", cheat_dir)
    # Its own word that it serves: the count of live zones can still show the killed
    # node a moment after it read zero, and the API answer 503 once it lapses.
    wait_for(lambda: "serving" in (cheat_dir / "cheat.log").read_text(errors="replace"), 90,
             "the cheat serving")
    s.wait_for_model(s.key, MODEL, timeout=90)
    before = account(s)
    answered = [chat(s, f"one two three four {i}") for i in range(2)]
    assert all(r.status_code == 200 for r in answered), [r.text for r in answered]
    assert all(r.json()["choices"][0]["message"]["content"] != "one two three four"
               for r in answered)  # the cheat's text reached the caller...
    suspended = wait_for(lambda: events(server, NodeSuspended), 60, "NodeSuspended")
    assert "2 failed spot check" in suspended[0].reason
    failed = [e for e in events(server, SpotChecked) if not e.passed]
    assert len(failed) == 2 and all(e.evidence for e in failed)
    assert len(events(server, NodeStrike)) >= 2
    # ...and the consumer gets back every credit, the operator keeps no RCP.
    wait_for(lambda: len(events(server, CreditsReimbursed)) == 2, 30, "two reimbursements")
    revoked = events(server, RCPRevoked)
    assert {e.operator for e in revoked} == {"crook"} and len(revoked) == 2
    wait_for(lambda: account(s)["spent"] == before["spent"], 30, "spent back to before")
    assert "suspended" in next(line for line in s.cli("nodes", "list").stdout.splitlines()
                               if line.startswith("cheat"))

    # Suspended: the gate gives it no more work; an honest node serves the next job.
    worker(s, "newcomer")
    s.wait_for_model(s.key, MODEL, timeout=90)
    reply = chat(s, "after the cheat")
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "after the cheat"
    audit = s.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
