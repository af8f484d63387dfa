"""The embeddings engine on the real all-MiniLM-L6-v2: mean pooling over real
tokens, L2-normalised, batched across concurrent requests with the same
vectors as one at a time, and long inputs refused rather than cut."""
from __future__ import annotations

import asyncio
import math

import pytest

from bus.vectors import cosine
from tests.minilm import MINILM, minilm_models  # noqa: F401 - a fixture
from workers.embedder import Embedder, is_embedding_model
from workers.generation import ContextLengthExceeded
from workers.models import resolve


@pytest.fixture(scope="module")
def embedder(minilm_models):  # noqa: F811
    return Embedder.load(minilm_models / MINILM, MINILM, max_batch=4)


def embed(embedder, *texts):
    return asyncio.run(embedder.embed(list(texts)))


def test_a_sentence_transformers_dir_is_an_embeddings_model(minilm_models):  # noqa: F811
    assert is_embedding_model(minilm_models / MINILM)
    assert resolve(MINILM, minilm_models) == (MINILM, minilm_models / MINILM)


def test_vectors_are_unit_length_and_nearer_for_nearer_meanings(embedder):
    vectors, tokens = embed(embedder, "a cat", "a kitten", "stock market")
    cat, kitten, market = vectors.floats()
    assert (vectors.count, vectors.dims) == (3, 384)
    assert vectors.unnormalised() is None
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, abs_tol=1e-5)
               for v in (cat, kitten, market))
    assert cosine(cat, kitten) > 0.6 > 0.3 > cosine(cat, market)
    assert tokens == sum(embedder.count(["a cat", "a kitten", "stock market"]))


def test_padding_does_not_change_a_vector(embedder):
    alone = embed(embedder, "a cat")[0].floats()[0]
    padded = embed(embedder, "a cat", "a much longer sentence about the weather in spring")
    assert cosine(alone, padded[0].floats()[0]) > 0.99999


def test_concurrent_requests_share_passes_and_get_their_own_vectors(embedder):
    texts = [f"sentence number {i}" for i in range(7)]

    async def both():
        return await asyncio.gather(embedder.embed(texts[:5]), embedder.embed(texts[5:]))
    (first, _), (second, _) = asyncio.run(both())
    alone = [embed(embedder, t)[0].floats()[0] for t in texts]
    together = first.floats() + second.floats()
    assert all(cosine(a, b) > 0.99999 for a, b in zip(alone, together, strict=True))


def test_many_concurrent_requests_take_fewer_forward_passes(minilm_models):  # noqa: F811
    embedder = Embedder.load(minilm_models / MINILM, MINILM, max_batch=64)

    async def many():
        return await asyncio.gather(*(embedder.embed([f"text {i}"]) for i in range(16)))
    results = asyncio.run(many())
    assert [v.count for v, _ in results] == [1] * 16
    assert embedder.passes < 16


def test_an_input_over_the_models_length_is_refused_before_any_compute(embedder):
    with pytest.raises(ContextLengthExceeded, match="input 1 has"):
        embed(embedder, "short", "word " * 400)


def test_an_embeddings_model_refuses_to_generate_text(embedder):
    from bus.sampling import Sampling
    from workers.generation import GenerationRequest
    request = GenerationRequest(kind="completion", messages=None, prompt="hi",
                                sampling=Sampling(max_tokens=2))

    async def first():
        return await anext(embedder.stream_async(request))
    with pytest.raises(ValueError, match="embeddings model"):
        asyncio.run(first())
