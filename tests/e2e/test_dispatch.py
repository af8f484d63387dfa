"""Dispatch to chosen nodes: constraints in headers, next candidate when one
does not start the job in time, 503 when none qualifies, heavy jobs to tier >= 4."""
import time

import httpx
import pytest

from bus import subjects
from bus.events import JobEscalated, JobStarted
from tests.conftest import LONG_MODEL
from tests.e2e.test_geo_routing import node_id
from tests.eventlog import job_log
from tests.stack import Stack, isolated_stack

BERLIN, POTSDAM, MADRID = ("52.52", "13.40"), ("52.39", "13.06"), ("40.42", "-3.70")
SMALL = {"model": LONG_MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def placed(models_dir, tmp_path_factory):
    """Three placed nodes on a NATS of their own (candidates must see only these)."""
    # One job per node: "busy" means a node with no room for the next job.
    env = {"INFERBUS_NODE_WAIT_S": "1", "INFERBUS_MAX_BATCH": "1"}
    with isolated_stack(tmp_path_factory.mktemp("dispatch"), models_dir, env) as s:
        for name, (lat, lon), tier in (("berlin", BERLIN, "1"), ("potsdam", POTSDAM, "1"),
                                       ("madrid", MADRID, "5")):
            s.start(name, "worker", "--zone", "eu", "--model", LONG_MODEL, "--node-name", name,
                    "--lat", lat, "--lon", lon, "--tier", tier)
        s.start_api()
        s.key = s.new_key("disp", credits="100")
        s.wait_for_model(s.key, LONG_MODEL)
        deadline = time.monotonic() + 30
        while len(httpx.get(f"{s.base_url}/v1/network/candidates", params={"model": LONG_MODEL},
                            headers={"Authorization": f"Bearer {s.key}"}).json()["data"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        yield s


def ran_on(s: Stack, job_id: str) -> list[str]:
    names = {node_id(s, n): n for n in ("berlin", "potsdam", "madrid")}
    return [names[e.node_id] for _, e in job_log(s.nats_url, job_id)
            if isinstance(e, JobStarted)]


def post(s, body, **headers):
    return httpx.post(f"{s.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {s.key}", **headers})


def test_constraints_send_the_job_to_the_nearest_qualifying_node(placed):
    r = post(placed, SMALL, **{"X-Inferbus-Near": ",".join(BERLIN), "X-Inferbus-Within-Km": "10"})
    assert r.status_code == 200, r.text
    assert ran_on(placed, r.headers["x-inferbus-job"]) == ["berlin"]


def test_busy_candidate_is_skipped_for_the_next_after_the_node_wait(placed):
    near = {"X-Inferbus-Near": ",".join(BERLIN), "X-Inferbus-Within-Km": "50"}
    busy = post(placed, {**SMALL, "max_tokens": 6000}, Prefer="respond-async", **near).json()["id"]
    time.sleep(0.5)
    r = post(placed, SMALL, **near)
    assert r.status_code == 200
    job_id = r.headers["x-inferbus-job"]
    assert ran_on(placed, job_id) == ["potsdam"]
    moves = [e for _, e in job_log(placed.nats_url, job_id) if isinstance(e, JobEscalated)]
    assert len(moves) == 1 and subjects.is_node_queue(moves[0].to)
    assert httpx.delete(f"{placed.base_url}/v1/jobs/{busy}", timeout=30,
                        headers={"Authorization": f"Bearer {placed.key}"}).status_code == 200


def test_constraints_no_live_node_meets_are_a_503(placed):
    r = post(placed, SMALL, **{"X-Inferbus-Near": "-33.9,151.2", "X-Inferbus-Within-Km": "50"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_capacity"
    r = post(placed, SMALL, **{"X-Inferbus-Tier": "6"})
    assert r.status_code == 503


def test_heavy_job_goes_to_a_tier_four_or_better_node(placed):
    auth = {"Authorization": f"Bearer {placed.key}"}
    deadline = time.monotonic() + 20
    while not httpx.get(f"{placed.base_url}/v1/network/candidates", headers=auth,
                        params={"model": LONG_MODEL, "tier": "4-6"}).json()["data"]:
        assert time.monotonic() < deadline, "madrid (tier 5) never live"
        time.sleep(0.1)
    r = post(placed, {**SMALL, "max_tokens": 1100}, Prefer="respond-async")
    job_id = r.json()["id"]
    deadline = time.monotonic() + 20
    while not (where := ran_on(placed, job_id)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert where == ["madrid"], job_log(placed.nats_url, job_id)
    assert httpx.delete(f"{placed.base_url}/v1/jobs/{job_id}", timeout=30,
                        headers={"Authorization": f"Bearer {placed.key}"}).status_code == 200
