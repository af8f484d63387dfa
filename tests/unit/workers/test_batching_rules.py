"""The continuous batcher honours each row's own sampling parameters, with every decode
backend: a row with a grammar, a bias, penalties or logprobs streams what it
streams alone, and shares its passes with plain rows that get what they asked."""
from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from bus.sampling import Grammar
from tests.unit.workers.test_batching import (decoder, make, stream, together,  # noqa: F401
                                              mixed_requests)
from tests.unit.workers.test_engine import completion, engine, model_dir  # noqa: F401
from tests.unit.workers.test_logit_rules import PROMPT, RICHER, SCHEMA, schema
from workers.batching import Batcher
from workers.generation import GenerationRequest
from workers.grammar import GrammarError


@pytest.fixture
def batcher(engine, decoder):  # noqa: F811
    b = make(engine, decoder, max_batch=8)
    yield b
    b.close()


def full(steps) -> list[tuple]:
    """Steps with their logprobs' tokens; the values apart (see ``same``)."""
    return [(s.text, s.completion_tokens, s.finish_reason,
             [(lp.token, [t.token for t in lp.top_logprobs]) for lp in s.logprobs])
            for s in steps]


def values(steps) -> list[float]:
    return [v for s in steps for lp in s.logprobs
            for v in (lp.logprob, *(t.logprob for t in lp.top_logprobs))]


def same(got: list, expected: list) -> None:
    """The same steps and tokens; logprobs equal up to float round-off between batch
    shapes (a padded batch's logits differ from a lone row's in the last bits)."""
    assert [full(g) for g in got] == [full(e) for e in expected]
    for g, e in zip(got, expected):
        assert values(g) == pytest.approx(values(e), abs=1e-3)


def all_at_once(batcher: Batcher, requests: list[GenerationRequest]) -> list[list]:
    """Each request's steps, all submitted before any is admitted (they share passes)."""
    results: list[list] = [[] for _ in requests]
    done = threading.Semaphore(0)

    def collector(i: int):
        def emit(item):
            results[i].append(item)
            if isinstance(item, BaseException) or item.finish_reason is not None:
                done.release()
        return emit

    with batcher._wake:
        for i, r in enumerate(requests):
            batcher.submit(r, collector(i))
    for _ in requests:
        assert done.acquire(timeout=60)
    assert not [x for r in results for x in r if isinstance(x, BaseException)]
    return results


def ruled_requests() -> list[GenerationRequest]:
    fox = 300  # any id of the tiny vocabulary
    return [
        completion(PROMPT, max_tokens=200, temperature=0, grammar=schema(SCHEMA), logprobs=2),
        completion("a", max_tokens=200, temperature=1.0, seed=5, grammar=schema(RICHER)),
        completion("héllo 東京", max_tokens=20, temperature=0, logit_bias={fox: 100}),
        completion(PROMPT, max_tokens=30, temperature=0, presence_penalty=1.5,
                   frequency_penalty=1.0, logprobs=5),
        completion("Paris", max_tokens=25, temperature=0.8, seed=9, logprobs=0,
                   grammar=Grammar(kind="json_object")),
    ]


def test_rows_with_rules_stream_in_a_batch_exactly_what_they_stream_alone(engine, batcher):
    requests = ruled_requests() + mixed_requests()
    expected = [list(engine.generate(r)) for r in requests]
    same([list(stream(batcher, r)) for r in requests], expected)  # one at a time
    same(all_at_once(batcher, requests), expected)


def test_a_grammar_row_and_a_plain_row_in_one_batch_each_get_what_they_asked(engine, batcher):
    constrained = completion(PROMPT, max_tokens=300, temperature=1.0, seed=3,
                             grammar=schema(RICHER))
    plain = completion(PROMPT, max_tokens=40, temperature=0)
    out = together(batcher, [constrained, plain])
    jsonschema.validate(json.loads("".join(t for t, _, _ in out[0])), RICHER)
    assert out[1] == [(s.text, s.completion_tokens, s.finish_reason)
                      for s in engine.generate(plain)]


def test_a_row_whose_grammar_fails_ends_alone_with_its_error(engine, batcher):
    bad = completion(PROMPT, max_tokens=20, grammar=Grammar(kind="lark", text="start: nope"))
    plain = completion(PROMPT, max_tokens=30, temperature=0)
    plain_steps = stream(batcher, plain)
    with pytest.raises(GrammarError, match="nope"):
        list(stream(batcher, bad))
    assert [s.text for s in plain_steps] == [s.text for s in engine.generate(plain)]
    assert [s.text for s in stream(batcher, plain)] == [s.text for s in engine.generate(plain)]


def test_only_plain_greedy_rows_take_the_batchs_argmax_and_pipeline(engine):  # noqa: F811
    plain = engine.sequence(completion(PROMPT, max_tokens=5, temperature=0))
    ruled = engine.sequence(completion(PROMPT, max_tokens=5, temperature=0, logprobs=0))
    assert plain.fast_greedy and not ruled.fast_greedy
    b: Batcher = make(engine, "slots-pipelined", max_batch=4)
    try:  # a ruled greedy row among plain ones: in step, and what it makes alone
        requests = [completion(PROMPT, max_tokens=20, temperature=0, logprobs=1),
                    completion("a", max_tokens=30, temperature=0),
                    completion(PROMPT, max_tokens=25, temperature=0, logit_bias={300: 5.0})]
        same(all_at_once(b, requests), [list(engine.generate(r)) for r in requests])
    finally:
        b.close()


def test_a_request_whose_grammar_still_compiles_lets_plain_requests_by(engine, batcher):
    gate = threading.Event()
    slow = completion(PROMPT, max_tokens=5, temperature=0, logprobs=0)
    real = engine._prepare
    engine._prepare = lambda *a: (gate.wait(30), real(*a))[1]  # a slow compile, held here
    try:
        held = stream(batcher, slow)
        plain = completion("a", max_tokens=8, temperature=0)
        assert [s.text for s in stream(batcher, plain)] == [s.text
                                                             for s in engine.generate(plain)]
    finally:
        engine._prepare = real
        gate.set()
    assert [s.text for s in held] == [s.text for s in engine.generate(slow)]
