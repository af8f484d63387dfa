"""Shared prompt prefixes prefilled once (workers/decoders/prefix.py) on the tiny random Llama.

What a request streams must not depend on whether its prompt's head came from
the prefix cache: every output is compared with the request run alone through
``Engine.generate``, and the cache's counters show the cached path ran.
"""
from __future__ import annotations

import pytest
import torch

from tests.unit.workers.test_batching import alone, stream, together
from tests.unit.workers.test_engine import completion, engine, model_dir  # noqa: F401 - fixtures
from workers.batching import Batcher
from workers.decoders.prefix import PrefixCache, common_prefix

HEAD = "You are a careful assistant. Answer briefly and plainly, in one sentence. "
QUESTIONS = ["Why is the sea salty?", "What is a fox?", "Name a city in France, please.", "Hi"]


@pytest.fixture
def batcher(engine):  # noqa: F811 - the fixture imported above
    b = Batcher(engine, decoder="padded", max_batch=32)
    yield b
    b.close()


def test_common_prefix_is_the_longest_head_every_prompt_shares():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3], [1, 2, 9, 9]]) == 2
    assert common_prefix([[1, 2], [1, 2]]) == 2
    assert common_prefix([[5], [1, 2]]) == 0


def test_prompts_sharing_a_head_stream_what_each_streams_alone(engine, batcher):
    requests = [completion(HEAD + q, max_tokens=12, temperature=0) for q in QUESTIONS]
    assert together(batcher, requests) == [alone(engine, r) for r in requests]
    stats = batcher.decoder.prefixes.stats
    assert stats["computed"] == 1 and stats["hits"] == 1 and stats["reused_tokens"] > 0
    # A later group with the same head reuses it without computing it again.
    later = [completion(HEAD + q, max_tokens=12, temperature=0)
             for q in ("Two plus two?", "Is ice cold?")]
    assert together(batcher, later) == [alone(engine, r) for r in later]
    assert stats["computed"] == 1 and stats["hits"] == 2


def test_a_repeated_lone_prompt_is_prefilled_from_its_cached_head(engine, batcher):
    request = completion(HEAD + QUESTIONS[0], max_tokens=12, temperature=0)
    expected = alone(engine, request)
    for _ in range(3):
        assert together(batcher, [request]) == [expected]
    stats = batcher.decoder.prefixes.stats
    # The first run reveals nothing; the second shares all but its last token with it.
    assert stats["computed"] == 1 and stats["hits"] == 2


def test_a_prompt_no_longer_than_a_cached_head_is_prefilled_whole(engine, batcher):
    requests = [completion(HEAD + q, max_tokens=8, temperature=0) for q in QUESTIONS[:2]]
    together(batcher, requests)
    head_only = completion(HEAD.rstrip(), max_tokens=8, temperature=0)
    hits = batcher.decoder.prefixes.stats["hits"]
    assert together(batcher, [head_only]) == [alone(engine, head_only)]
    assert batcher.decoder.prefixes.stats["hits"] == hits


def test_a_mid_flight_joiner_with_a_cached_head_matches_its_solo_run(engine, batcher):
    first = completion(HEAD + QUESTIONS[0], max_tokens=40, temperature=0)
    joiners = [completion(HEAD + q, max_tokens=10, temperature=0) for q in QUESTIONS[1:3]]
    running = stream(batcher, first)
    head = [next(running) for _ in range(3)]
    assert together(batcher, joiners) == [alone(engine, r) for r in joiners]
    rest = list(running)
    assert [(s.text, s.completion_tokens, s.finish_reason) for s in head + rest] == \
        alone(engine, first)
    assert batcher.decoder.prefixes.stats["hits"] == 1  # the joiners' prefill


def test_a_model_whose_cache_cannot_be_reused_turns_the_cache_off():
    cache = PrefixCache(lambda tokens: None, 1, 1 << 20, min_tokens=2)
    assert cache.find([[1, 2, 3, 4], [1, 2, 3, 5]]) is None
    assert not cache.enabled and cache.find([[1, 2, 3, 4], [1, 2, 3, 5]]) is None


def recording(computed: list[list[int]]):
    def compute(tokens: list[int]):
        computed.append(tokens)
        return [(torch.zeros(1, 1, len(tokens), 1), torch.zeros(1, 1, len(tokens), 1))]
    return compute


def test_the_least_recently_used_heads_are_dropped_beyond_max_entries():
    computed: list[list[int]] = []
    cache = PrefixCache(recording(computed), 1, 1 << 20, min_tokens=2, max_entries=2)
    for head in ([1, 1], [2, 2], [1, 1], [3, 3]):  # [1, 1] used again before [3, 3] arrives
        found = cache.find([[*head, 7], [*head, 8]])
        assert found is not None and found[0] == 2
    assert computed == [[1, 1], [2, 2], [3, 3]]
    assert cache.find([[2, 2, 7], [2, 2, 8]])[0] == 2 and computed[-1] == [2, 2]  # recomputed
    assert len(computed) == 4


def test_cached_heads_stay_within_their_byte_budget():
    computed: list[list[int]] = []
    cache = PrefixCache(recording(computed), 10, 100, min_tokens=2)  # 10 tokens in all
    assert cache.find([[*range(12), 1], [*range(12), 2]]) is None  # 12 tokens: too big
    assert cache.find([[*range(6), 1], [*range(6), 2]])[0] == 6
    assert cache.find([[9] * 6 + [1], [9] * 6 + [2]])[0] == 6  # 12 in all: the first goes
    assert cache.find([[*range(6), 1], [*range(6), 2]])[0] == 6
    assert computed == [[*range(6)], [9] * 6, [*range(6)]]


def test_a_head_a_few_tokens_longer_than_a_cached_one_is_not_computed_again():
    computed: list[list[int]] = []
    cache = PrefixCache(recording(computed), 1, 1 << 20, min_tokens=4)
    assert cache.find([[*range(8), 1], [*range(8), 2]])[0] == 8
    assert cache.find([[*range(10), 1], [*range(10), 2]])[0] == 8  # 2 more: reuse the 8
    assert cache.find([[*range(12), 1], [*range(12), 2]])[0] == 12  # 4 more: worth a pass
    assert computed == [[*range(8)], [*range(12)]]
