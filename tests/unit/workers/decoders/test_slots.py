"""The slot KV cache and its decode step (``workers/decoders/``: slot_cache.py,
llama_step.py, slots.py).

The step is written from the model's weights, so it is checked against the
Hugging Face forward itself: every row's logits after a right-padded joint
prefill, decode steps, rows leaving (the last rows move into the holes) and a
row joining later must equal those of the model run on that row's whole
sequence alone (float32, round-off only). The batcher-level behaviour with this
backend (solo-equal greedy outputs, joins, leaves, seeds) is in
test_batching.py, which runs every test with each backend; on CUDA the last
test here runs the real thing: captured graphs and pipelined steps.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.unit.workers import test_batching
from tests.unit.workers.test_batching import PROMPTS, alone, mixed_requests, together
from tests.unit.workers.test_engine import chat, completion, engine, model_dir  # noqa: F401 - fixtures
from workers.batching import Batcher
from workers.decoders.llama_step import unsupported
from workers.decoders.padded import PaddedDecoder
from workers.decoders.slot_cache import COLUMN_STEP, SlotCache
from workers.decoders.slots import SlotDecoder
from workers.engine import Engine

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Prompt:
    """What ``SlotDecoder`` reads of a Sequence."""

    def __init__(self, ids: list[int], remaining: int = 20) -> None:
        self.input_ids, self.remaining = ids, remaining


@pytest.fixture(scope="module")
def engine32(model_dir):  # noqa: F811 - the fixture imported above
    """The tiny model in float32 wherever it runs (an engine on CUDA defaults to bf16)."""
    return Engine.load(model_dir, "tiny", dtype="float32")


def hf_logits(engine: Engine, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return engine.model(input_ids=torch.tensor([ids], device=engine.device)).logits[0, -1]


def assert_rows_match_the_model(engine: Engine, logits: torch.Tensor, seqs: list[list[int]]):
    for row, ids in enumerate(seqs):
        torch.testing.assert_close(logits[row].float(), hf_logits(engine, ids).float(),
                                   rtol=1e-4, atol=1e-4)


def run_steps(engine: Engine, decoder: SlotDecoder, seqs: list[list[int]], n: int):
    """``n`` greedy decode steps, each row's logits checked against the model."""
    for _ in range(n):
        with torch.inference_mode():
            launched = decoder.launch([])
            tokens = launched.greedy()
        assert_rows_match_the_model(engine, launched.logits, seqs)
        for ids, token in zip(seqs, tokens):
            ids.append(token)


def test_slot_steps_compute_the_models_logits_through_joins_and_leaves(engine32):
    engine = engine32
    decoder = SlotDecoder(engine, max_rows=8, kv_budget_bytes=1 << 30)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22]]
    with torch.inference_mode():
        logits = decoder.prefill([Prompt(p) for p in prompts])
    assert_rows_match_the_model(engine, logits, prompts)  # right padding changed nothing
    tokens = logits.argmax(dim=-1).tolist()
    decoder.admit([0, 1, 2, 3], tokens)
    seqs = [p + [t] for p, t in zip(prompts, tokens)]
    run_steps(engine, decoder, seqs, 4)
    order = decoder.keep([0, 2])  # rows 1 and 3 leave: row 2 moves into row 1
    assert order == [0, 2] and decoder.cache.lengths == [len(seqs[0]) - 1, len(seqs[2]) - 1]
    seqs = [seqs[i] for i in order]
    run_steps(engine, decoder, seqs, 3)
    late = [[7, 8, 9, 10, 11, 12], [13, 14], [15, 16, 17]]
    with torch.inference_mode():
        logits = decoder.prefill([Prompt(p) for p in late])
    tokens = logits.argmax(dim=-1).tolist()
    decoder.admit([0, 2], tokens)  # the second ended at its first token: not a row
    seqs += [late[0] + [tokens[0]], late[2] + [tokens[2]]]
    run_steps(engine, decoder, seqs, 3)


def test_fed_tokens_replace_a_rows_next_input(engine32):
    engine = engine32
    decoder = SlotDecoder(engine, max_rows=4, kv_budget_bytes=1 << 30)
    prompts = [[5, 6, 7], [8, 9]]
    with torch.inference_mode():
        decoder.prefill([Prompt(p) for p in prompts])
    decoder.admit([0, 1], [30, 31])
    seqs = [prompts[0] + [30], prompts[1] + [31]]
    run_steps(engine, decoder, seqs, 1)
    decoder.feed({1: 42})  # as a sampled row's own token would be
    seqs[1][-1] = 42
    run_steps(engine, decoder, seqs, 2)


def test_the_slot_cache_stays_in_budget_but_a_lone_sequence_always_gets_a_row():
    per_token = 2 * 2 * 2 * 16 * 4  # layers, keys and values, kv heads, head dim, float32
    cache = SlotCache(2, 2, 16, torch.float32, "cpu", max_rows=32,
                      budget_bytes=8 * COLUMN_STEP * per_token)
    assert cache.bytes_per_token == per_token
    assert cache.geometry(8, COLUMN_STEP) == (8, COLUMN_STEP)
    assert cache.geometry(9, COLUMN_STEP) is None
    assert cache.geometry(2, 4 * COLUMN_STEP) == (2, 4 * COLUMN_STEP)  # fewer, longer rows
    assert cache.geometry(1, 100 * COLUMN_STEP) is None
    assert cache.geometry(1, 100 * COLUMN_STEP, force=True) == (1, 100 * COLUMN_STEP)


def test_auto_uses_the_slot_decoder_for_llama_on_cuda_only_and_padded_for_others(engine):
    b = Batcher(engine, max_batch=4)
    try:
        expected = SlotDecoder if engine.device == "cuda" else PaddedDecoder
        assert type(b.decoder) is expected
    finally:
        b.close()
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50))
    assert "gpt2" in unsupported(gpt2)
    assert unsupported(engine.model) is None


@cuda
def test_graphed_pipelined_steps_on_cuda_stream_what_each_request_streams_alone(model_dir):  # noqa: F811
    engine = Engine.load(model_dir, "tiny", dtype="float32")
    b = Batcher(engine, max_batch=32)
    try:
        assert type(b.decoder) is SlotDecoder and b.decoder.steps.graphs and b.decoder.pipelines
        requests = mixed_requests() + [
            chat(max_tokens=30, temperature=1.0, seed=7),
            completion(PROMPTS[1], max_tokens=25, temperature=0.7, top_p=0.9, seed=3)]
        assert together(b, requests) == [alone(engine, r) for r in requests]
        # Again, the graphs now replayed rather than captured, and one request alone.
        assert together(b, requests[:3]) == [alone(engine, r) for r in requests[:3]]
        long = completion(PROMPTS[0], max_tokens=300, temperature=0)
        assert together(b, [long]) == [alone(engine, long)]
        assert b.stats["max_rows"] == len(requests)
    finally:
        b.close()
    b = Batcher(engine, max_batch=32)
    try:
        test_batching.test_a_request_joins_a_batch_mid_flight_and_both_match_their_solo_runs(
            engine, b)
    finally:
        b.close()
