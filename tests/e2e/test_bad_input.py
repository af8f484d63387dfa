"""Bad input gets an OpenAI-shaped error before anything reaches the bus."""
import asyncio

import httpx
import nats
import pytest

from bus import subjects
from tests.conftest import TINY_MODEL

GOOD = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def events_in_log(url: str) -> int:
    async def count() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(subjects.EVENTS_STREAM)).state.messages
        finally:
            await nc.close()
    return asyncio.run(count())


@pytest.mark.parametrize("body,status,code", [
    ("{not json", 400, "invalid_json"),
    ({"model": TINY_MODEL}, 400, "invalid_request"),
    ({**GOOD, "model": "no-such-model"}, 404, "model_not_found"),
    ({**GOOD, "max_tokens": 0}, 400, "invalid_request"),
    ({**GOOD, "max_tokens": 1000}, 400, "context_length_exceeded"),  # the model's is 512
    ({**GOOD, "max_tokens": 10**6}, 400, "max_tokens_too_large"),  # the network's limit
    ({**GOOD, "messages": "hi"}, 400, "invalid_request"),
    ({**GOOD, "temperature": "hot"}, 400, "invalid_request"),
    ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_request"),
])
def test_bad_request_is_rejected_before_publishing(stack, key, nats_server, body, status, code):
    before = events_in_log(nats_server.url)
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions",
                   headers={"Authorization": f"Bearer {key}",
                            "Content-Type": "application/json"}, **kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"] and "type" in error
    assert events_in_log(nats_server.url) == before


@pytest.mark.parametrize("auth", [None, "Bearer ib-unknown-key-0000000000000000000000000000",
                                  "Basic abc", "Bearer"])
def test_missing_or_unknown_key_is_a_401(stack, auth):
    headers = {"Authorization": auth} if auth else {}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=GOOD, headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_unknown_zone_preference_is_a_400(stack, key):
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=GOOD,
                   headers={"Authorization": f"Bearer {key}", "X-Inferbus-Zone": "moon"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_zone"


def test_key_is_printed_once_on_its_own_last_line(stack):
    out = stack.cli("keys", "create", "--account", "bob").stdout.strip().splitlines()
    assert out[-1].startswith("ib-") and len(out[-1]) >= 35 and " " not in out[-1]


def test_malformed_job_is_dropped_and_workers_keep_serving(stack, key, nats_server):
    """Only services queue jobs; a worker drops one it cannot read (the sweep refunds
    whatever was reserved for it) rather than see it again and again."""
    async def poison_then_wait() -> bool:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        bad = await js.publish(subjects.jobs("eu", TINY_MODEL), b"not a job")
        try:
            for _ in range(100):
                try:
                    await js.get_msg(subjects.JOBS_STREAM, bad.seq)
                except nats.js.errors.NotFoundError:
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            await nc.close()

    assert asyncio.run(poison_then_wait())
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=GOOD, timeout=30,
                   headers={"Authorization": f"Bearer {key}", "X-Inferbus-Zone": "eu"})
    assert r.status_code == 200
