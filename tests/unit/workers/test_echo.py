"""The echo engine answers with its prompt's words, one token each, and keeps the
engine contract the worker relies on: max_tokens, stop requests, continuation
and the context length."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from bus.events import Sampling
from bus.sampling import Grammar
from workers.echo import EchoEngine, is_echo_model, write_echo_model
from workers.generation import ContextLengthExceeded, GenerationRequest, InvalidRequest


def chat(text: str, max_tokens: int = 16, continuation: str = "") -> GenerationRequest:
    return GenerationRequest(kind="chat", prompt=None, sampling=Sampling(max_tokens=max_tokens),
                             messages=({"role": "system", "content": "be brief"},
                                       {"role": "user", "content": text}),
                             continuation=continuation)


def run(engine: EchoEngine, request: GenerationRequest, stop=None) -> list:
    async def collect() -> list:
        return [step async for step in engine.stream_async(request, stop)]
    return asyncio.run(collect())


def test_echo_streams_the_last_message_word_by_word():
    steps = run(EchoEngine("echo"), chat("hello there world"))
    assert "".join(s.text for s in steps) == "hello there world"
    assert [s.completion_tokens for s in steps] == [1, 2, 3]
    assert steps[-1].finish_reason == "stop" and steps[-1].prompt_tokens == 5
    assert all(s.finish_reason is None for s in steps[:-1])


def test_max_tokens_cuts_the_echo_with_finish_reason_length():
    steps = run(EchoEngine("echo"), chat("one two three four", max_tokens=2))
    assert "".join(s.text for s in steps) == "one two"
    assert steps[-1].finish_reason == "length" and steps[-1].completion_tokens == 2


def test_a_stop_request_ends_the_echo_between_two_tokens():
    steps = run(EchoEngine("echo"), chat("a b c d"), stop=lambda: True)
    assert "".join(s.text for s in steps) == "a"
    assert steps[-1].finish_reason == "stop" and steps[-1].completion_tokens == 1


def test_a_continuation_goes_on_after_the_words_already_delivered():
    steps = run(EchoEngine("echo"), chat("a b c d", continuation="a b"))
    assert "".join(s.text for s in steps) == " c d"
    assert steps[-1].completion_tokens == 4  # the delivered words are part of the output


def test_a_prompt_over_the_context_length_is_refused_before_any_step():
    with pytest.raises(ContextLengthExceeded, match="context length is 4"):
        EchoEngine("echo", context_length=4).stream_async(chat("a b c", max_tokens=2))


def test_an_echo_model_directory_is_recognised_and_loaded(tmp_path):
    path = write_echo_model(tmp_path / "echo", context_length=64)
    assert is_echo_model(path) and not is_echo_model(tmp_path)
    engine = EchoEngine.load(path)
    assert (engine.name, engine.context_length) == ("echo", 64)


def test_echo_logprobs_say_each_word_was_certain_with_the_top_alternatives_asked_for():
    request = dataclasses.replace(chat("hello there world"),
                                  sampling=Sampling(max_tokens=16, logprobs=3))
    steps = run(EchoEngine("echo"), request)
    logprobs = [lp for s in steps for lp in s.logprobs]
    assert [lp.token for lp in logprobs] == ["hello", " there", " world"]
    assert all(lp.logprob == 0.0 and len(lp.top_logprobs) == 3 for lp in logprobs)
    assert [t.logprob for t in logprobs[0].top_logprobs] == [0.0, -1e4, -1e4]
    assert b"".join(bytes(lp.bytes) for lp in logprobs) == b"hello there world"
    assert all(s.logprobs == () for s in run(EchoEngine("echo"), chat("hello there")))


@pytest.mark.parametrize("grammar, expected", [
    (Grammar(kind="json_object"), {}),
    (Grammar(kind="json_schema", text=json.dumps(
        {"type": "object", "properties": {"a": {"type": "boolean"}, "b": {"type": "integer"}},
         "required": ["a", "b"]})), {"a": False, "b": 0}),
    (Grammar(kind="lark", text='start: %json{"type": "object", "properties": {"name": '
                               '{"const": "get_weather"}}, "required": ["name"]}'),
     {"name": "get_weather"}),
])
def test_echo_answers_a_grammar_with_its_smallest_instance(grammar, expected):
    request = dataclasses.replace(chat("anything at all"),
                                  sampling=Sampling(max_tokens=16, grammar=grammar))
    steps = run(EchoEngine("echo"), request)
    assert json.loads("".join(s.text for s in steps)) == expected
    assert steps[-1].finish_reason == "stop"


def test_echo_fails_a_grammar_it_cannot_compile_with_the_reason():
    request = dataclasses.replace(chat("x"), sampling=Sampling(
        max_tokens=16, grammar=Grammar(kind="json_schema", text="{broken")))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        run(EchoEngine("echo"), request)


def test_an_echo_that_follows_the_grammar_stands():
    grammar = Grammar(kind="lark", text='start: CALL | TEXT\nCALL: "{" /[a-z]*/ "}"\n'
                                        'TEXT: /[^{\\s](.|\\n)*/')
    request = dataclasses.replace(chat("plain words here"),
                                  sampling=Sampling(max_tokens=16, grammar=grammar))
    steps = run(EchoEngine("echo"), request)
    assert "".join(s.text for s in steps) == "plain words here" and len(steps) == 3
