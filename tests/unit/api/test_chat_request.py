"""Chat and completion request bodies: every OpenAI parameter honoured (mapped
into the job's Sampling) or refused by name, and conversations with tools."""
import json

import pytest
from pydantic import ValidationError

from api.chat_request import ChatCompletionRequest, CompletionRequest
from api.tools import MARKER, is_tool_job, must_call

USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def chat(**kw):
    return ChatCompletionRequest(**{"model": "m", "messages": USER, **kw})


def test_sampling_carries_every_parameter():
    s = chat(max_tokens=7, temperature=0, top_p=0.5, stop="\n", seed=3, presence_penalty=0.5,
             frequency_penalty=-1, logit_bias={"42": -100, "7": 5.5}, ignore_eos=True,
             logprobs=True, top_logprobs=4).sampling()
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (7, 0, 0.5, ("\n",), 3)
    assert (s.presence_penalty, s.frequency_penalty, s.ignore_eos) == (0.5, -1, True)
    assert s.logit_bias == {42: -100.0, 7: 5.5} and s.logprobs == 4


def test_logprobs_without_top_logprobs_asks_for_no_alternatives():
    assert chat(logprobs=True).sampling().logprobs == 0
    assert chat(logprobs=False).sampling().logprobs is None


def test_sdk_nulls_mean_the_defaults():
    s = chat(temperature=None, top_p=None, n=None, stream=None, presence_penalty=None).sampling()
    assert (s.temperature, s.top_p, s.presence_penalty) == (1.0, 1.0, 0.0)


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=7, max_completion_tokens=9).sampling().max_tokens == 9


def test_n_up_to_eight_choices_is_accepted():
    assert chat(n=8).choices == 8 and chat().choices == 1


@pytest.mark.parametrize("bad", [{"messages": []}, {"max_tokens": 0}, {"temperature": 3},
                                 {"n": 9}, {"stop": ["a"] * 5}, {"max_tokens": "many"},
                                 {"top_logprobs": 21, "logprobs": True}, {"top_logprobs": 2},
                                 {"logit_bias": {"x": 1}}, {"logit_bias": {"1": 100.5}},
                                 {"logit_bias": {"-1": 1}}, {"presence_penalty": 2.5},
                                 {"top_k": 5}, {"audio": {"voice": "alloy"}},
                                 {"functions": [{"name": "f"}]}, {"reasoning_effort": "low"}])
def test_invalid_or_unserved_requests_are_rejected(bad):
    with pytest.raises(ValidationError):
        chat(**bad)


def test_bookkeeping_parameters_sdks_send_are_accepted():
    chat(user="u", metadata={"a": "b"}, store=False, service_tier="auto",
         parallel_tool_calls=True, stream_options={"include_usage": True}, audio=None,
         modalities=["text"], prompt_cache_key="k", safety_identifier="s")


def test_completion_defaults_to_sixteen_tokens_like_openai():
    assert CompletionRequest(model="m", prompt="p").sampling().max_tokens == 16


def test_legacy_logprobs_is_the_number_of_alternatives():
    assert CompletionRequest(model="m", prompt="p", logprobs=3).sampling().logprobs == 3
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="p", logprobs=6)
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="p", echo=True)
    CompletionRequest(model="m", prompt="p", echo=False, best_of=1, suffix=None)


def test_content_parts_are_joined():
    req = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "b"}]}])
    assert req.contract_messages()[0].content == "ab"


def test_a_tool_call_round_trip_renders_as_the_models_own_call_and_its_result():
    req = chat(tools=[WEATHER], tool_choice="none", messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"}])
    turns = req.contract_messages()
    assert [t.role for t in turns] == ["system", "user", "assistant", "tool"]
    assert json.loads(turns[2].content) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert turns[3].content == "Result of get_weather: 18C, sunny"
    assert req.sampling().grammar is None and "get_weather" not in turns[0].content


def test_tools_are_told_in_the_system_turn_and_required_calls_are_constrained():
    req = chat(tools=[WEATHER], tool_choice="required")
    turns = req.contract_messages()
    assert turns[0].role == "system" and "get_weather" in turns[0].content
    grammar = req.sampling().grammar
    assert grammar.kind == "lark" and grammar.text.startswith(MARKER)
    assert must_call(req.sampling()) and '"const":"get_weather"' in grammar.text


def test_auto_lets_the_model_answer_in_text_or_call():
    s = chat(tools=[WEATHER]).sampling()
    assert is_tool_job(s) and not must_call(s) and "TEXT" in s.grammar.text


def test_a_named_tool_choice_allows_only_that_tool():
    other = {"type": "function", "function": {"name": "other"}}
    s = chat(tools=[WEATHER, other],
             tool_choice={"type": "function", "function": {"name": "other"}}).sampling()
    assert must_call(s) and "get_weather" not in s.grammar.text
    with pytest.raises(ValidationError, match="not in tools"):
        chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})


def test_response_formats_become_grammars():
    assert chat(response_format={"type": "text"}).sampling().grammar is None
    assert chat(response_format={"type": "json_object"}).sampling().grammar.kind == "json_object"
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    strict = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": schema, "strict": True}}).sampling().grammar
    assert (strict.kind, json.loads(strict.text)) == ("json_schema", schema)
    loose = chat(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": schema}}).sampling().grammar
    assert json.loads(loose.text)["x-guidance"] == {"lenient": True}


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema"}, {"type": "xml"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objec"}}},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}}])
def test_a_schema_no_node_could_enforce_is_refused(fmt):
    with pytest.raises(ValidationError):
        chat(response_format=fmt)


def test_response_format_and_callable_tools_together_are_refused():
    with pytest.raises(ValidationError, match="cannot be combined"):
        chat(tools=[WEATHER], response_format={"type": "json_object"})


def test_a_turn_too_long_for_a_job_is_a_400_not_a_crash():
    from bus.bounds import MAX_TEXT
    with pytest.raises(ValidationError, match="characters"):
        chat(messages=[{"role": "system", "content": "x" * MAX_TEXT}], tools=[WEATHER])


def test_a_legacy_prompt_may_come_as_a_list_of_one_string():
    assert CompletionRequest(model="m", prompt=["p"]).prompt == "p"
    with pytest.raises(ValidationError, match="one prompt per request"):
        CompletionRequest(model="m", prompt=["a", "b"])
    with pytest.raises(ValidationError, match="one prompt per request"):
        CompletionRequest(model="m", prompt=[1, 2, 3])
