"""The SDKs a new user reaches for first (the official ``openai`` SDK, LangChain's
``ChatOpenAI`` and ``litellm``) against a whole stack serving the real SmolLM2:
a parameter we do not serve is a 400 naming it, a tool-call conversation is
accepted, logprobs parse in the SDK's types, structured outputs validate and
tool calls come back in OpenAI's shape, sync and streamed. Generations are few
and short: SmolLM2 runs ~15 tokens/s on a CPU here."""
import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.stack import pulled_model_stack

MODEL = "smollm2-135m-instruct"
pytestmark = pytest.mark.slow
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def sdk_stack(tmp_path_factory):
    with pulled_model_stack(tmp_path_factory.mktemp("sdk"), MODEL, "oc", "sdk") as s:
        yield s


@pytest.fixture(scope="module")
def client(sdk_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sdk_stack.base_url}/v1", api_key=sdk_stack.key,
                         max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_model(sdk_stack):
    from langchain_openai import ChatOpenAI
    return ChatOpenAI(model=MODEL, base_url=f"{sdk_stack.base_url}/v1", api_key=sdk_stack.key,
                      max_retries=0, timeout=120, temperature=0, max_tokens=24)


def test_an_unknown_parameter_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4,
                                       extra_body={"top_k": 40})
    assert err.value.param == "top_k" and err.value.code == "unknown_parameter"


def test_an_openai_parameter_not_served_is_a_400_naming_it(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4,
                                       modalities=["text", "audio"])
    assert err.value.param == "modalities" and err.value.code == "unsupported_parameter"


def test_a_tool_call_round_trip_conversation_is_accepted(client):
    resp = client.chat.completions.create(model=MODEL, max_tokens=6, temperature=0, messages=[
        *ASK, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}],
        tools=[WEATHER], tool_choice="none")
    assert resp.choices[0].message.content and resp.choices[0].message.tool_calls is None


def test_logprobs_parse_in_the_sdk_sync_and_streamed(client):
    streamed = [t for chunk in client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2,
        stream=True) for c in chunk.choices if c.logprobs for t in c.logprobs.content]
    assert 0 < len(streamed) <= 4 and all(len(t.top_logprobs) == 2 for t in streamed)
    resp = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4,
                                          temperature=0, logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy: the likeliest
    assert [t.token for t in streamed] == [t.token for t in content]


def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"capital": {"enum": ["Paris", "Rome", "Oslo"]},
                                               "sunny": {"type": "boolean"}},
              "required": ["capital", "sunny"], "additionalProperties": False}
    resp = client.chat.completions.create(
        model=MODEL, max_tokens=24, temperature=0,
        messages=[{"role": "user", "content": "The capital of France, as JSON."}],
        response_format={"type": "json_schema",
                         "json_schema": {"name": "capital", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(resp.choices[0].message.content), schema)


def test_required_tool_call_streams_through_the_sdks_stream_helper(client):
    with client.chat.completions.stream(model=MODEL, messages=ASK, max_tokens=24,
                                        temperature=0, tools=[WEATHER],
                                        tool_choice="required") as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_auto_tool_choice_answers_with_text_or_a_whole_call(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24,
                                                 temperature=0, tools=[WEATHER], stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reason = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    calls = [t for d in deltas for t in d.tool_calls or ()]
    if reason == "tool_calls":
        assert calls[0].function.name == "get_weather"
        assert json.loads("".join(t.function.arguments for t in calls))["city"]
    else:
        assert "".join(d.content or "" for d in deltas) and not calls


class Capital(BaseModel):
    country: Literal["France", "Italy"]
    city: Literal["Paris", "Rome"]


def test_langchain_structured_output_returns_the_object(chat_model):
    answer = chat_model.with_structured_output(Capital).invoke(
        "Which city is the capital of France?")
    assert isinstance(answer, Capital)


def test_langchain_bind_tools_with_required_choice_returns_a_tool_call(chat_model):
    def get_weather(city: Literal["Paris", "Rome"]) -> str:
        """The weather now in a city."""
        return "sunny"

    message = chat_model.bind_tools([get_weather], tool_choice="required").invoke(
        "What is the weather in Paris?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["city"] in ("Paris", "Rome")


def test_langchain_streams_a_tool_call_it_can_assemble(chat_model):
    chunks = list(chat_model.bind_tools([WEATHER], tool_choice="required").stream(
        "What is the weather in Rome?"))
    message = chunks[0]
    for chunk in chunks[1:]:
        message += chunk
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"]["city"] in ("Paris", "Rome")


def test_legacy_completion_logprobs_parse_in_the_sdk(client):
    resp = client.completions.create(model=MODEL, prompt="The capital of France is",
                                     max_tokens=3, temperature=0, logprobs=2)
    logprobs = resp.choices[0].logprobs
    assert "".join(logprobs.tokens) == resp.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == resp.usage.completion_tokens
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0


def test_litellm_serves_a_plain_chat_and_a_tool_call(sdk_stack, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch: offline here
    import litellm
    common = {"model": f"openai/{MODEL}", "api_base": f"{sdk_stack.base_url}/v1",
              "api_key": sdk_stack.key, "max_tokens": 24, "temperature": 0, "num_retries": 0}
    plain = litellm.completion(messages=[{"role": "user", "content": "Say hello."}], **common)
    assert plain.choices[0].message.content
    called = litellm.completion(messages=ASK, tools=[WEATHER], tool_choice="required", **common)
    assert called.choices[0].message.tool_calls[0].function.name == "get_weather"
