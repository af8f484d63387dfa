"""A suspended node's embedding work is re-checked with its inputs and vectors
as the content store kept them, so honest vectors are judged as such."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bus import subjects
from bus.checks import CheckRequest
from bus.content import put_input, put_output
from bus.events import JobCompleted, JobSubmitted, Sampling, Usage
from bus.publish import publish_event
from bus.vectors import pack
from verifier.rechecks import recheck_node

pytestmark = pytest.mark.asyncio
NODE = "e" * 64


async def test_an_embedding_job_is_rechecked_with_its_inputs_and_vectors(js):
    job = JobSubmitted(job_id="emb1", account="carol", key_id="k", model="minilm",
                       kind="embedding", inputs=("a cat", "a dog"),
                       sampling=Sampling(max_tokens=1), zone="eu", route="zone",
                       deadline=datetime.now(timezone.utc) + timedelta(minutes=5))
    vectors = pack([[1.0, 0.0], [0.0, 1.0]], 2)
    done = JobCompleted(job_id="emb1", model="minilm", node_id=NODE, operator="op", zone="eu",
                        attempt=1, text="", finish_reason="stop", vectors=vectors,
                        usage=Usage(prompt_tokens=8, completion_tokens=0),
                        input_hash=job.input_hash(), output_hash=vectors.digest(),
                        signature="s")
    await publish_event(js, job.without_content(), "eu")
    await publish_event(js, done.without_content(), "eu")
    await put_input(js, job)
    await put_output(js, "eu", done)

    assert await recheck_node(js, NODE) == 1
    sub = await js.pull_subscribe(subjects.all_checks(), stream=subjects.CHECKS_STREAM)
    (msg,) = await sub.fetch(1, timeout=2)
    request = CheckRequest.model_validate_json(msg.data)
    assert request.job.inputs == ("a cat", "a dog") and request.completed.vectors == vectors
    assert request.job.input_hash() == job.input_hash()
