"""The gate checks an embedding job's result as it checks text: the node's
signature over the vectors' digest, one finite unit vector per input, usage
recounted from the inputs (here the echo model's words); the log keeps the
digest, the job's region's content store the vectors."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from bus import signing
from bus.content import ContentStore
from bus.events import (JobCancelled, JobCompleted, JobSubmitted, NodeStrike, Sampling,
                        output_hash)
from bus.node_messages import Cancelled, Completed
from bus.regions import single
from bus.replies import Finished, parse_reply
from bus.vectors import pack
from tests.integration.gate.conftest import MODEL


def embedding_job(job_id: str, reply_to: str | None = None) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="alice", key_id="k", model=MODEL,
                        kind="embedding", inputs=("a cat", "sat on the mat"),
                        sampling=Sampling(max_tokens=1), zone="eu", route="zone", queue="eu",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5),
                        reply_to=reply_to)


def signed_vectors(world, job: JobSubmitted, vectors) -> Completed:
    sig = signing.sign_output(world.keys["A"], job.job_id, 1, MODEL, job.input_hash(),
                              output_hash("", vectors=vectors))
    return Completed(job_id=job.job_id, attempt=1, text="", finish_reason="stop",
                     signature=sig, vectors=vectors)


async def leased(world, job: JobSubmitted) -> None:
    await world.queue(job)
    lease = await world.gate["A"].lease("acquire", await world.take("eu"), job.job_id)
    assert lease.action == "run"


async def events_of(world, kind, job_id):
    await asyncio.sleep(0.2)
    return [e for _, e in await world.log() if isinstance(e, kind) and e.job_id == job_id]


async def test_an_embedding_result_is_logged_with_usage_recounted_from_its_inputs(gate_world):
    w = gate_world
    replies = await w.nc.subscribe("replies.emb")
    job = embedding_job("e1", reply_to="replies.emb")
    await leased(w, job)
    vectors = pack([[0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], 3)
    assert (await w.gate["A"].report(signed_vectors(w, job, vectors))).logged
    (done,) = await events_of(w, JobCompleted, "e1")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (2 + 4, 0)
    assert done.vectors is None and done.output_hash == vectors.digest()  # the log: the digest
    assert signing.verify_result(done)
    _started = await replies.next_msg(timeout=2)
    finished = parse_reply((await replies.next_msg(timeout=2)).data)
    assert isinstance(finished, Finished) and finished.event.vectors == vectors
    kept = await ContentStore(w.js, single()).output("eu", "e1")
    assert kept is not None and kept.vectors == vectors


@pytest.mark.parametrize("vectors", [
    pack([[1.0, 0.0]], 2),  # one vector for two inputs
    pack([[3.0, 0.0], [0.0, 1.0]], 2),  # not normalised
    None,  # no vectors at all
], ids=["too-few", "not-unit", "none"])
async def test_vectors_that_cannot_answer_the_job_are_struck_and_never_logged(gate_world,
                                                                              vectors):
    w = gate_world
    job = embedding_job("e2")
    await leased(w, job)
    said = signed_vectors(w, job, vectors) if vectors else Completed(
        job_id="e2", attempt=1, text="", finish_reason="stop",
        signature=signing.sign_output(w.keys["A"], "e2", 1, MODEL, job.input_hash(),
                                      output_hash("")))
    answer = await w.gate["A"].report(said)
    assert not answer.logged and "result refused" in answer.reason, answer.reason
    assert await events_of(w, JobCompleted, "e2") == []
    assert len(await events_of(w, NodeStrike, "e2")) == 1


async def test_vectors_signed_for_other_vectors_are_struck(gate_world):
    w = gate_world
    job = embedding_job("e5")
    await leased(w, job)
    honest = signed_vectors(w, job, pack([[1.0, 0.0], [0.0, 1.0]], 2))
    forged = honest.model_copy(update={"vectors": pack([[0.0, 1.0], [1.0, 0.0]], 2)})
    answer = await w.gate["A"].report(forged)
    assert not answer.logged and "signature" in answer.reason


async def test_a_cancelled_embedding_job_is_refunded_whole_whatever_the_node_says(gate_world):
    w = gate_world
    job = embedding_job("e6")
    await leased(w, job)
    await w.cancels.put("e6", b"1")  # its owner asked (DELETE /v1/jobs/e6)
    assert (await w.gate["A"].report(Cancelled(job_id="e6", attempt=1, text="made up"))).logged
    (cancelled,) = await events_of(w, JobCancelled, "e6")
    assert cancelled.usage is None  # nothing was delivered: nothing is charged
