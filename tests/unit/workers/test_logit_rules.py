"""Every sampling parameter changes what the engine generates, on the tiny random Llama:
grammars (json_object, json_schema, lark), logit_bias, presence and frequency
penalties, ignore_eos, and logprobs in OpenAI's shape."""
from __future__ import annotations

import dataclasses
import json
import math

import jsonschema
import pytest
import torch

from bus.sampling import Grammar, Sampling
from tests.unit.workers.test_engine import (completion, engine, greedy_reference,  # noqa: F401
                                            model_dir, run)
from workers.engine import Engine
from workers.generation import LOGPROB_FLOOR, InvalidRequest
from workers.grammar import GrammarError
from workers.logits import LogitRules

SCHEMA = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
          "additionalProperties": False}
RICHER = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8}, "n": {"type": "integer"},
    "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}},
    "required": ["name", "n", "tags"], "additionalProperties": False}
PROMPT = "the quick brown fox"


def schema(value: dict) -> Grammar:
    return Grammar(kind="json_schema", text=json.dumps(value))


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
@pytest.mark.parametrize("value", [SCHEMA, RICHER])
def test_json_schema_output_parses_and_validates(engine, value, seed):
    sampling = {"temperature": 0} if seed is None else {"temperature": 1.0, "seed": seed}
    text, steps = run(engine, completion(PROMPT, max_tokens=300, grammar=schema(value),
                                         **sampling))
    jsonschema.validate(json.loads(text), value)
    assert steps[-1].finish_reason == "stop"  # the grammar's end, long before max_tokens


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_object_output_is_a_json_object(engine, seed):
    text, _ = run(engine, completion(PROMPT, max_tokens=300, temperature=1.0, seed=seed,
                                     grammar=Grammar(kind="json_object")))
    assert isinstance(json.loads(text), dict)


def test_a_lark_grammar_is_followed(engine):
    text, _ = run(engine, completion(PROMPT, max_tokens=50, temperature=1.0, seed=4,
                                     grammar=Grammar(kind="lark", text='start: "yes" | "no"')))
    assert text in ("yes", "no")


def test_a_grammar_the_worker_cannot_build_fails_that_request_with_its_reason(engine):
    with pytest.raises(GrammarError, match="undefined_rule"):
        run(engine, completion(PROMPT, max_tokens=5,
                               grammar=Grammar(kind="lark", text="start: undefined_rule")))


def test_a_logit_bias_of_plus_100_makes_the_greedy_output_that_token(engine):
    token = engine.tokenizer.encode(" fox", add_special_tokens=False)[-1]
    text, _ = run(engine, completion(PROMPT, max_tokens=6, temperature=0,
                                     logit_bias={token: 100}))
    assert engine.tokenizer.encode(text, add_special_tokens=False) == [token] * 6


def test_a_logit_bias_of_minus_100_bans_the_token(engine):
    request = completion(PROMPT, max_tokens=30, temperature=0)
    favourite = max(set(ids := greedy_reference(engine, request, 30)), key=ids.count)
    _, steps = run(engine, completion(PROMPT, max_tokens=30, temperature=0,
                                      logit_bias={favourite: -100}, logprobs=0))
    chosen = [lp.bytes for s in steps for lp in s.logprobs]
    assert len(chosen) == 30 and engine.vocabulary()[0].token_bytes(favourite) not in chosen


def test_a_token_id_outside_the_vocabulary_is_refused_before_any_compute(engine):
    with pytest.raises(InvalidRequest, match="vocabulary has"):
        engine.sequence(completion(PROMPT, max_tokens=5, logit_bias={engine.vocab_width: 5}))


def test_penalties_follow_openais_formula_over_the_tokens_generated():
    sampling = Sampling(max_tokens=8, presence_penalty=0.5, frequency_penalty=0.25)
    rules = LogitRules(sampling, 10, "cpu", frozenset(), generated=[3], constraint=None)
    for token in (5, 5, 7):
        rules.taken(token)
    out = rules.apply(torch.zeros(10))
    expected = torch.zeros(10)
    expected[5] = -(0.5 + 2 * 0.25)
    expected[7] = expected[3] = -(0.5 + 0.25)  # 3: a continuation's token counts too
    assert torch.allclose(out, expected)


def test_presence_and_frequency_penalties_change_a_repetitive_greedy_output(engine):
    plain = run(engine, completion(PROMPT, max_tokens=60, temperature=0))[0]
    penalised = run(engine, completion(PROMPT, max_tokens=60, temperature=0,
                                       presence_penalty=2.0, frequency_penalty=2.0))[0]
    assert penalised != plain


def test_ignore_eos_runs_to_max_tokens(model_dir):  # noqa: F811
    engine = Engine.load(model_dir, "tiny")
    first = greedy_reference(engine, completion(PROMPT, max_tokens=1, temperature=0), 1)[0]
    engine.eos_token_ids = frozenset({first})  # the model's first greedy token ends it
    _, steps = run(engine, completion(PROMPT, max_tokens=12, temperature=0))
    assert steps[-1].completion_tokens == 0 and steps[-1].finish_reason == "stop"
    _, steps = run(engine, completion(PROMPT, max_tokens=12, temperature=0, ignore_eos=True))
    assert steps[-1].completion_tokens == 12 and steps[-1].finish_reason == "length"


@pytest.mark.parametrize("top", [0, 1, 5, 20])
def test_logprobs_come_one_per_token_with_the_top_alternatives_asked_for(engine, top):
    text, steps = run(engine, completion("héllo 東京", max_tokens=25, temperature=1.0, seed=7,
                                         logprobs=top))
    logprobs = [lp for s in steps for lp in s.logprobs]
    assert len(logprobs) == steps[-1].completion_tokens == 25
    # Random bytes: a broken character is U+FFFD in the text, its bytes in the logprobs.
    assert b"".join(bytes(lp.bytes) for lp in logprobs).decode(errors="replace") == text
    for lp in logprobs:
        assert len(lp.top_logprobs) == top and LOGPROB_FLOOR <= lp.logprob <= 0
        assert sum(math.exp(t.logprob) for t in lp.top_logprobs) <= 1 + 1e-5
        assert [t.logprob for t in lp.top_logprobs] == sorted(
            (t.logprob for t in lp.top_logprobs), reverse=True)
        if top:
            assert lp.logprob <= lp.top_logprobs[0].logprob + 1e-6


def test_a_greedy_tokens_logprob_is_its_top_alternative(engine):
    _, steps = run(engine, completion(PROMPT, max_tokens=10, temperature=0, logprobs=3))
    for lp in (lp for s in steps for lp in s.logprobs):
        assert (lp.token, lp.logprob) == (lp.top_logprobs[0].token, lp.top_logprobs[0].logprob)


def test_logprobs_under_a_grammar_rule_out_what_it_forbids(engine):
    _, steps = run(engine, completion(PROMPT, max_tokens=100, temperature=0, logprobs=3,
                                      grammar=schema(SCHEMA)))
    first = steps[0].logprobs[0]
    assert first.token == "{" and first.logprob == 0.0  # the only token the grammar allows
    assert [t.logprob for t in first.top_logprobs[1:]] == [LOGPROB_FLOOR] * 2


def test_without_logprobs_steps_carry_none(engine):
    _, steps = run(engine, completion(PROMPT, max_tokens=10, temperature=0))
    assert all(s.logprobs == () for s in steps)


def test_a_continuation_under_a_grammar_is_completed_into_a_valid_instance(engine):
    request = dataclasses.replace(
        completion(PROMPT, max_tokens=100, temperature=1.0, seed=5, grammar=schema(RICHER)),
        continuation='{"name":"ab')
    text, _ = run(engine, request)
    jsonschema.validate(json.loads('{"name":"ab' + text), RICHER)


def test_a_continuation_that_left_the_grammar_fails_with_the_reason(engine):
    request = dataclasses.replace(
        completion(PROMPT, max_tokens=10, grammar=schema(SCHEMA)), continuation="[not json")
    with pytest.raises(GrammarError):
        run(engine, request)
