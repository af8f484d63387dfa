"""OpenAI request parsing and response shapes."""
import pytest
from pydantic import ValidationError

from api.protocol import ChatCompletionRequest, CompletionRequest, chunk_body, result_body
from bus.events import Usage


def chat(**kw):
    return ChatCompletionRequest(**{"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                    **kw})


def test_sampling_carries_every_parameter():
    s = chat(max_tokens=7, temperature=0, top_p=0.5, stop="\n", seed=3).sampling()
    assert (s.max_tokens, s.temperature, s.top_p, s.stop, s.seed) == (7, 0, 0.5, ("\n",), 3)


def test_max_completion_tokens_wins_over_max_tokens():
    assert chat(max_tokens=7, max_completion_tokens=9).sampling().max_tokens == 9


def test_content_parts_are_joined():
    req = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "text", "text": "b"}]}])
    assert req.messages[0].to_contract().content == "ab"


@pytest.mark.parametrize("bad", [{"messages": []}, {"max_tokens": 0}, {"temperature": 3},
                                 {"n": 2}, {"stop": ["a"] * 5}, {"max_tokens": "many"}])
def test_invalid_requests_are_rejected(bad):
    with pytest.raises(ValidationError):
        chat(**bad)


def test_completion_defaults_to_sixteen_tokens_like_openai():
    assert CompletionRequest(model="m", prompt="p").sampling().max_tokens == 16


def test_bodies_follow_openai_shapes():
    usage = Usage(prompt_tokens=2, completion_tokens=1)
    body = result_body("chat", "j", "m", 1, "x", "stop", usage)
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-j"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "x"}
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}
    last = chunk_body("chat", "j", "m", 1, usage=usage)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 3
    assert chunk_body("completion", "j", "m", 1, text="y")["choices"][0]["text"] == "y"
