"""The echo engine answers with its prompt's words, one token each, and keeps the
engine contract the worker relies on: max_tokens, stop requests, continuation
and the context length."""
from __future__ import annotations

import asyncio

import pytest

from bus.events import Sampling
from workers.echo import EchoEngine, is_echo_model, write_echo_model
from workers.generation import ContextLengthExceeded, GenerationRequest


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
