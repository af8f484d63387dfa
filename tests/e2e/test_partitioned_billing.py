"""Billing in two partitions through the whole stack, as an operator runs it:
``INFERBUS_LEDGER_PARTITIONS=2``, each partition's read models in its own
``inferbus projector --no-settle --partition K`` and each shard's money service
in its own ``inferbus settle --shard K``. Every account is charged in its own
shard, the node's operator earns from both, a stopped shard or read-model
partition holds up only its own accounts, and ``inferbus audit`` checks the log
of both against both."""
import shutil
import time

import httpx
import pytest

from bus.partitions import shard_of_account
from tests.conftest import TINY_MODEL
from tests.natsd import NatsServer
from tests.stack import Stack

N = 2
CHAT = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
OPERATOR = next(f"op{i}" for i in range(100) if shard_of_account(f"op{i}", N) == 1)


def payer(shard: int, tag: str) -> str:
    return next(f"{tag}{i}" for i in range(1000) if shard_of_account(f"{tag}{i}", N) == shard)


@pytest.fixture(scope="module")
def sharded(models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sharded")
    server = NatsServer(tmp / "nats").start()
    shutil.copytree(models_dir, tmp / "models")
    stack = Stack(tmp, server.url, env_extra={"INFERBUS_LEDGER_PARTITIONS": str(N)})
    try:
        stack.start("gate", "gate")
        for k in range(N):
            stack.start(f"projector-{k}", "projector", "--no-settle", "--partition", str(k))
            stack.start(f"settle-{k}", "settle", "--shard", str(k))
        stack.start("worker-eu", "worker", "--zone", "eu", "--model", TINY_MODEL,
                    "--operator", OPERATOR, "--node-name", "worker-eu")
        stack.start_api()
        stack.key = stack.new_key(payer(0, "watcher"))
        stack.wait_for_model(stack.key, TINY_MODEL)
        yield stack
    finally:
        stack.stop()
        server.stop()


def client(stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"},
                        timeout=60)


def account_when(c: httpx.Client, done, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while not done(acct := c.get("/v1/account").json()):
        assert time.monotonic() < deadline, acct
        time.sleep(0.05)
    return acct


def test_each_account_is_charged_in_its_own_shard_and_the_operator_earns_from_both(sharded):
    spent = {}
    for k in range(N):
        with client(sharded, sharded.new_key(payer(k, "p"), credits="10")) as c:
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200, r.text
            assert r.headers["x-inferbus-job"][-1] in "0123456789abcdef"
            acct = account_when(c, lambda a: a["held"] == 0 and a["spent"] > 0)
            spent[k] = acct["spent"]
            assert acct["balance"] == pytest.approx(10 - acct["spent"])
    assert all(v > 0 for v in spent.values())
    with client(sharded, sharded.new_key(OPERATOR, credits="0")) as c:
        account_when(c, lambda a: a["rcp"] > 0)  # awarded by shard 0's and its own settlement
    audited = sharded.cli("audit", "--full", check=False)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def test_a_stopped_shard_holds_up_only_its_own_accounts(sharded):
    sharded.kill("settle-1")
    try:
        with client(sharded, sharded.new_key(payer(1, "late"), credits="10")) as waiting, \
                client(sharded, sharded.new_key(payer(0, "busy"), credits="10")) as going:
            assert waiting.post("/v1/chat/completions", json=CHAT).status_code == 200
            assert going.post("/v1/chat/completions", json=CHAT).status_code == 200
            account_when(going, lambda a: a["held"] == 0 and a["spent"] > 0)
            time.sleep(1.0)
            assert waiting.get("/v1/account").json()["held"] > 0  # its shard is down
            sharded.start("settle-1", "settle", "--shard", "1")
            account_when(waiting, lambda a: a["held"] == 0 and a["spent"] > 0)
    finally:
        if "settle-1" not in sharded.procs:
            sharded.start("settle-1", "settle", "--shard", "1")
    audited = sharded.cli("audit", check=False)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def test_a_stopped_read_model_partition_holds_up_only_its_own_accounts_jobs(sharded):
    sharded.kill("projector-1")
    try:
        with client(sharded, sharded.new_key(payer(1, "unseen"), credits="10")) as waiting, \
                client(sharded, sharded.new_key(payer(0, "seen"), credits="10")) as going:
            jobs = {}
            for name, c in (("waiting", waiting), ("going", going)):
                r = c.post("/v1/chat/completions", json=CHAT)
                assert r.status_code == 200, r.text
                jobs[name] = r.headers["x-inferbus-job"]
            job_when(going, jobs["going"], "completed")
            time.sleep(1.0)
            assert waiting.get(f"/v1/jobs/{jobs['waiting']}").json().get("status") != "completed"
            sharded.start("projector-1", "projector", "--no-settle", "--partition", "1")
            job_when(waiting, jobs["waiting"], "completed")
    finally:
        if "projector-1" not in sharded.procs:
            sharded.start("projector-1", "projector", "--no-settle", "--partition", "1")
    audited = sharded.cli("audit", check=False)
    assert audited.returncode == 0, audited.stdout + audited.stderr


def job_when(c: httpx.Client, job_id: str, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := c.get(f"/v1/jobs/{job_id}").json()).get("status") != status:
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


@pytest.mark.parametrize("command,flag", [("settle", "--shard"), ("projector", "--partition")])
def test_a_shard_or_partition_the_deployment_does_not_have_is_refused(sharded, command, flag):
    out = sharded.cli(command, flag, str(N), check=False)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"inferbus {command}: {flag} is 0 to {N - 1} (INFERBUS_LEDGER_PARTITIONS={N})"]


def test_another_accounts_job_is_not_found_whichever_shard_its_id_names(sharded):
    with client(sharded, sharded.new_key(payer(1, "owner"), credits="10")) as owner, \
            client(sharded, sharded.new_key(payer(0, "prober"), credits="10")) as prober:
        r = owner.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        job_id = r.headers["x-inferbus-job"]
        assert owner.get(f"/v1/jobs/{job_id}").status_code == 200
        # The owner's own id, and the same id with each other slot forged in: never found.
        for slot in "0123456789abcdef":
            got = prober.get(f"/v1/jobs/{job_id[:-1]}{slot}")
            assert got.status_code == 404, got.text
            assert got.json()["error"]["code"] == "job_not_found"
