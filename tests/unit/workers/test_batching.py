"""Continuous batching (workers/batching.py) on the tiny random-weight Llama.

Each request run through the batcher must stream what it streams alone through
``Engine.generate``, step for step, whatever shares its forward passes.
Greedy outputs are compared exactly: the padded rows are masked out of the
attention, and on this model float32 round-off between batch shapes has not
flipped an argmax (the logits of a random model are far apart).

Every test runs with each decode backend: the padded cache, the slot cache, and
the slot cache pipelined (next step launched before the last one's tokens are
read, as on CUDA; forced here on the CPU).
"""
from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from typing import Iterator

import pytest

from tests.unit.workers.test_engine import (chat, completion, engine, model_dir,  # noqa: F401
                                            prompt_tokens)
from workers.batching import Batcher
from workers.decoders.slot_cache import COLUMN_STEP
from workers.engine import Engine
from workers.generation import ContextLengthExceeded, GenerationRequest, Step
from workers.handoff import stop_if_any

PROMPTS = ["the quick brown fox", "a", "Paris is the capital of France and every worker streams",
           "héllo 東京 café naïve"]


@pytest.fixture(params=["padded", "slots", "slots-pipelined"])
def decoder(request) -> str:
    return request.param


def make(engine: Engine, decoder: str, **kwargs) -> Batcher:
    """A Batcher with the backend ``decoder`` names (see the module docstring)."""
    b = Batcher(engine, decoder=decoder.removesuffix("-pipelined"), **kwargs)
    if decoder.endswith("-pipelined"):
        b.decoder.pipelines = True  # before anything is submitted: the thread is idle
    return b


@pytest.fixture
def batcher(engine, decoder):  # noqa: F811 - the fixture imported above
    b = make(engine, decoder, max_batch=32)
    yield b
    b.close()


def slowly() -> bool:
    """A should_stop that never stops but makes each step take 5 ms, so a 400-token
    request surely still runs while a test does something else."""
    time.sleep(0.005)
    return False


def stream(batcher: Batcher, request: GenerationRequest,
           should_stop=None) -> Iterator[Step]:
    """The request's Steps as a blocking iterator, through ``Batcher.submit`` (raising
    ContextLengthExceeded at once); leaving it early stops the sequence, as leaving
    ``Batcher.stream_async`` does."""
    items: queue.SimpleQueue = queue.SimpleQueue()
    gone = threading.Event()
    batcher.submit(request, items.put, stop_if_any(gone.is_set, should_stop))

    def steps() -> Iterator[Step]:
        try:
            while True:
                item = items.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            gone.set()
    return steps()


def decoding(batcher: Batcher) -> int:
    """Sequences decoding now (not those waiting to join)."""
    return len(batcher._rows)


def steps_of(steps) -> list[tuple[str, int, str | None]]:
    return [(s.text, s.completion_tokens, s.finish_reason) for s in steps]


def alone(engine: Engine, request: GenerationRequest) -> list[tuple[str, int, str | None]]:
    return steps_of(engine.generate(request))


def together(batcher: Batcher, requests: list[GenerationRequest],
             stops: list | None = None) -> list[list[tuple[str, int, str | None]]]:
    """Submit every request before the batcher admits any (it admits under the lock
    held here), so they all prefill in one padded pass; collect each one's steps."""
    results: list[list[Step]] = [[] for _ in requests]
    done = threading.Semaphore(0)

    def collector(i: int):
        def emit(item):
            assert not isinstance(item, BaseException), item
            results[i].append(item)
            if item.finish_reason is not None:
                done.release()
        return emit

    with batcher._wake:
        for i, request in enumerate(requests):
            batcher.submit(request, collector(i), (stops or [None] * len(requests))[i])
    for _ in requests:
        assert done.acquire(timeout=60)
    return [steps_of(r) for r in results]


def mixed_requests() -> list[GenerationRequest]:
    """Different prompts, kinds and lengths, all greedy."""
    return [completion(p, max_tokens=20 + 9 * i, temperature=0) for i, p in enumerate(PROMPTS)] \
        + [chat(max_tokens=33, temperature=0)]


def test_concurrent_greedy_requests_stream_exactly_what_each_streams_alone(engine, batcher):
    requests = mixed_requests()
    expected = [alone(engine, r) for r in requests]
    assert together(batcher, requests) == expected
    # They did share the passes: one joint prefill, then decode steps.
    assert batcher.stats["max_prefill_rows"] == batcher.stats["max_rows"] == len(requests)


def test_a_request_joins_a_batch_mid_flight_and_both_match_their_solo_runs(engine, batcher):
    first, second = completion(PROMPTS[0], max_tokens=60, temperature=0), \
        completion(PROMPTS[2], max_tokens=25, temperature=0)
    late, calls = [], 0

    def join_after_ten_tokens() -> bool:
        # Polled on the batcher's thread after each token of the first request, so the
        # second arrives while the first is surely mid-flight.
        nonlocal calls
        calls += 1
        if calls == 10:
            late.append(stream(batcher, second))
        return False

    assert steps_of(stream(batcher, first, join_after_ten_tokens)) == alone(engine, first)
    assert steps_of(late[0]) == alone(engine, second)
    assert batcher.stats["max_rows"] == 2


def test_should_stop_ends_one_sequence_and_the_others_go_on_unchanged(engine, batcher):
    calls = 0

    def stop_after_three() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3  # polled once before the prefill, then after every step

    requests = mixed_requests()[:3]
    results = together(batcher, requests, stops=[None, stop_after_three, None])
    assert results[1][-1][1:] == (3, "stop") and len(results[1]) == 4
    assert results[0] == alone(engine, requests[0])
    assert results[2] == alone(engine, requests[2])


def test_a_caller_that_stops_reading_frees_its_row(batcher):
    steps = stream(batcher, completion(PROMPTS[0], max_tokens=200, temperature=0))
    next(steps), next(steps)
    steps.close()
    deadline = time.monotonic() + 10
    while decoding(batcher) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert decoding(batcher) == 0


def test_sampling_seed_temperature_and_stop_strings_stay_per_request(engine, batcher):
    full = "".join(t for t, _, _ in alone(engine, chat(max_tokens=40, temperature=0)))
    start = next(i for i in range(5, len(full) - 2) if "\ufffd" not in full[i:i + 3])
    requests = [chat(max_tokens=30, temperature=1.0, seed=7),
                chat(max_tokens=30, temperature=1.0, seed=8),
                chat(max_tokens=30, temperature=0.7, top_p=0.9, seed=7),
                chat(max_tokens=40, temperature=0, stop=("never-seen", full[start:start + 3])),
                completion(PROMPTS[1], max_tokens=30, temperature=0)]
    results = together(batcher, requests)
    assert results == [alone(engine, r) for r in requests]
    assert results[0] != results[1]  # other seeds, other draws
    assert results[3][-1][2] == "stop" and results[3][-1][1] < 40


def test_max_batch_bounds_the_sequences_decoded_together(engine, decoder):
    b = make(engine, decoder, max_batch=2)
    try:
        requests = mixed_requests()
        assert together(b, requests) == [alone(engine, r) for r in requests]
        assert b.stats["max_rows"] == 2
    finally:
        b.close()


def test_a_request_stopped_while_waiting_for_room_leaves_at_once(engine, decoder):
    b = make(engine, decoder, max_batch=1)
    try:
        running = stream(b, completion(PROMPTS[0], max_tokens=400, temperature=0), slowly)
        next(running)
        cancel = threading.Event()
        waiting = stream(b, completion(PROMPTS[1], max_tokens=5, temperature=0), cancel.is_set)
        cancel.set()
        assert steps_of(waiting) == [("", 0, "stop")]
        assert decoding(b) == 1  # the first one still runs
        running.close()
    finally:
        b.close()


def test_kv_budget_holds_requests_back_but_a_lone_request_always_runs(engine, decoder):
    # Room for two sequences of ~60 tokens, not three (the slot cache's rows are
    # COLUMN_STEP columns long at least).
    per_row = 70 if decoder == "padded" else COLUMN_STEP
    b = make(engine, decoder, max_batch=32,
             kv_budget_bytes=2 * per_row * engine.kv_bytes_per_token)
    try:
        requests = [completion(PROMPTS[0], max_tokens=50, temperature=0) for _ in range(4)]
        assert together(b, requests) == [alone(engine, requests[0])] * 4
        assert b.stats["max_rows"] == 2
        big = completion(PROMPTS[0], max_tokens=200, temperature=0)
        assert steps_of(stream(b, big)) == alone(engine, big)
    finally:
        b.close()


def test_context_length_exceeded_is_raised_by_the_submitting_call(engine, batcher):
    used = prompt_tokens(engine, chat(max_tokens=1))
    with pytest.raises(ContextLengthExceeded):
        stream(batcher, chat(max_tokens=513 - used))
    assert decoding(batcher) == 0


def test_a_continuation_goes_on_from_the_delivered_text_in_a_batch(engine, batcher):
    resumed = dataclasses.replace(chat(max_tokens=30, temperature=0),
                                  continuation="The capital of France is")
    requests = [resumed, completion(PROMPTS[3], max_tokens=30, temperature=0)]
    assert together(batcher, requests) == [alone(engine, r) for r in requests]


def test_nothing_to_generate_finishes_without_joining(engine, batcher):
    full = dataclasses.replace(chat(max_tokens=3, temperature=0),
                               continuation="The capital of France is Paris")
    assert steps_of(stream(batcher, full)) == [("", 3, "length")]
    assert steps_of(stream(batcher, chat(max_tokens=9), should_stop=lambda: True)) == \
        [("", 0, "stop")]


async def test_async_streams_interleave_their_steps(engine, batcher):
    order: list[int] = []

    async def consume(i: int, request: GenerationRequest) -> list:
        steps = []
        async for step in batcher.stream_async(request):
            order.append(i)
            steps.append(step)
        return steps_of(steps)

    requests = [completion(p, max_tokens=25, temperature=0) for p in PROMPTS[:3]]
    results = await asyncio.gather(*(consume(i, r) for i, r in enumerate(requests)))
    assert list(results) == [alone(engine, r) for r in requests]
    # Tokens of the three arrived turn by turn, not one whole stream after another
    # (which would switch streams twice).
    assert sum(a != b for a, b in zip(order, order[1:])) >= 10


def test_closing_the_batcher_ends_waiting_and_running_requests_with_an_error(engine, decoder):
    b = make(engine, decoder, max_batch=1)
    streams = [stream(b, completion(PROMPTS[0], max_tokens=400, temperature=0), slowly)
               for _ in range(2)]
    next(streams[0])
    b.close()
    for steps in streams:
        with pytest.raises(RuntimeError, match="closed"):
            list(steps)


def test_a_bfloat16_batch_runs_every_request_to_its_own_end(model_dir, decoder):  # noqa: F811
    # In bf16 other batch shapes may round differently, so only lengths are compared.
    b = make(Engine.load(model_dir, "tiny", dtype="bfloat16"), decoder)
    try:
        results = together(b, mixed_requests())
        assert [r[-1][1:] for r in results] == \
            [(r.sampling.max_tokens, "length") for r in mixed_requests()]
    finally:
        b.close()
