"""OpenAI response shapes: sync bodies, stream chunks, logprobs and tool calls."""
import json

from api.protocol import Choice, choices_body, chunk_body, completed_body, result_body
from api.tools import call_id
from bus.events import Usage
from bus.sampling import TokenLogprob, TopLogprob

USAGE = Usage(prompt_tokens=2, completion_tokens=1)


def lp(token: str, logprob: float, *alts: tuple[str, float]) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob, bytes=tuple(token.encode()),
                        top_logprobs=tuple(TopLogprob(token=t, logprob=p) for t, p in alts))


def test_bodies_follow_openai_shapes():
    body = result_body("chat", "j", "m", 1, "x", "stop", USAGE)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-j"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "x"}
    assert body["choices"][0]["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    last = chunk_body("chat", "j", "m", 1, usage=USAGE)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3
    assert chunk_body("completion", "j", "m", 1, text="y")["choices"][0]["text"] == "y"


def test_chat_logprobs_are_openais_content_list():
    body = result_body("chat", "j", "m", 1, "Hi!", "stop", USAGE,
                       logprobs=[lp("Hi", -0.1, ("Hi", -0.1), ("Hey", -2.5)), lp("!", -0.3)])
    content = body["choices"][0]["logprobs"]["content"]
    assert content[0] == {"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
                          "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": None},
                                           {"token": "Hey", "logprob": -2.5, "bytes": None}]}
    assert content[1]["token"] == "!" and content[1]["top_logprobs"] == []


def test_legacy_completion_logprobs_are_parallel_lists_with_text_offsets():
    body = result_body("completion", "j", "m", 1, "ab c", "length", USAGE,
                       logprobs=[lp("ab", -1.0, ("ab", -1.0)), lp(" c", -2.0, (" c", -2.0))])
    assert body["choices"][0]["logprobs"] == {
        "tokens": ["ab", " c"], "token_logprobs": [-1.0, -2.0],
        "top_logprobs": [{"ab": -1.0}, {" c": -2.0}], "text_offset": [0, 2]}
    chunk = chunk_body("completion", "j", "m", 1, text=" c", logprobs=[lp(" c", -2.0)],
                       text_offset=2)
    assert chunk["choices"][0]["logprobs"]["text_offset"] == [2]


def test_a_tool_jobs_call_text_is_answered_as_tool_calls():
    text = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    body = result_body("chat", "j", "m", 1, text, "stop", USAGE, tools=True)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id("j"), "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


def test_free_text_of_a_tool_job_stays_content():
    body = result_body("chat", "j", "m", 1, "It is sunny.", "stop", USAGE, tools=True)
    assert body["choices"][0]["message"]["content"] == "It is sunny."
    assert body["choices"][0]["finish_reason"] == "stop"


def test_the_same_text_without_tools_is_content_even_when_it_is_json():
    text = '{"name": "f", "arguments": {}}'
    assert result_body("chat", "j", "m", 1, text, "stop", USAGE)["choices"][0]["message"] == \
        {"role": "assistant", "content": text}


def test_several_choices_are_indexed_in_order():
    body = choices_body("chat", "j", "m", 1, [Choice("a", "stop"), Choice("b", "length")],
                        Usage(prompt_tokens=2, completion_tokens=2))
    assert [(c["index"], c["message"]["content"], c["finish_reason"])
            for c in body["choices"]] == [(0, "a", "stop"), (1, "b", "length")]
    assert chunk_body("chat", "j", "m", 1, text="x", index=3)["choices"][0]["index"] == 3


def test_a_completed_tool_job_answers_with_its_call_and_logprobs():
    from datetime import datetime, timezone

    from api.chat_request import ChatCompletionRequest
    from bus.events import JobCompleted, JobSubmitted
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}],
                                logprobs=True, tools=[{"type": "function",
                                                       "function": {"name": "f"}}])
    job = JobSubmitted(job_id="j", account="a", key_id="k", model="m", kind="chat",
                       sampling=req.sampling(), messages=req.contract_messages(), zone="eu",
                       route="zone", deadline=datetime.now(timezone.utc))
    text = '{"name": "f", "arguments": {}}'
    outcome = JobCompleted(job_id="j", model="m", node_id="n", operator="o", zone="eu",
                           attempt=1, text=text, finish_reason="stop", usage=USAGE,
                           logprobs=(lp(text, -0.2),), input_hash="i", output_hash="o",
                           signature="s")
    choice = completed_body(job, 1, outcome)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert choice["logprobs"]["content"][0]["logprob"] == -0.2
