"""Embedding vectors on the wire: a compact, exact, hashable field, and the
contract changes that carry them without changing any older job's hash."""
from __future__ import annotations

import base64
import struct
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from bus.events import ChatMessage, JobCompleted, JobSubmitted, Usage, output_hash
from bus.pricing import Pricing, prompt_tokens_bound
from bus.sampling import Sampling
from bus.vectors import MAX_INPUTS, Vectors, cosine, pack


def test_vectors_round_trip_through_base64_float32_exactly():
    floats = [[0.5, -0.25, 1.0], [0.125, 3.0, -2.0]]
    vectors = pack(floats, 3)
    assert (vectors.count, vectors.dims) == (2, 3)
    assert vectors.floats() == floats
    raw = base64.b64decode(vectors.data)
    assert struct.unpack("<6f", raw) == (0.5, -0.25, 1.0, 0.125, 3.0, -2.0)  # little-endian
    assert [base64.b64decode(v) for v in vectors.each_base64()] == [raw[:12], raw[12:]]
    assert pack([raw[:12], raw[12:]], 3) == vectors  # from each vector's bytes too


def test_vectors_whose_data_does_not_match_count_and_dims_are_refused():
    data = pack([[1.0, 0.0]], 2).data
    with pytest.raises(ValidationError, match="does not hold"):
        Vectors(count=2, dims=2, data=data)
    with pytest.raises(ValueError):
        pack([[1.0, 0.0]], 3)


def test_the_digest_covers_every_byte_and_the_shape():
    a = pack([[1.0, 0.0], [0.0, 1.0]], 2)
    b = pack([[1.0, 0.0], [0.0, 0.5]], 2)
    assert a.digest() != b.digest()
    assert pack([[1.0, 0.0, 0.0, 1.0]], 4).digest() != a.digest()  # same bytes, other shape
    assert output_hash("", vectors=a) == a.digest() != output_hash("")


def test_unnormalised_finds_a_vector_that_is_not_of_unit_length():
    assert pack([[0.6, 0.8], [1.0, 0.0]], 2).unnormalised() is None
    assert pack([[0.6, 0.8], [2.0, 0.0]], 2).unnormalised() == 1
    assert pack([[float("nan"), 0.0]], 2).unnormalised() == 0


def test_cosine_of_parallel_orthogonal_and_zero_vectors():
    assert cosine([1.0, 1.0], [2.0, 2.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


def _job(**kw) -> JobSubmitted:
    return JobSubmitted(job_id="j", account="a", key_id="k", model="m", zone="eu",
                        route="zone", deadline=datetime(2030, 1, 1, tzinfo=timezone.utc), **kw)


def test_an_embedding_job_hashes_its_inputs_and_the_log_copy_keeps_only_the_hash():
    job = _job(kind="embedding", inputs=("a cat", "a dog"), sampling=Sampling(max_tokens=1))
    other = job.model_copy(update={"inputs": ("a cat", "a kitten")})
    assert job.input_hash() != other.input_hash()
    logged = job.without_content()
    assert logged.inputs is None and logged.input_hash() == job.input_hash()


def test_a_chat_job_hashes_as_it_did_before_inputs_existed():
    job = _job(kind="chat", messages=(ChatMessage(role="user", content="hi"),),
               sampling=Sampling(max_tokens=4))
    body = job.model_dump_json(include={"model", "kind", "messages", "prompt", "sampling"},
                               exclude={"sampling": job.sampling.off()})
    import hashlib
    assert job.input_hash() == hashlib.sha256(body.encode()).hexdigest()


def test_an_embedding_job_takes_at_most_max_inputs_texts():
    with pytest.raises(ValidationError):
        _job(kind="embedding", inputs=("x",) * (MAX_INPUTS + 1), sampling=Sampling(max_tokens=1))


def test_the_log_copy_of_a_completed_embedding_job_drops_its_vectors():
    vectors = pack([[1.0, 0.0]], 2)
    done = JobCompleted(job_id="j", model="m", node_id="n", operator="o", zone="eu", attempt=1,
                        text="", finish_reason="stop", usage=Usage(prompt_tokens=3,
                                                                  completion_tokens=0),
                        input_hash="i", output_hash=vectors.digest(), signature="s",
                        vectors=vectors)
    assert done.without_content().vectors is None


def test_embeddings_reserve_a_bound_per_input_and_cost_per_input_token():
    assert prompt_tokens_bound(None, None, ("ab", "é")) == (2 + 2) + (2 + 2)
    pricing = Pricing()
    cost = pricing.cost("all-minilm-l6-v2", Usage(prompt_tokens=10, completion_tokens=0))
    assert cost == 10 * pricing.price("all-minilm-l6-v2").per_token()[0] > 0
    assert pricing.points(0, 1) == 0  # RCP counts generated tokens: an embedding earns none
