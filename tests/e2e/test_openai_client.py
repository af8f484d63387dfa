"""The official openai client against a running stack: sync, stream, async."""
import time

import httpx
import openai
import pytest

from tests.conftest import TINY_MODEL

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def client(stack, key):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def test_sync_chat_completion_returns_text_and_usage(client):
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    resp = raw.parse()
    assert resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert 1 <= resp.usage.completion_tokens <= 8 and resp.usage.prompt_tokens > 0
    assert raw.headers["x-inferbus-zone"] in ("eu", "na")
    assert raw.headers["x-inferbus-route"] in ("zone", "global")


def test_same_seed_gives_same_text(client):
    texts = {client.chat.completions.create(model=TINY_MODEL, messages=MESSAGES, max_tokens=8,
                                            seed=7, temperature=1.0).choices[0].message.content
             for _ in range(2)}
    assert len(texts) == 1


def test_streamed_chat_matches_sync_and_ends_with_usage(client):
    kw = dict(model=TINY_MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    sync = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == sync.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        sync.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        sync.usage.completion_tokens


def test_legacy_completion(client):
    resp = client.completions.create(model=TINY_MODEL, prompt="Once upon", max_tokens=5,
                                     temperature=0)
    assert resp.object == "text_completion" and resp.usage.completion_tokens <= 5


def test_models_lists_what_live_workers_serve(client):
    assert TINY_MODEL in [m.id for m in client.models.list()]


def test_async_job_is_polled_to_completion(stack, key):
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{stack.base_url}/v1/chat/completions",
                   headers={**auth, "Prefer": "respond-async"},
                   json={"model": TINY_MODEL, "messages": MESSAGES, "max_tokens": 6})
    assert r.status_code == 202
    location = r.headers["location"]
    assert location == f"{stack.base_url}/v1/jobs/{r.json()['id']}"  # absolute
    deadline = time.monotonic() + 30
    while (job := httpx.get(location, headers=auth).json())["status"] in (
            "queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert job["status"] == "completed"
    assert job["result"]["object"] == "chat.completion"
    assert job["usage"] == job["result"]["usage"]
    assert job["zone"] in ("eu", "na") and job["finished_at"] >= job["created_at"]


def test_sync_job_is_visible_in_the_job_read_model(client, stack, key):
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=4)
    job_id = raw.headers["x-inferbus-job"]
    job = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}",
                    headers={"Authorization": f"Bearer {key}"}).json()
    assert job["result"]["choices"][0]["message"]["content"] == \
        raw.parse().choices[0].message.content


def test_another_accounts_job_is_not_found(client, stack):
    job_id = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, messages=MESSAGES, max_tokens=2).headers["x-inferbus-job"]
    other = stack.new_key("mallory")
    r = httpx.get(f"{stack.base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found"
