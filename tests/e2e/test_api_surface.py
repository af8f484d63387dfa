"""What SDK clients expect of the API around a completion: async jobs they can
poll, health and model lookups, errors before a stream starts, ``n`` choices,
and fair billing for callers that hang up or race one Idempotency-Key."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from api.admission import idempotent_job_id
from tests.conftest import TINY_MODEL
from tests.e2e.test_credits import LONG, api, cost, settled, wait_status

CHAT = {"model": TINY_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def client(stack, key):
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)


def test_async_job_through_the_sdk_gives_a_job_to_poll_at_an_absolute_url(client):
    raw = client.chat.completions.with_raw_response.create(
        model=TINY_MODEL, messages=CHAT["messages"], max_tokens=5,
        extra_headers={"Prefer": "respond-async"})
    assert raw.status_code == 202
    job = raw.http_response.json()
    assert job["object"] == "job" and "choices" not in job
    assert raw.headers["location"] == job["url"] == f"{client.base_url}jobs/{job['id']}"
    deadline = time.monotonic() + 30
    while (polled := client.get(job["url"], cast_to=object))["status"] != "completed":
        assert time.monotonic() < deadline, polled
        time.sleep(0.1)
    completion = ChatCompletion.model_validate(polled["result"])
    assert completion.choices[0].message.role == "assistant"


def test_health_answers_on_both_paths_without_a_key(stack):
    for path in ("/health", "/healthz"):
        r = httpx.get(stack.base_url + path)
        assert r.status_code == 200 and r.json()["status"] == "ok"


def test_a_model_is_found_by_its_id_and_an_unknown_one_is_a_404(client):
    assert client.models.retrieve(TINY_MODEL).id == TINY_MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["code"] == "model_not_found"


def test_a_context_overflow_is_an_http_error_before_the_stream_starts(stack, key):
    prompt = "word " * 3000  # far beyond the tiny model's 512-token context
    with api(stack, key) as http:
        r = http.post("/v1/chat/completions", json={
            **CHAT, "stream": True, "messages": [{"role": "user", "content": prompt}]})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert r.headers["content-type"].startswith("application/json")


def test_n_choices_are_each_a_job_billed_and_returned_by_index(stack):
    key = stack.new_key("nina", credits="10")
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model=TINY_MODEL, messages=CHAT["messages"], max_tokens=5, n=2, seed=3)
    resp = raw.parse()
    assert [c.index for c in resp.choices] == [0, 1]
    assert len(raw.headers["x-inferbus-job"].split(",")) == 2
    with api(stack, key) as http:
        spent = settled(http)["spent"]
    assert spent == pytest.approx(cost(resp.usage.model_dump()))
    chunks = list(sdk.chat.completions.create(
        model=TINY_MODEL, messages=CHAT["messages"], max_tokens=5, n=2, stream=True,
        stream_options={"include_usage": True}))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert sum(1 for c in chunks if c.usage is not None) == 1
    finished = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(c.index for c in finished) == [0, 1]


def test_n_above_one_is_refused_for_an_async_call(stack, key):
    with api(stack, key) as http:
        r = http.post("/v1/chat/completions", json={**CHAT, "n": 2},
                      headers={"Prefer": "respond-async"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"


def test_sync_caller_that_hangs_up_stops_its_job_and_pays_what_was_produced(stack):
    key = stack.new_key("hank", credits="100")
    job_id = idempotent_job_id("hank", "hang-up")  # how the API names it

    def call_then_hang_up() -> None:
        try:
            with api(stack, key) as caller:
                caller.post("/v1/chat/completions", json=LONG, timeout=2.0,
                            headers={"Idempotency-Key": "hang-up"})
        except httpx.TimeoutException:
            pass  # the client gives up: its connection closes

    threading.Thread(target=call_then_hang_up).start()
    with api(stack, key) as http:
        job = wait_status(http, job_id, ("cancelled",), timeout=30)
        assert 0 < job["usage"]["completion_tokens"] < LONG["max_tokens"]
        assert settled(http)["spent"] == pytest.approx(cost(job["usage"]))


def test_concurrent_calls_with_one_idempotency_key_all_get_the_one_answer(stack):
    key = stack.new_key("ivan", credits="10")

    def call(_: int) -> httpx.Response:
        with api(stack, key) as http:
            return http.post("/v1/chat/completions", json=CHAT,
                             headers={"Idempotency-Key": "same-20"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(call, range(20)))
    assert [a.status_code for a in answers] == [200] * 20, [a.text for a in answers]
    assert len({a.json()["choices"][0]["message"]["content"] for a in answers}) == 1
    assert len({a.json()["id"] for a in answers}) == 1
    with api(stack, key) as http:
        assert settled(http)["spent"] == pytest.approx(cost(answers[0].json()["usage"]))




def test_logprobs_too_large_for_one_result_are_refused_before_anything_runs(stack, key):
    with api(stack, key) as http:
        r = http.post("/v1/chat/completions", json={
            **CHAT, "max_tokens": 4000, "logprobs": True, "top_logprobs": 20})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "top_logprobs"
