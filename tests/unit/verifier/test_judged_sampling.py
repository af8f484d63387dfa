"""Spot checks of jobs with the new sampling fields: the echo judge expects what the
echo engine answers to a grammar, and the prefill judge, which replays only the
model's own logits, gives no verdict on a job that changed them."""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from bus.events import ChatMessage, JobSubmitted
from bus.sampling import Grammar, Sampling
from verifier.judges import EchoJudge
from verifier.prefill import PrefillJudge, job_request
from workers.echo import EchoEngine

SCHEMA = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}},
                     "required": ["ok"]})


def job(**sampling) -> JobSubmitted:
    return JobSubmitted(job_id="j", account="a", key_id="k", model="echo", kind="chat",
                        messages=(ChatMessage(role="user", content="one two three"),),
                        sampling=Sampling(max_tokens=16, **sampling), zone="eu", route="zone",
                        deadline=datetime.now(timezone.utc) + timedelta(minutes=1))


def echoed(j: JobSubmitted) -> str:
    async def collect() -> str:
        return "".join([s.text async for s in EchoEngine("echo").stream_async(job_request(j))])
    return asyncio.run(collect())


@pytest.mark.parametrize("sampling", [
    {}, {"logprobs": 2}, {"grammar": Grammar(kind="json_object")},
    {"grammar": Grammar(kind="json_schema", text=SCHEMA)}, {"logit_bias": {3: 5.0}},
    {"grammar": Grammar(kind="lark", text='start: "{}" | /[a-z ]+/')}])
def test_the_echo_judge_passes_what_an_honest_echo_node_answers(sampling):
    j = job(**sampling)
    assert EchoJudge().check(j, echoed(j), "stop").passed
    assert not EchoJudge().check(j, "something else", "stop").passed


@pytest.mark.parametrize("sampling, judged", [
    ({}, True), ({"logprobs": 5}, True), ({"grammar": Grammar(kind="json_object")}, False),
    ({"logit_bias": {3: 5.0}}, False), ({"presence_penalty": 0.5}, False),
    ({"frequency_penalty": -0.5}, False), ({"ignore_eos": True}, False)])
def test_the_prefill_judge_judges_only_jobs_sampled_from_the_models_own_logits(sampling,
                                                                              judged):
    assert PrefillJudge.can_judge(job(**sampling)) is judged
