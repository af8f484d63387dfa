"""The gate counts an embedding job's tokens with the model's own tokenizer, as
the embedder does, and refuses vectors that cannot answer the job."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bus.events import ChatMessage, JobSubmitted
from bus.sampling import Sampling
from bus.vectors import pack
from gate.usage import Counters, WordCounter, vectors_refusal
from tests.minilm import MINILM, minilm_models  # noqa: F401 - a fixture

TEXTS = ("a cat", "The quick brown fox jumps over the lazy dog.")


def job(kind="embedding", **kw) -> JobSubmitted:
    content = {"inputs": TEXTS} if kind == "embedding" else {
        "messages": (ChatMessage(role="user", content="hi"),)}
    return JobSubmitted(job_id="j", account="-", key_id="-", model=MINILM, kind=kind,
                        sampling=Sampling(max_tokens=1), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc), **{**content, **kw})


def unit(count: int, dims: int = 384):
    return pack([[1.0] + [0.0] * (dims - 1)] * count, dims)


@pytest.fixture(scope="module")
def counter(minilm_models):  # noqa: F811
    return Counters(minilm_models).get(MINILM)


def test_the_gate_counts_inputs_as_the_embedder_sees_them(counter, minilm_models):  # noqa: F811
    from workers.embedder import Embedder
    embedder = Embedder.load(minilm_models / MINILM)
    assert counter.dims == 384
    assert counter.prompt(job()) == sum(embedder.count(list(TEXTS))) == 16
    assert counter.output("") == 0


def test_the_echo_model_counts_input_words():
    assert WordCounter().prompt(job()) == 2 + 9


def test_honest_vectors_pass(counter):
    assert vectors_refusal(job(), unit(2), counter) is None


@pytest.mark.parametrize("vectors, why", [
    (None, "no vectors"),
    (unit(1), "1 vectors returned for 2 inputs"),
    (unit(2, 128), "128 dimensions"),
    (pack([[2.0] + [0.0] * 383] * 2, 384), "not a finite unit vector"),
])
def test_vectors_of_the_wrong_shape_or_length_are_refused(counter, vectors, why):
    assert why in vectors_refusal(job(), vectors, counter)


def test_text_beside_an_embedding_jobs_vectors_is_refused(counter):
    # Unsigned (the digest covers the vectors only), and it would be billed as output.
    assert "text returned" in vectors_refusal(job(), unit(2), counter, "free tokens")


def test_vectors_for_a_text_job_are_refused(counter):
    assert "asked for text" in vectors_refusal(job("chat"), unit(2), counter)
    assert vectors_refusal(job("chat"), None, counter) is None
