"""Discovery through the real stack: candidates come from live heartbeats, and a
node that stops heartbeating (killed, or frozen) is gone within the 3 s rule."""
import shutil
import signal
import time

import httpx
import pytest

from api.live_nodes import LIVE_S
from tests.conftest import TINY_MODEL
from tests.natsd import NatsServer
from tests.stack import Stack

BERLIN, PARIS, MADRID = ("52.5", "13.4"), ("48.86", "2.35"), ("40.42", "-3.7")
POLL_S = 0.05


@pytest.fixture(scope="module")
def geo_stack(tmp_path_factory, models_dir):
    data = tmp_path_factory.mktemp("discovery")
    shutil.copytree(models_dir, data / "models")
    server = NatsServer(data / "nats-store").start()  # its own NATS: never the machine's 4222
    s = Stack(data, server.url)
    for name, (lat, lon), tier in (("worker-berlin", BERLIN, "5"), ("worker-paris", PARIS, "2"),
                                   ("worker-madrid", MADRID, "3")):
        s.start(name, "worker", "--zone", "eu", "--model", TINY_MODEL, "--node-name", name,
                "--lat", lat, "--lon", lon, "--tier", tier)
    s.start_api()
    try:
        s.key = s.new_key("geo")
        s.wait_for_model(s.key, TINY_MODEL)
        wait_for(s, lambda data: len(data) == 3, 60)
        yield s
    finally:
        for proc in s.procs.values():
            proc.send_signal(signal.SIGCONT)  # a frozen worker cannot handle SIGTERM
        s.stop()
        server.stop()


def query(s: Stack, **params) -> httpx.Response:
    return httpx.get(f"{s.base_url}/v1/network/candidates", timeout=5,
                     params={"model": TINY_MODEL, "near": ",".join(BERLIN), "k": 10, **params},
                     headers={"Authorization": f"Bearer {s.key}"})


def wait_for(s: Stack, predicate, timeout: float, **params) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        r = query(s, **params)
        assert r.status_code == 200, r.text
        if predicate(data := r.json()["data"]):
            return data
        assert time.monotonic() < deadline, data
        time.sleep(POLL_S)


def at(data: list[dict], lat: str) -> list[dict]:
    return [c for c in data if c["lat"] == float(lat)]


def test_candidates_are_the_live_nodes_nearest_first_within_constraints(geo_stack):
    data = query(geo_stack).json()["data"]
    assert [(c["lat"], c["tier"]) for c in data] == [(52.5, 5), (48.86, 2), (40.42, 3)]
    assert data[0]["distance_km"] == 0.0 and data[1]["distance_km"] == pytest.approx(878, abs=5)
    assert [c["lat"] for c in query(geo_stack, within_km="1000").json()["data"]] == [52.5, 48.86]
    assert [c["tier"] for c in query(geo_stack, tier="2-3").json()["data"]] == [2, 3]
    bad = query(geo_stack, within_km="far")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "within_km"
    assert httpx.get(f"{geo_stack.base_url}/v1/network/candidates",
                     params={"model": TINY_MODEL}).status_code == 401


def test_a_killed_node_is_gone_from_candidates_within_3_s(geo_stack):
    s = geo_stack
    wait_for(s, lambda data: at(data, BERLIN[0]), 10)
    killed = time.monotonic()
    s.kill("worker-berlin", signal.SIGKILL)  # no withdrawal: only the liveness rule removes it
    data = wait_for(s, lambda data: not at(data, BERLIN[0]), LIVE_S + 2)
    gone_after = time.monotonic() - killed
    print(f"killed node gone from candidates after {gone_after:.2f} s")
    assert gone_after <= LIVE_S + 0.25  # the 3 s rule, plus one poll and the watch's delivery
    assert gone_after > LIVE_S - 1.5  # it was the rule (last beat <= 1 s before), not a delete
    assert at(data, PARIS[0]) and at(data, MADRID[0])  # the others never left


def test_a_frozen_node_leaves_within_3_s_and_returns_when_it_resumes(geo_stack):
    s = geo_stack
    proc = s.procs["worker-paris"]
    wait_for(s, lambda data: at(data, PARIS[0]), 10)
    frozen = time.monotonic()
    proc.send_signal(signal.SIGSTOP)  # connection open, heartbeats stopped
    try:
        wait_for(s, lambda data: not at(data, PARIS[0]), LIVE_S + 2)
        gone_after = time.monotonic() - frozen
        print(f"frozen node gone from candidates after {gone_after:.2f} s")
        assert gone_after <= LIVE_S + 0.25
    finally:
        proc.send_signal(signal.SIGCONT)
    wait_for(s, lambda data: at(data, PARIS[0]), 5)
