"""Limits answer before anything is reserved; clients cannot set what they pay
or who earns; keys never reach a log."""
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import LONG_MODEL
from tests.stack import Stack, isolated_stack

SMALL = {"model": LONG_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def limited(models_dir, tmp_path_factory):
    env = {"INFERBUS_RATE_PER_MINUTE": "3", "INFERBUS_MAX_JOBS_IN_FLIGHT": "1",
           "INFERBUS_MAX_BODY_BYTES": "2000", "INFERBUS_MAX_TOKENS_LIMIT": "6000"}
    with isolated_stack(tmp_path_factory.mktemp("limits"), models_dir, env) as s:
        s.start_worker("eu", LONG_MODEL)
        s.start_api()
        s.keys = []
        s.wait_for_model(s.new_key("probe"), LONG_MODEL)
        yield s


def client(s: Stack, account: str) -> httpx.Client:
    key = s.new_key(account, credits="10")
    s.keys.append(key)
    return httpx.Client(base_url=s.base_url, headers={"Authorization": f"Bearer {key}"},
                        timeout=60)


def done(c: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 30
    while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return job


def test_oversized_body_is_413_and_nothing_is_reserved(limited):
    with client(limited, "big") as c:
        r = c.post("/v1/chat/completions", json={**SMALL, "messages": [
            {"role": "user", "content": "x" * 3000}]})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert c.get("/v1/account").json()["held"] == 0


def test_max_tokens_over_the_network_limit_is_a_400(limited):
    with client(limited, "greedy") as c:
        r = c.post("/v1/chat/completions", json={**SMALL, "max_tokens": 7000})
        assert r.status_code == 400 and r.json()["error"]["code"] == "max_tokens_too_large"


def test_requests_over_the_rate_get_429_with_retry_after(limited):
    with client(limited, "fast") as c:
        for _ in range(3):
            r = c.post("/v1/chat/completions", json=SMALL)
            assert r.status_code == 200
            done(c, r.headers["x-inferbus-job"])
        r = c.post("/v1/chat/completions", json=SMALL)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(r.headers["retry-after"]) >= 1
        deadline = time.monotonic() + 10  # the three settle; the refused one held nothing
        while (acct := c.get("/v1/account").json())["held"]:
            assert time.monotonic() < deadline, acct
            time.sleep(0.05)
        assert acct["spent"] > 0


def test_jobs_in_flight_over_the_cap_get_429(limited):
    with client(limited, "busy") as c:
        long = c.post("/v1/chat/completions", headers={"Prefer": "respond-async"},
                      json={**SMALL, "max_tokens": 3000}).json()["id"]
        time.sleep(0.3)  # the read model has seen it
        r = c.post("/v1/chat/completions", json=SMALL)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_jobs_in_flight"
        c.delete(f"/v1/jobs/{long}")


def test_clients_cannot_set_price_node_or_rcp(limited):
    with client(limited, "sneaky") as c:
        for field, value in (("price", 0), ("cost", 0), ("node_id", "mine"),
                             ("operator", "sneaky"), ("rcp", 10**6), ("tier", 6)):
            r = c.post("/v1/chat/completions", json={**SMALL, field: value})
            assert r.status_code == 400, r.text  # refused by name, never quietly ignored
            assert r.json()["error"]["param"] == field
        r = c.post("/v1/chat/completions", json=SMALL)
        assert r.status_code == 200
        usage = r.json()["usage"]
        job_id = r.headers["x-inferbus-job"]
        deadline = time.monotonic() + 10
        while (job := c.get(f"/v1/jobs/{job_id}").json())["cost"] is None:  # until settled
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        expected = usage["prompt_tokens"] * 0.001 + usage["completion_tokens"] * 0.002
        assert job["cost"] == pytest.approx(expected)
        assert c.get("/v1/account").json()["rcp"] == 0


def test_issued_keys_never_appear_in_any_log(limited):
    with client(limited, "secret") as c:
        c.post("/v1/chat/completions", json=SMALL)
        c.post("/v1/chat/completions", json=SMALL,
               headers={"Authorization": f"Bearer {limited.keys[-1]}x"})  # a wrong key too
    logs = list(Path(limited.data_dir).rglob("*.log"))
    assert logs
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    for key in limited.keys:
        assert key not in text and key[3:] not in text
