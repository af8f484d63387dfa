"""Zone first, global fallback, strict residency and private pools, end to end."""
import shutil
import time

import httpx
import pytest

from bus import signing
from bus.events import CREDIT_EVENTS, JobEscalated, JobStarted
from tests.conftest import LONG_MODEL
from tests.eventlog import job_log
from tests.stack import Stack

SMALL = {"model": LONG_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


def make_stack(fresh_nats, models_dir, tmp_path, **env) -> Stack:
    shutil.copytree(models_dir, tmp_path / "models")
    # One job per node, so a node with a job has no room for the next (escalation).
    s = Stack(tmp_path, fresh_nats.url, env_extra={"INFERBUS_ZONE_WAIT_S": "1",
                                                   "INFERBUS_MAX_BATCH": "1", **env})
    s.start_projector()
    return s


def node_id(s: Stack, name: str) -> str:
    return signing.node_id(signing.load_or_create_key(s.data_dir / "node" / f"{name}.key"))


@pytest.fixture
def eu_and_na(fresh_nats, models_dir, tmp_path):
    s = make_stack(fresh_nats, models_dir, tmp_path)
    s.start_worker("eu", LONG_MODEL, "worker-eu")
    s.start_worker("na", LONG_MODEL, "worker-na")
    s.start_api()
    try:
        s.key = s.new_key("geo")
        s.wait_for_model(s.key, LONG_MODEL, zones=2)
        yield s
    finally:
        s.stop()


def test_zone_job_no_zone_worker_starts_in_time_goes_global_and_runs_once(eu_and_na):
    s = eu_and_na
    auth = {"Authorization": f"Bearer {s.key}", "X-Inferbus-Zone": "eu"}
    with httpx.Client(base_url=s.base_url, headers=auth, timeout=60) as client:
        busy = client.post("/v1/chat/completions", headers={"Prefer": "respond-async"},
                           json={**SMALL, "max_tokens": 6000}).json()["id"]
        while client.get(f"/v1/jobs/{busy}").json()["status"] != "running":
            time.sleep(0.05)  # the only eu worker is now busy for seconds
        started = time.monotonic()
        r = client.post("/v1/chat/completions", json=SMALL)
        waited = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert (r.headers["x-inferbus-zone"], r.headers["x-inferbus-route"]) == ("na", "global")
        assert 1.0 <= waited < 5.0
        client.delete(f"/v1/jobs/{busy}")  # frees the eu worker, which finds the zone copy
    time.sleep(2.0)
    events = [e for _, e in job_log(s.nats_url, r.headers["x-inferbus-job"])]
    escalations = [e for e in events if isinstance(e, JobEscalated)]
    assert [(e.from_queue, e.to) for e in escalations] == [("eu", "global")]
    starts = [e for e in events if isinstance(e, JobStarted)]
    assert [e.node_id for e in starts] == [node_id(s, "worker-na")]  # the eu copy never ran


@pytest.fixture
def na_only(fresh_nats, models_dir, tmp_path):
    s = make_stack(fresh_nats, models_dir, tmp_path, INFERBUS_JOB_TIMEOUT_S="3",
                   INFERBUS_EXPIRY_GRACE_S="0.5")
    s.start_worker("na", LONG_MODEL, "worker-na")
    s.start_api()
    try:
        s.wait_for_model(s.new_key("probe"), LONG_MODEL)
        yield s
    finally:
        s.stop()


def test_strict_subcloud_without_a_node_in_its_zone_times_out_with_a_full_refund(na_only):
    s = na_only
    assert "strict residency" in s.cli("subclouds", "create", "eulocal", "--zones", "eu",
                                       "--strict").stdout
    key = s.cli("keys", "create", "--account", "bank", "--credits", "5", "--subcloud",
                "eulocal").stdout.strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{s.base_url}/v1/chat/completions", json=SMALL, headers=auth, timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline"
    job_id = r.headers["x-inferbus-job"]
    deadline = time.monotonic() + 20
    while (acct := httpx.get(f"{s.base_url}/v1/account", headers=auth).json())["held"]:
        assert time.monotonic() < deadline, acct
        time.sleep(0.2)
    assert (acct["balance"], acct["spent"]) == (5, 0)
    logged = job_log(s.nats_url, job_id)
    assert logged  # the job and its refund are on the log: its own events on eu subjects,
    assert not any(isinstance(e, (JobStarted, JobEscalated)) for _, e in logged)
    money = [s for s, e in logged if isinstance(e, CREDIT_EVENTS)]
    assert money and all(s.startswith("events.global.") for s in money)  # money is global
    assert all(s.startswith("events.eu.") for s, e in logged if not isinstance(e, CREDIT_EVENTS))
    assert all(e.zone == "eu" for _, e in logged)


def test_private_pool_serves_its_subcloud_and_never_public_jobs(fresh_nats, models_dir, tmp_path):
    s = make_stack(fresh_nats, models_dir, tmp_path)
    try:
        s.cli("subclouds", "create", "acme", "--zones", "eu")
        s.start("worker-private", "worker", "--zone", "eu", "--model", LONG_MODEL,
                "--node-name", "worker-private", "--subcloud", "acme")
        s.start_worker("eu", LONG_MODEL, "worker-public")
        s.start_api()
        public = s.new_key("pub")
        private = s.cli("keys", "create", "--account", "acme", "--credits", "5", "--subcloud",
                        "acme").stdout.strip().splitlines()[-1]
        s.wait_for_model(public, LONG_MODEL)
        time.sleep(1.5)  # both heartbeats seen
        runs = {}
        for name, key in (("private", private), ("public", public)):
            for _ in range(3):
                r = httpx.post(f"{s.base_url}/v1/chat/completions", json=SMALL, timeout=30,
                               headers={"Authorization": f"Bearer {key}"})
                assert r.status_code == 200, r.text
                started = [e for _, e in job_log(s.nats_url, r.headers["x-inferbus-job"])
                           if isinstance(e, JobStarted)]
                runs.setdefault(name, set()).update(e.node_id for e in started)
        assert runs["private"] == {node_id(s, "worker-private")}
        assert runs["public"] == {node_id(s, "worker-public")}
    finally:
        s.stop()


def test_gb_us_ph_clients_land_on_eu_na_sea_and_ph_goes_global_once_sea_is_gone(
        fresh_nats, models_dir, tmp_path, geoip_db):
    from tests.conftest import TINY_MODEL
    s = make_stack(fresh_nats, models_dir, tmp_path, INFERBUS_GEOIP_DB=str(geoip_db),
                   INFERBUS_TRUSTED_PROXIES='["127.0.0.0/8"]')
    try:
        for zone in ("eu", "na", "sea"):
            s.start_worker(zone, TINY_MODEL)
        s.start_api()
        key = s.new_key("world")
        s.wait_for_model(key, TINY_MODEL, zones=3)

        def served(ip: str) -> tuple[str, str]:
            r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                           json={**SMALL, "model": TINY_MODEL},
                           headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": ip})
            assert r.status_code == 200, r.text
            return r.headers["x-inferbus-zone"], r.headers["x-inferbus-route"]

        assert served("81.2.69.142") == ("eu", "zone")  # GB
        assert served("216.160.83.56") == ("na", "zone")  # US
        assert served("202.196.224.1") == ("sea", "zone")  # PH
        s.kill("worker-sea")
        time.sleep(3.5)  # the sea node leaves routing within 3 s
        zone, route = served("202.196.224.1")
        assert route == "global" and zone in ("eu", "na")
    finally:
        s.stop()
