"""A suspended node's recent unchecked completions are queued for their checks."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from bus import subjects
from bus.checks import CheckRequest
from bus.events import (ChatMessage, JobCompleted, JobSubmitted, Sampling, SpotChecked, Usage,
                        output_hash)
from bus.content import put_input, put_output
from bus.publish import publish_event
from verifier.rechecks import recheck_node

pytestmark = pytest.mark.asyncio
CHEAT, HONEST = "c" * 64, "h" * 64


def job(job_id: str) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, account="carol", key_id="k", model="echo", kind="chat",
                        messages=(ChatMessage(role="user", content="a b c"),),
                        sampling=Sampling(max_tokens=3), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=5))


def completed(job_id: str, node: str) -> JobCompleted:
    return JobCompleted(job_id=job_id, model="echo", node_id=node, operator="op", zone="eu",
                        attempt=1, text="x", finish_reason="stop",
                        usage=Usage(prompt_tokens=3, completion_tokens=1), input_hash="i",
                        output_hash=output_hash("x"), signature="s")


async def logged(js, job_id: str, node: str, content: bool = True) -> None:
    """A completed job as the API and the gate log it: hashes on the log, its
    prompt and text in the content store (``content=False``: expired since)."""
    submitted, done = job(job_id), completed(job_id, node)
    await publish_event(js, submitted.without_content(), "eu")
    await publish_event(js, done.without_content(), "eu")
    if content:
        await put_input(js, submitted)
        await put_output(js, "eu", done)


async def test_a_suspended_nodes_unchecked_completions_are_queued_for_checks(js):
    for job_id, node in (("j1", CHEAT), ("j2", CHEAT), ("j3", HONEST), ("j4", CHEAT)):
        await logged(js, job_id, node)
    await logged(js, "j6", CHEAT, content=False)  # its content is gone: nothing to judge
    await publish_event(js, SpotChecked(job_id="j2", node_id=CHEAT, zone="eu", attempt=1,
                                        passed=False, reason="wrong"), "eu")
    await publish_event(js, job("j5").without_content(), "eu")  # submitted, never completed

    assert await recheck_node(js, CHEAT) == 2
    sub = await js.pull_subscribe(subjects.all_checks(), stream=subjects.CHECKS_STREAM)
    queued = [CheckRequest.model_validate_json(m.data) for m in await sub.fetch(10, timeout=2)]
    assert sorted(r.job.job_id for r in queued) == ["j1", "j4"]
    assert all(r.completed.node_id == CHEAT and r.job.account == "-" for r in queued)
    # The content came back from the content store, as the node saw and said it.
    assert all(r.job.messages == job("j1").messages and r.completed.text == "x" for r in queued)
    assert all(r.job.input_hash() == job("j1").input_hash() for r in queued)
    assert await recheck_node(js, CHEAT, since=datetime.now(timezone.utc)) == 0
