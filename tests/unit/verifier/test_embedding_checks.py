"""Spot checks of embeddings: the verifier re-embeds the inputs and passes
vectors within cosine 0.999 of its own; a node on probation for an embeddings
model is probed with embedding jobs, which the node cannot tell from paid ones."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from bus.events import JobSubmitted
from bus.grants import NodeGrant
from bus.sampling import Sampling
from bus.vectors import pack
from tests.minilm import MINILM, minilm_models  # noqa: F401 - a fixture
from verifier.embedding_judge import EmbeddingJudge
from verifier.judges import Judges
from verifier.probes import probe_job

TEXTS = ("a cat sat on the mat", "stock markets fell sharply")


def job(inputs=TEXTS) -> JobSubmitted:
    return JobSubmitted(job_id="j", account="-", key_id="-", model=MINILM, kind="embedding",
                        inputs=inputs, sampling=Sampling(max_tokens=1), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=1))


@pytest.fixture(scope="module")
def judge(minilm_models):  # noqa: F811
    import asyncio
    found = asyncio.run(Judges(minilm_models).get(MINILM))
    assert isinstance(found, EmbeddingJudge)
    return found


def test_honest_vectors_pass_even_when_batched_differently(judge):
    one_by_one = [judge.embedder.forward([t])[0] for t in TEXTS]
    verdict = judge.check_vectors(job(), pack(one_by_one, 384))
    assert verdict.passed, verdict.evidence


def test_vectors_of_other_texts_or_in_another_order_fail(judge):
    swapped = pack(judge.embedder.forward(list(reversed(TEXTS))), 384)
    verdict = judge.check_vectors(job(), swapped)
    assert not verdict.passed and "vector 0 differs" in verdict.reason
    other = pack(judge.embedder.forward(["something else", "entirely"]), 384)
    assert not judge.check_vectors(job(), other).passed


def test_a_missing_vector_or_a_text_result_fails(judge):
    assert not judge.check_vectors(job(), pack(judge.embedder.forward([TEXTS[0]]), 384)).passed
    assert not judge.check_vectors(job(), None).passed
    assert not judge.check(job(), "some text", "stop").passed


def test_a_node_on_probation_for_an_embeddings_model_gets_embedding_probes():
    grant = NodeGrant(node_id="n" * 64, node_name="e", operator="op", zone="eu",
                      models=(MINILM,), status="probation")
    probe = probe_job(grant, random.Random(3))
    assert probe.kind == "embedding" and probe.inputs and probe.messages is None
    assert probe.sampling == Sampling(max_tokens=1)
    chat = probe_job(grant.model_copy(update={"models": ("tiny",)}), random.Random(3))
    assert chat.kind == "chat" and chat.inputs is None
