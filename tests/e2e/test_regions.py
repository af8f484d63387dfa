"""Two regions joined into a supercluster, each with its own API, gate, verifier
and worker: a strict-EU job's prompt and output land only on the EU region's
disks, every response names its region, content can be erased while the
audit still passes, and money is one balance across the regions."""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.regions_stack import start_regions, stop_regions, strict_eu_key

# na is the home region (listed first): the global log, the global pool and the
# buckets live there, so nothing of a strict-EU job may reach it but hashes. ap
# runs a server only: with three regions, losing one keeps the JetStream meta
# group's majority (two regions of one server each would lose it with either).
REGIONS = "na=na,sa;eu=eu,me,af;ap=sea,ea,oc,sa_asia"


@pytest.fixture(scope="module")
def regions(tmp_path_factory, models_dir):
    stack = start_regions(tmp_path_factory.mktemp("regions"), models_dir, REGIONS,
                          served=("na", "eu"))
    try:
        stack.eu_url = stack.apis["eu"]
        stack.eu_key = strict_eu_key(stack)
        yield stack
    finally:
        stop_regions(stack)


def ask(url: str, key: str, text: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={
        "Authorization": f"Bearer {key}", **headers},
        json={"model": "echo", "max_tokens": 16, "messages": [{"role": "user", "content": text}]})


def test_a_strict_eu_jobs_content_is_stored_only_on_eu_servers(regions):
    marker = f"marker-{uuid.uuid4().hex}"
    r = ask(regions.eu_url, regions.eu_key, f"keep {marker} in the union")
    assert r.status_code == 200, r.text
    assert r.headers["x-inferbus-region"] == "eu" and r.headers["x-inferbus-zone"] == "eu"
    assert marker in r.json()["choices"][0]["message"]["content"]  # the echo model echoes it
    found = regions.cluster.find(marker.encode())
    # Kept in its region, and nowhere else: na holds only its hashes and money.
    assert {server for server, files in found.items() if files} == {"eu-1"}, found


def test_a_strict_key_calling_another_regions_api_is_refused_before_anything_is_held(regions):
    before = regions.settled_account(regions.eu_key)
    marker = f"marker-{uuid.uuid4().hex}"
    r = ask(regions.base_url, regions.eu_key, marker)
    assert r.status_code == 421 and r.json()["error"]["code"] == "wrong_region", r.text
    assert r.headers["x-inferbus-region"] == "na"
    after = httpx.get(f"{regions.base_url}/v1/account", timeout=10,
                      headers={"Authorization": f"Bearer {regions.eu_key}"}).json()
    assert (after["balance"], after["held"]) == (before["balance"], before["held"])
    assert not any(regions.cluster.find(marker.encode()).values())


def test_each_region_serves_its_own_clients_and_says_so(regions):
    r = ask(regions.base_url, regions.key, "hello from the americas", **{"X-Inferbus-Zone": "na"})
    assert r.status_code == 200, r.text
    assert (r.headers["x-inferbus-region"], r.headers["x-inferbus-zone"]) == ("na", "na")
    r = ask(regions.eu_url, regions.key, "hello from europe", **{"X-Inferbus-Zone": "eu"})
    assert (r.headers["x-inferbus-region"], r.headers["x-inferbus-zone"]) == ("eu", "eu")
    assert httpx.get(f"{regions.eu_url}/healthz", timeout=5).headers["x-inferbus-region"] == "eu"


def test_erased_content_is_gone_while_the_audit_still_verifies_the_job(regions):
    marker = f"marker-{uuid.uuid4().hex}"
    auth = {"Authorization": f"Bearer {regions.eu_key}"}
    r = ask(regions.eu_url, regions.eu_key, f"forget {marker}")
    assert r.status_code == 200, r.text
    job = r.headers["x-inferbus-job"]
    got = completed_job(regions.eu_url, regions.eu_key, job)
    assert marker in got["result"]["choices"][0]["message"]["content"]
    gone = httpx.delete(f"{regions.eu_url}/v1/jobs/{job}/content", headers=auth, timeout=10)
    assert gone.status_code == 200, gone.text
    body = gone.json()
    assert (body["status"], body["result"], body["content"]) == ("completed", None, "erased")
    assert body["usage"]["completion_tokens"] > 0  # the bill stays
    while (body := httpx.get(f"{regions.eu_url}/v1/jobs/{job}", headers=auth,
                             timeout=10).json())["cost"] is None:
        time.sleep(0.1)  # settled a moment after the answer
    assert body["cost"] > 0 and body["content"] == "erased"
    content_dirs = [p for p in regions.cluster.find(marker.encode()).get("eu-1", [])
                    if "CONTENT" in str(p)]
    assert content_dirs == []  # erased from the content store's files, not only hidden
    other = httpx.delete(f"{regions.eu_url}/v1/jobs/{job}/content", timeout=10,
                         headers={"Authorization": f"Bearer {regions.key}"})
    assert other.status_code == 404  # only its owner may erase it
    out = regions.cli("accounts", "forget", "eurocorp")
    assert "erased" in out.stdout
    audit_passes(regions)


def test_one_balance_holds_across_regions_with_no_overspend(regions):
    key = regions.new_key("spender", "0")  # one job's worst case, as the API prices it:
    r = ask(regions.eu_url, key, "x")
    assert r.status_code == 402
    need = float(r.json()["error"]["message"].split("up to ")[1].split(" credits")[0])
    deposit = need * 4  # room for four held at once
    regions.cli("credits", "deposit", "--account", "spender", str(deposit))
    urls = [regions.base_url, regions.eu_url] * 8
    with ThreadPoolExecutor(16) as pool:
        codes = [a.status_code for a in pool.map(lambda u: ask(u, key, "x"), urls)]
    assert set(codes) == {200, 402}, codes  # both regions' holds met the one balance
    deadline = time.monotonic() + 20
    while (account := account_of(regions.base_url, key))["held"]:  # until all settle
        assert time.monotonic() < deadline, account
        time.sleep(0.1)
    assert account["balance"] >= 0
    assert abs(account["balance"] + account["spent"] - deposit) < 1e-6  # nothing made or lost


def completed_job(url: str, key: str, job: str, wait_s: float = 30) -> dict:
    """The job once its read model says completed. The read model follows the log
    a moment after the answer: under load it can still say running when the
    client already has the text."""
    deadline = time.monotonic() + wait_s
    while (got := httpx.get(f"{url}/v1/jobs/{job}", timeout=10,
                            headers={"Authorization": f"Bearer {key}"}).json())["status"] \
            != "completed":
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    return got


def audit_passes(regions, wait_s: float = 30) -> None:
    """``inferbus audit`` passes. The ledger's events reach the log through the relay
    a moment after the ledger has them, so under load the first audit can run
    before they are there."""
    deadline = time.monotonic() + wait_s
    while (audit := regions.cli("audit", check=False)).returncode != 0 and \
            time.monotonic() < deadline:
        time.sleep(1)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def account_of(url: str, key: str) -> dict:
    return httpx.get(f"{url}/v1/account", timeout=10,
                     headers={"Authorization": f"Bearer {key}"}).json()


def test_losing_a_region_keeps_the_others_serving_and_loses_nothing_acked(regions):
    """Last in this module: it kills the eu region's servers, then brings them back."""
    before = ask(regions.eu_url, regions.eu_key, "acked before the outage")
    assert before.status_code == 200, before.text
    while (held := account_of(regions.base_url, regions.eu_key))["held"]:
        time.sleep(0.1)  # that job settled: the balance moves no more by itself
    regions.cluster.stop_region("eu")
    time.sleep(0.5)  # the eu API's client sees its connection drop
    try:
        started = time.monotonic()
        strict = ask(regions.eu_url, regions.eu_key, "no server of my region is up")
        assert strict.status_code == 503 and time.monotonic() - started < 2, strict.text
        elsewhere = ask(regions.base_url, regions.eu_key, "not in another region either")
        assert elsewhere.status_code == 503, elsewhere.text
        assert elsewhere.json()["error"]["code"] == "region_unavailable"
        assert account_of(regions.base_url, regions.eu_key)["balance"] == held["balance"]
        own = ask(regions.base_url, regions.key, "na serves its own", **{"X-Inferbus-Zone": "na"})
        assert own.status_code == 200 and own.headers["x-inferbus-zone"] == "na", own.text
        # A free job of the dead region's zone is re-homed to the global pool, in na.
        moved = ask(regions.base_url, regions.key, "eu client, eu down", **{"X-Inferbus-Zone": "eu"})
        assert moved.status_code == 200, moved.text
        assert (moved.headers["x-inferbus-route"], moved.headers["x-inferbus-zone"]) == \
            ("global", "na")
    finally:
        regions.cluster.start_region("eu")
    deadline = time.monotonic() + 60
    while (back := ask(regions.eu_url, regions.eu_key, "back")).status_code != 200:
        assert time.monotonic() < deadline, back.text
        time.sleep(1)
    audit_passes(regions)  # eu's log, sourced again, checks out whole
    got = completed_job(regions.eu_url, regions.eu_key, before.headers["x-inferbus-job"])
    assert got["result"] is not None
