"""Packed prefill (workers/decoders/packed.py) on the tiny random Llama.

Prompts of unequal lengths prefilled packed, with or without a cached head,
must stream what each streams alone through ``Engine.generate``, and go on
decoding from the unpacked rows (a joiner included); a model that does not
honour the block-causal mask is never packed.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.unit.workers.test_batching import alone, stream, steps_of, together
from tests.unit.workers.test_engine import completion, engine, model_dir  # noqa: F401 - fixtures
from workers.batching import Batcher
from workers.decoders.packed import packing_pays, packs_exactly

HEAD = "You are a careful assistant. Answer briefly and plainly, in one sentence. "
PROMPTS = ["Why is the sea salty, and why are some lakes salty too while rivers are not?",
           "Fox?", "Hi", "Name a city."]
SMOLLM2 = SimpleNamespace(hidden_size=576, num_attention_heads=9, head_dim=64,
                          num_key_value_heads=3, intermediate_size=1536)


@pytest.fixture
def batcher(engine):  # noqa: F811 - the fixture imported above
    b = Batcher(engine, decoder="padded", max_batch=32)
    packed = b.decoder._prefill_packed
    b.packed_prefills = 0

    def counted(*args):
        b.packed_prefills += 1
        return packed(*args)

    b.decoder._prefill_packed = counted
    yield b
    b.close()


@pytest.mark.parametrize("head", ["", HEAD])
def test_prompts_of_unequal_lengths_prefill_packed_and_stream_what_each_streams_alone(
        engine, batcher, head):
    assert batcher.decoder.packs
    requests = [completion(head + p, max_tokens=10, temperature=0) for p in PROMPTS]
    assert together(batcher, requests) == [alone(engine, r) for r in requests]
    assert batcher.packed_prefills == 1


def test_a_joiner_decodes_beside_packed_rows_as_it_does_alone(engine, batcher):
    requests = [completion(p, max_tokens=16, temperature=0) for p in PROMPTS]
    first = stream(batcher, requests[0])
    made = [next(first)]  # the long prompt runs alone; the others then join it packed
    rest = together(batcher, requests[1:])
    made += list(first)
    assert [steps_of(made), *rest] == [alone(engine, r) for r in requests]
    assert batcher.packed_prefills == 1


def test_packing_pays_where_padding_outweighs_the_attention_across_prompts():
    bench = [9, 14, 18, 21, 23, 10, 13, 16, 18, 23, 12, 15, 17, 19, 22, 10]
    assert packing_pays(SMOLLM2, bench, 26)
    assert not packing_pays(SMOLLM2, [20, 20, 20], 26)  # no padding to save
    assert not packing_pays(SMOLLM2, [17], 0)
    assert not packing_pays(SMOLLM2, [2000, 1900], 0)  # attention across them costs more


class _Leaky(torch.nn.Module):
    """A "model" whose logits sum every earlier token, whatever the mask says."""

    def forward(self, input_ids, logits_to_keep=0, **_):
        x = torch.nn.functional.one_hot(input_ids, 8).float().cumsum(dim=1)
        keep = logits_to_keep if isinstance(logits_to_keep, torch.Tensor) else \
            slice(-logits_to_keep, None)
        return SimpleNamespace(logits=x[:, keep])


def test_only_a_model_that_honours_the_packed_mask_is_packed(engine):
    assert packs_exactly(engine.model, engine.device)
    assert not packs_exactly(_Leaky(), "cpu")
