"""50 concurrent requests over two API processes against credits for exactly 10."""
import asyncio
import shutil
import time

import httpx
import nats
import pytest

from bus.events import ChatMessage, CreditsDebited, new_id
from bus.pricing import Pricing, prompt_tokens_bound
from bus.publish import publish_event
from tests.conftest import LONG_MODEL
from tests.eventlog import read_log
from tests.natsd import free_port
from tests.stack import Stack

# Long jobs: none settles (and frees credits) while the 50 reservations race.
BODY = {"model": LONG_MODEL, "max_tokens": 3000,
        "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def two_apis(fresh_nats, models_dir, tmp_path):
    shutil.copytree(models_dir, tmp_path / "models")
    s = Stack(tmp_path, fresh_nats.url)
    s.start_projector()
    s.start_worker("eu", LONG_MODEL)
    s.port2 = free_port()
    s.start_api()
    s.start_api("api2", s.port2)
    try:
        s.wait_for_model(s.new_key("probe"), LONG_MODEL)
        yield s
    finally:
        s.stop()


def worst_case() -> int:
    msgs = tuple(ChatMessage(**m) for m in BODY["messages"])
    return Pricing().worst_case(LONG_MODEL, prompt_tokens_bound(msgs, None), BODY["max_tokens"])


async def burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}", "Prefer": "respond-async"}
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        return await asyncio.gather(*(
            client.post(f"{urls[i % 2]}/v1/chat/completions", json=BODY) for i in range(n)))


def test_fifty_concurrent_requests_with_credits_for_ten_run_exactly_ten(two_apis):
    s = two_apis
    credits = f"{worst_case() * 10 / 1_000_000:.6f}"
    key = s.new_key("zoe", credits=credits)
    urls = [s.base_url, f"http://127.0.0.1:{s.port2}"]
    responses = asyncio.run(burst(urls, key, 50))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(202) == 10 and codes.count(402) == 40, codes
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 402} == \
        {"insufficient_quota"}

    auth = {"Authorization": f"Bearer {key}"}
    for r in responses:
        if r.status_code == 202:
            assert httpx.delete(f"{s.base_url}/v1/jobs/{r.json()['id']}", headers=auth,
                                timeout=30).status_code == 200
    deadline = time.monotonic() + 60
    while (acct := httpx.get(f"{s.base_url}/v1/account", headers=auth).json())["held"]:
        assert time.monotonic() < deadline, acct
        time.sleep(0.1)
    assert acct["balance"] + acct["held"] + acct["spent"] == pytest.approx(float(credits))
    assert acct["balance"] >= 0

    time.sleep(1.0)  # let the relay and read models catch up before the audit replays
    audit = s.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr

    # The same log with one debit published twice (a new event id, so JetStream keeps it).
    asyncio.run(inject_double_debit(s.nats_url))
    audit = s.cli("audit", check=False)
    assert audit.returncode == 1
    assert "I1" in audit.stdout and "debit" in audit.stdout.lower(), audit.stdout


async def inject_double_debit(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    debit = next(e for _, e in await read_log(js) if isinstance(e, CreditsDebited) and e.amount)
    await publish_event(js, debit.model_copy(update={"event_id": new_id()}), debit.zone)
    await nc.close()
