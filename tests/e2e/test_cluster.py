"""The stack on a 3-node JetStream cluster (replicas 3, fsync on every write):
losing a stream leader under load, or losing quorum, loses no accepted job and
charges nothing twice or for nothing."""
from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter, defaultdict

import httpx
import nats
import pytest

from bus import subjects
from bus.events import (CreditsDebited, CreditsRefunded, CreditsReserved, JobCancelled,
                        JobCompleted, JobExpired, JobFailed)
from tests.conftest import TINY_MODEL
from tests.eventlog import read_log
from tests.natsd import NatsCluster, free_port
from tests.stack import Stack

TERMINAL = (JobCompleted, JobFailed, JobCancelled, JobExpired)
BODY = {"model": TINY_MODEL, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}]}
ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def cluster(tmp_path):
    c = NatsCluster(tmp_path / "cluster")
    try:
        yield c.start()
    finally:
        c.stop()


@pytest.fixture
def cluster_stack(cluster, models_dir, tmp_path):
    shutil.copytree(models_dir, tmp_path / "models")
    s = Stack(tmp_path, cluster.url, env_extra={
        "INFERBUS_STREAM_REPLICAS": "3", "INFERBUS_JOB_ACK_WAIT_S": "3",
        "INFERBUS_JOB_TIMEOUT_S": "30", "INFERBUS_EXPIRY_GRACE_S": "2",
        "INFERBUS_PRODUCTION": "1", "INFERBUS_NATS_MONITOR_URL": cluster.monitor_url})
    s.start_projector()
    s.start_worker("eu", TINY_MODEL, "worker-eu-a")
    s.start_worker("eu", TINY_MODEL, "worker-eu-b")
    s.start_api()
    try:
        s.key = s.new_key("dora", credits="1000")
        s.wait_for_model(s.key, TINY_MODEL)
        yield s
    finally:
        s.stop()


def money_by_job(log) -> dict[str, Counter]:
    """Per job: how many reservations, debits and refunds the log holds."""
    money: dict[str, Counter] = defaultdict(Counter)
    for _, e in log:
        if isinstance(e, (CreditsReserved, CreditsDebited, CreditsRefunded)):
            money[e.job_id][type(e).__name__] += 1
    return money


def cluster_log(url: str):
    async def read():
        nc = await nats.connect(url.split(","), connect_timeout=2)
        try:
            return await read_log(nc.jetstream(timeout=5))
        finally:
            await nc.close()
    return asyncio.run(read())


def settled_log(url: str, job_ids: set[str], timeout: float = 60.0):
    """The log once every job in ``job_ids`` has ended and its reservation is closed."""
    deadline = time.monotonic() + timeout
    while True:
        log = cluster_log(url)
        ended = {e.job_id for _, e in log if isinstance(e, TERMINAL)}
        refunded = {j for j, m in money_by_job(log).items() if m["CreditsRefunded"]}
        open_jobs = job_ids - (ended & refunded)
        if not open_jobs or time.monotonic() > deadline:
            return log, open_jobs
        time.sleep(0.5)


async def submit(client: httpx.AsyncClient, results: list) -> None:
    """One async submission: (status, job id if accepted, else the error body)."""
    try:
        r = await client.post("/v1/chat/completions", json=BODY, headers=ASYNC)
    except httpx.HTTPError as exc:  # the API itself stayed up; a transport error is a failure
        results.append((type(exc).__name__, {"error": {"type": type(exc).__name__}}))
        return
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text}
    results.append((r.status_code, body["id"] if r.status_code == 202 else body))


async def steady_load(stack: Stack, total: int, per_s: float, on_progress=None) -> list:
    """``total`` submissions at about ``per_s`` a second, several in flight;
    ``on_progress(done)`` runs after each one (the test's chaos hook)."""
    results: list = []
    lanes = 4
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {stack.key}"}) as client:
        async def lane(n: int) -> None:
            for _ in range(n):
                started = time.monotonic()
                await submit(client, results)
                if on_progress is not None:
                    await on_progress(len(results))
                await asyncio.sleep(max(0.0, lanes / per_s - (time.monotonic() - started)))
        await asyncio.gather(*(lane(total // lanes + (i < total % lanes)) for i in range(lanes)))
    return results


def sync_request_completes(stack: Stack, within_s: float = 30.0) -> str:
    """A new sync request completes, retried while the cluster still elects
    leaders; returns its job id."""
    deadline = time.monotonic() + within_s
    while True:
        r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=BODY, timeout=30,
                       headers={"Authorization": f"Bearer {stack.key}"})
        if r.status_code == 200:
            return r.headers["x-inferbus-job"]
        if time.monotonic() > deadline:
            raise AssertionError(f"no request completed in {within_s}s: {r.status_code} {r.text}")
        time.sleep(0.5)


def assert_nothing_lost_or_double_charged(stack: Stack, results: list, completed: str) -> None:
    """Every accepted job (and the sync job ``completed``) ended and was settled
    exactly once; refusals are 503s and charged nothing; the audit passes."""
    accepted = {job for status, job in results if status == 202} | {completed}
    log, open_jobs = settled_log(stack.nats_url, accepted)
    assert not open_jobs, f"accepted jobs never ended or never closed: {open_jobs}"
    money = money_by_job(log)
    for job in accepted:
        assert money[job]["CreditsReserved"] == 1, (job, money[job])
        assert money[job]["CreditsRefunded"] == 1, (job, money[job])
        assert money[job]["CreditsDebited"] <= 1, (job, money[job])
    refused = [body for status, body in results if status != 202]
    for body in refused:  # a refused request is a 503 in OpenAI's shape, never a charge
        assert body.get("error", {}).get("type") == "service_unavailable", body
    charged = {j for j, m in money.items() if m["CreditsDebited"]}
    assert charged <= accepted
    audit = stack.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_killing_the_stream_leader_under_load_loses_no_acked_job(cluster, cluster_stack):
    s = cluster_stack
    leader = cluster.leader(subjects.JOBS_STREAM)
    chaos_at: dict[str, int] = {}

    async def chaos(done: int) -> None:
        if done >= 10 and "kill" not in chaos_at:
            chaos_at["kill"] = done
            cluster.kill(leader)  # SIGKILL the work queue's leader mid-load
        elif done >= 36 and "restart" not in chaos_at:
            chaos_at["restart"] = done
            await asyncio.to_thread(cluster.restart, leader, False)

    results = asyncio.run(steady_load(s, total=60, per_s=3.0, on_progress=chaos))
    assert set(chaos_at) == {"kill", "restart"}
    cluster.wait_ready()
    completed = sync_request_completes(s)  # and service is back once the election is over
    statuses = Counter(status if status == 202 else body.get("error", {}).get("code")
                       for status, body in results)
    assert all(status == 202 for status, _ in results[:8]), statuses
    assert sum(status == 202 for status, _ in results[-12:]) >= 6, statuses  # resumed under load
    assert_nothing_lost_or_double_charged(s, results, completed)


def test_two_of_three_down_answers_503_and_recovers(cluster, cluster_stack):
    s = cluster_stack
    before = asyncio.run(steady_load(s, total=8, per_s=8.0))
    assert all(status == 202 for status, _ in before)
    leader = cluster.leader(subjects.JOBS_STREAM)
    others = [i for i in range(3) if i != leader]
    for i in others:
        cluster.kill(i)

    headers = {"Authorization": f"Bearer {s.key}"}
    started = time.monotonic()
    r = httpx.post(f"{s.base_url}/v1/chat/completions", json=BODY, headers=headers, timeout=30)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "service_unavailable"
    assert time.monotonic() - started < 15

    for i in others:
        cluster.restart(i, wait=False)
    cluster.wait_ready()
    completed = sync_request_completes(s)
    assert_nothing_lost_or_double_charged(s, before, completed)


def test_production_api_refuses_a_single_unreplicated_server(fresh_nats, tmp_path):
    s = Stack(tmp_path, fresh_nats.url, env_extra={"INFERBUS_PRODUCTION": "1"})
    out = s.cli("api", "--port", str(free_port()), check=False)
    assert out.returncode != 0
    assert out.stderr.startswith("inferbus api: INFERBUS_PRODUCTION=1 refuses to start")
    assert len(out.stderr.strip().splitlines()) == 1
    assert "INFERBUS_STREAM_REPLICAS is 1; set it to 3" in out.stderr
