"""Accounts their owners run: keys over HTTP and the CLI, revocation seen by every
API instance within a second, the job list, usage, a rate limit the NATS server
counts for all instances, spend limits, expiry, and wrong keys limited per
client address. Two ``inferbus api`` processes share one NATS and one store."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.conftest import TINY_MODEL
from tests.natsd import free_port
from tests.stack import isolated_stack

ACCOUNT_RATE = 8
AUTH_FAILURES = 5
CHAT = {"model": TINY_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def two_apis(models_dir, tmp_path_factory):
    env = {"INFERBUS_ACCOUNT_RATE_PER_MINUTE": str(ACCOUNT_RATE),
           "INFERBUS_AUTH_FAILURES_PER_WINDOW": str(AUTH_FAILURES)}
    with isolated_stack(tmp_path_factory.mktemp("accounts"), models_dir, env) as s:
        s.start_worker("eu", TINY_MODEL)
        s.start_api()
        s.port2 = free_port()
        s.start_api("api2", port=s.port2)
        s.urls = (s.base_url, f"http://127.0.0.1:{s.port2}")
        probe = s.new_key("probe")
        s.wait_for_model(probe, TINY_MODEL)
        _wait_ready(s.urls[1], probe)
        yield s


def _wait_ready(url: str, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/models", headers=_auth(key), timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


def _auth(key: str, address: str | None = None) -> dict[str, str]:
    # The tests' API trusts loopback proxies, so X-Forwarded-For names the client:
    # a test that sends wrong keys does so from an address of its own.
    return {"Authorization": f"Bearer {key}", **({"X-Forwarded-For": address} if address else {})}


def _until(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)
    return result


def test_first_cli_key_is_admin_and_makes_lists_and_revokes_keys_over_http(two_apis):
    admin = two_apis.new_key("acme")
    a, b = two_apis.urls
    made = httpx.post(f"{a}/v1/keys", headers=_auth(admin), json={
        "name": "ci", "spend_limit": 2.5, "expires_in_days": 30}).json()
    assert made["key"].startswith("ib-") and made["name"] == "ci" and made["admin"] is False
    assert made["spend_limit"] == 2.5 and made["revoked"] is False
    assert made["expires_at"] > time.time() + 29 * 86400
    listed = _until(lambda: [k for k in httpx.get(f"{b}/v1/keys", headers=_auth(admin)).json()[
        "data"] if k["id"] == made["id"]])
    assert {k: listed[0][k] for k in ("name", "spend_limit", "spent", "admin", "subcloud")} == {
        "name": "ci", "spend_limit": 2.5, "spent": 0.0, "admin": False, "subcloud": None}
    assert "key" not in listed[0]
    revoked = httpx.delete(f"{b}/v1/keys/{made['id']}", headers=_auth(admin)).json()
    assert revoked["id"] == made["id"] and revoked["revoked"] is True


def test_a_key_that_is_not_admin_gets_403_on_key_management(two_apis):
    owner = two_apis.new_key("plain-co")
    plain = two_apis.new_key("plain-co")  # the account's second key: not admin
    r = httpx.get(f"{two_apis.urls[0]}/v1/keys", headers=_auth(plain))
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_key_required"
    assert httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(plain), json={}
                      ).status_code == 403
    assert httpx.get(f"{two_apis.urls[0]}/v1/keys", headers=_auth(owner)).status_code == 200


def test_unknown_or_bad_key_fields_are_a_400_naming_them(two_apis):
    admin = two_apis.new_key("strict-co")
    for body, param in (({"colour": "red"}, "colour"), ({"spend_limit": -1}, "spend_limit"),
                        ({"expires_in_days": 0}, "expires_in_days"),
                        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
                        ({"subcloud": "not-ours"}, "subcloud")):
        r = httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(admin), json=body)
        assert r.status_code in (400, 403), (body, r.text)
        assert r.json()["error"]["param"] == param, r.text


def test_revoked_key_is_refused_by_every_instance_within_a_second(two_apis):
    admin = two_apis.new_key("revokers")
    made = httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(admin), json={}).json()
    for url in two_apis.urls:  # both have it cached
        assert httpx.get(f"{url}/v1/account", headers=_auth(made["key"])).status_code == 200
    started = time.monotonic()
    assert httpx.delete(f"{two_apis.urls[0]}/v1/keys/{made['id']}",
                        headers=_auth(admin)).json()["revoked"]
    for url in two_apis.urls:
        _until(lambda url=url: httpx.get(f"{url}/v1/account", headers=_auth(
            made["key"], "198.51.100.1")).status_code == 401, timeout=1.0)
    assert time.monotonic() - started < 1.0


def test_rate_limit_holds_across_two_api_instances(two_apis):
    key = two_apis.new_key("busy-co")
    body = {**CHAT, "model": "no-such-model"}  # counted, then refused cheaply: 404

    def send(i: int) -> int:
        url = two_apis.urls[i % 2]
        return httpx.post(f"{url}/v1/chat/completions", headers=_auth(key), json=body,
                          timeout=10).status_code
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, range(ACCOUNT_RATE + 6)))
    assert codes.count(429) == 6 and codes.count(404) == ACCOUNT_RATE, codes


def test_jobs_and_usage_list_the_accounts_own_work(two_apis):
    key = two_apis.new_key("worker-co")
    a, b = two_apis.urls
    ids = []
    for url in (a, b):
        r = httpx.post(f"{url}/v1/chat/completions", headers=_auth(key), json=CHAT, timeout=60)
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-inferbus-job"])
    jobs = _until(lambda: (d := httpx.get(f"{a}/v1/jobs", headers=_auth(key)).json()["data"])
                  and len(d) == 2 and all(j["cost"] for j in d) and d)
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert {j["id"] for j in jobs} == set(ids)
    assert jobs[0]["created_at"] >= jobs[1]["created_at"] and jobs[0]["model"] == TINY_MODEL
    page = httpx.get(f"{b}/v1/jobs?limit=1", headers=_auth(key)).json()
    assert page["has_more"] and page["data"][0]["id"] == jobs[0]["id"]
    rest = httpx.get(f"{b}/v1/jobs?limit=5&after={jobs[0]['id']}", headers=_auth(key)).json()
    assert [j["id"] for j in rest["data"]] == [jobs[1]["id"]]
    assert httpx.get(f"{a}/v1/jobs?status=failed", headers=_auth(key)).json()["data"] == []
    day = httpx.get(f"{a}/v1/usage?days=30&group_by=day", headers=_auth(key)).json()["data"]
    assert len(day) == 1 and day[0]["requests"] == 2 and day[0]["model"] is None
    assert day[0]["day"] == datetime.now(timezone.utc).date().isoformat()
    assert day[0]["cost"] == pytest.approx(sum(j["cost"] for j in jobs))
    per = httpx.get(f"{a}/v1/usage?group_by=model,key", headers=_auth(key)).json()["data"]
    assert [(u["model"], u["requests"], u["day"]) for u in per] == [(TINY_MODEL, 2, None)]
    other = two_apis.new_key("someone-else")
    assert httpx.get(f"{a}/v1/jobs", headers=_auth(other)).json()["data"] == []
    bad = httpx.get(f"{a}/v1/usage?group_by=colour", headers=_auth(key))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


def test_a_key_over_its_spend_limit_gets_402_and_holds_nothing(two_apis):
    admin = two_apis.new_key("thrifty")
    tiny = httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(admin),
                      json={"spend_limit": 0.000001}).json()["key"]
    r = httpx.post(f"{two_apis.urls[1]}/v1/chat/completions", headers=_auth(tiny), json=CHAT)
    assert r.status_code == 402 and r.json()["error"]["code"] == "spend_limit_exceeded", r.text
    assert httpx.get(f"{two_apis.urls[1]}/v1/account", headers=_auth(tiny)).json()["held"] == 0


def test_an_expired_key_is_refused(two_apis):
    admin = two_apis.new_key("brief")
    soon = (datetime.now(timezone.utc) + timedelta(seconds=2)).isoformat()
    made = httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(admin),
                      json={"expires_at": soon}).json()
    assert httpx.get(f"{two_apis.urls[1]}/v1/account", headers=_auth(made["key"])
                     ).status_code == 200
    time.sleep(2.2)
    r = httpx.get(f"{two_apis.urls[1]}/v1/account", headers=_auth(made["key"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"


def test_too_many_wrong_keys_from_one_address_block_even_a_right_one(two_apis):
    key, url, guesser = two_apis.new_key("guessed"), two_apis.urls[0], "203.0.113.9"
    for _ in range(AUTH_FAILURES):
        assert httpx.get(f"{url}/v1/account", headers=_auth("ib-wrong", guesser)
                         ).status_code == 401
    r = httpx.get(f"{url}/v1/account", headers=_auth(key, guesser))
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "auth_rate_limited"
    assert httpx.get(f"{url}/v1/account", headers=_auth(key, "203.0.113.10")).status_code == 200


def test_cli_lists_and_revokes_keys(two_apis):
    out = two_apis.cli("keys", "create", "cli-co", "--name", "ops", "--spend-limit", "5",
                       "--expires-in-days", "7").stdout.strip().splitlines()
    key = out[-1]
    assert httpx.get(f"{two_apis.urls[0]}/v1/keys", headers=_auth(key)).status_code == 200
    listing = _until(lambda: "ops" in (o := two_apis.cli("keys", "list", "cli-co").stdout) and o)
    line = next(row for row in listing.splitlines() if "ops" in row)
    assert " yes " in line and "active" in line
    key_id = line.split()[0]
    assert "revoked" in two_apis.cli("keys", "revoke", key_id).stdout
    _until(lambda: httpx.get(f"{two_apis.urls[1]}/v1/account", headers=_auth(
        key, "198.51.100.2")).status_code == 401, timeout=1.0)
    bad = two_apis.cli("keys", "revoke", "0000000000000000", check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_the_audit_rebuilds_the_key_and_job_read_models_equal_to_the_live_ones(two_apis):
    key = two_apis.new_key("audited")
    httpx.post(f"{two_apis.urls[0]}/v1/keys", headers=_auth(key), json={"name": "x"})
    report = two_apis.cli("audit", check=False)
    assert report.returncode == 0, report.stdout + report.stderr
