"""Credits through the whole stack: reserve, charge usage, refund the rest,
402 before anything is published, Idempotency-Key, cancel and disconnect."""
import asyncio
import threading
import time

import httpx
import nats
import pytest

from api.admission import idempotent_job_id
from bus import subjects
from tests.conftest import LONG_MODEL, TINY_MODEL

PROMPT_PRICE, COMPLETION_PRICE = 0.001, 0.002  # default credits per token
CHAT = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def cost(usage: dict) -> float:
    return round(usage["prompt_tokens"] * PROMPT_PRICE
                 + usage["completion_tokens"] * COMPLETION_PRICE, 6)


def api(stack, key):
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"},
                        timeout=60)


def settled(client, timeout: float = 15.0) -> dict:
    """The account once nothing is held (every reservation of it resolved)."""
    deadline = time.monotonic() + timeout
    while (acct := client.get("/v1/account").json())["held"] != 0:
        assert time.monotonic() < deadline, acct
        time.sleep(0.05)
    return acct


def wait_status(client, job_id: str, statuses, timeout: float = 30.0) -> dict:
    """The job once in one of ``statuses`` (a job not yet submitted is waited for)."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json()).get("status") not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def job_submitted_count(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info(subjects.EVENTS_STREAM,
                                                     subjects_filter="events.*.JobSubmitted")
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()
    return asyncio.run(count())


def test_completed_job_is_charged_its_usage_and_the_rest_refunded(stack):
    with api(stack, stack.new_key("dave", credits="10")) as client:
        r = client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        charged = cost(r.json()["usage"])
        acct = settled(client)
        assert acct["spent"] == pytest.approx(charged) and acct["balance"] == pytest.approx(10 - charged)
        job = client.get(f"/v1/jobs/{r.headers['x-inferbus-job']}").json()
        assert job["cost"] == pytest.approx(charged)


def test_short_account_gets_402_and_nothing_is_published(stack, nats_server):
    before = job_submitted_count(nats_server.url)
    with api(stack, stack.new_key("erin", credits="0.01")) as client:
        r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100})
        assert r.status_code == 402, r.text
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert client.get("/v1/account").json() == {
            "object": "account", "account": "erin", "balance": 0.01, "held": 0, "spent": 0,
            "rcp": 0}
    assert job_submitted_count(nats_server.url) == before


def test_repeated_idempotency_key_is_one_job_and_one_charge(stack):
    with api(stack, stack.new_key("fay", credits="10")) as client:
        headers = {"Idempotency-Key": "order-42", "Prefer": "respond-async"}
        first = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        second = client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        job = wait_status(client, first.json()["id"], ("completed",))
        sync = client.post("/v1/chat/completions", json=CHAT,
                           headers={"Idempotency-Key": "order-42"})
        assert sync.status_code == 200 and sync.json() == job["result"]
        assert settled(client)["spent"] == pytest.approx(cost(job["usage"]))
        other = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 6},
                            headers=headers)
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"


LONG = {"model": LONG_MODEL, "max_tokens": 6000, "temperature": 0,
        "messages": [{"role": "user", "content": "Go on and on."}]}


def test_cancelled_job_is_charged_what_it_produced_and_refunded_the_rest(stack):
    with api(stack, stack.new_key("gus", credits="100")) as client:
        r = client.post("/v1/chat/completions", json=LONG, headers={"Prefer": "respond-async"})
        job_id = r.json()["id"]
        wait_status(client, job_id, ("running",))
        time.sleep(0.3)
        job = client.delete(f"/v1/jobs/{job_id}").json()
        job = wait_status(client, job_id, ("cancelled",)) if job["status"] != "cancelled" else job
        produced = job["usage"]["completion_tokens"]
        assert 0 < produced < 6000
        acct = settled(client)
        assert acct["spent"] == pytest.approx(cost(job["usage"]))
        assert acct["balance"] == pytest.approx(100 - cost(job["usage"]))
        assert client.get(f"/v1/jobs/{job_id}").json()["cost"] == pytest.approx(acct["spent"])


def test_sync_caller_of_a_job_cancelled_meanwhile_gets_409_at_once(stack):
    key = stack.new_key("ida", credits="100")
    job_id = idempotent_job_id("ida", "cancel-me")  # how the API names it
    answer = {}

    def wait_for_it() -> None:
        with api(stack, key) as caller:
            answer["r"] = caller.post("/v1/chat/completions", json=LONG,
                                      headers={"Idempotency-Key": "cancel-me"})

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    with api(stack, key) as client:
        wait_status(client, job_id, ("running",))
        client.delete(f"/v1/jobs/{job_id}")
        cancelled_at = time.monotonic()
        waiter.join(timeout=60)
        assert time.monotonic() - cancelled_at < 10  # not the job's 300 s deadline
    r = answer["r"]
    assert r.status_code == 409 and r.json()["error"]["code"] == "cancelled"


def test_client_that_disconnects_mid_stream_pays_only_what_was_produced(stack):
    with api(stack, stack.new_key("hal", credits="100")) as client:
        with client.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            job_id = r.headers["x-inferbus-job"]
            for i, _ in enumerate(r.iter_lines()):
                if i > 20:
                    break  # leave mid-stream: closing the response drops the connection
        job = wait_status(client, job_id, ("cancelled",))
        assert 0 < job["usage"]["completion_tokens"] < 6000
        assert settled(client)["spent"] == pytest.approx(cost(job["usage"]))


def test_operator_earns_rcp_for_completed_jobs(stack):
    # The stack's workers run for the default operator account "operator".
    with api(stack, stack.new_key("operator", credits="1")) as op, \
            api(stack, stack.new_key("ivy", credits="10")) as client:
        before = op.get("/v1/account").json()["rcp"]
        r = client.post("/v1/chat/completions", json=CHAT)
        settled(client)
        deadline = time.monotonic() + 10
        while op.get("/v1/account").json()["rcp"] == before:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert op.get("/v1/account").json()["rcp"] - before == \
            r.json()["usage"]["completion_tokens"]  # tier 1: one point per token
