"""A bad request body is answered with a 400 in OpenAI's error shape that speaks
of the request's own fields, never of pydantic's internals."""
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api import errors
from api.chat_request import ChatCompletionRequest, CompletionRequest

app = FastAPI()
errors.install(app)


@app.post("/v1/chat/completions")
async def _chat(body: ChatCompletionRequest) -> dict:
    return {"ok": True}


@app.post("/v1/completions")
async def _legacy(body: CompletionRequest) -> dict:
    return {"ok": True}


client = TestClient(app)
USER = [{"role": "user", "content": "hi"}]


def error(body, path="/v1/chat/completions") -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    return r.json()["error"]


def test_an_unknown_parameter_is_refused_by_name():
    e = error({"model": "m", "messages": USER, "top_k": 40})
    assert (e["param"], e["code"]) == ("top_k", "unknown_parameter")
    assert e["message"] == "Unrecognized request argument supplied: top_k"


@pytest.mark.parametrize("param,value", [("audio", {"voice": "alloy", "format": "wav"}),
                                         ("modalities", ["text", "audio"]),
                                         ("prediction", {"type": "content", "content": "x"}),
                                         ("web_search_options", {}),
                                         ("function_call", "auto")])
def test_an_openai_parameter_not_served_is_refused_by_name(param, value):
    e = error({"model": "m", "messages": USER, param: value})
    assert (e["param"], e["code"]) == (param, "unsupported_parameter")
    assert e["message"].startswith(f"{param}: ")


def test_legacy_echo_is_refused_by_name():
    e = error({"model": "m", "prompt": "p", "echo": True}, "/v1/completions")
    assert (e["param"], e["code"]) == ("echo", "unsupported_parameter")


def test_wrong_content_is_spoken_of_as_the_messages_field():
    e = error({"model": "m", "messages": [*USER, {"role": "user", "content": 5}]})
    assert e["message"] == "messages[1].content: must be a string or a list of text parts"
    assert e["param"] == "messages"


def test_an_image_part_is_refused_as_text_only():
    e = error({"model": "m", "messages": [*USER, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]})
    assert e["message"] == ("messages[1].content[0]: image parts are not served by this "
                            "network (text only)")
    assert e["param"] == "messages"


@pytest.mark.parametrize("body,message", [
    ({"model": "m"}, "messages: is required"),
    ({"model": "m", "messages": USER, "stop": 5},
     "stop: must be a string or a list of at most 4 strings"),
    ({"model": "m", "messages": USER, "logit_bias": {"a": 1}},
     "logit_bias: 'a' is not a token id: keys are token ids as strings"),
    ({"model": "m", "messages": USER, "top_logprobs": 2}, "top_logprobs: needs logprobs: true"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]},
     "messages[0]: a tool message needs the tool_call_id of the call it answers"),
    ({"model": "m", "messages": USER, "tool_choice": "required"}, "tool_choice: needs tools"),
    ({"model": "m", "messages": USER, "response_format": {"type": "json_schema",
      "json_schema": {"name": "x", "schema": {"type": "objec"}}}},
     "response_format: the schema cannot be enforced: Invalid type: objec"),
])
def test_messages_name_the_field_in_the_requests_own_terms(body, message):
    assert error(body)["message"] == message


def test_a_body_that_is_not_an_object_says_so():
    assert error([1, 2])["message"] == "the request body must be a JSON object"


def test_a_tool_call_conversation_is_accepted():
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": [
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}]})
    assert r.status_code == 200, r.text
