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
from tests.unit.verifier.test_prefill import dirs, engine, generate, judge  # noqa: F401
from tests.unit.verifier.test_prefill import job as tiny_job
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
    ({}, True), ({"logprobs": 5}, True), ({"logit_bias": {3: 5.0}}, True),
    ({"ignore_eos": True}, True), ({"grammar": Grammar(kind="json_object")}, False),
    ({"presence_penalty": 0.5}, False), ({"frequency_penalty": -0.5}, False)])
def test_the_prefill_judge_judges_only_jobs_whose_sampling_it_replays(sampling, judged):
    assert PrefillJudge.can_judge(job(**sampling)) is judged


def test_a_biased_honest_output_passes_and_would_fail_without_the_bias(engine, judge):
    plain = tiny_job(0, max_tokens=30, temperature=0)
    honest, _ = generate(engine, plain)
    # Push the greedy output off its course: its first word's token is banned, and a
    # word it never writes favoured (but not forced: the model still has its say).
    first = engine.tokenizer.encode(" " + honest.split()[0], add_special_tokens=False)[0]
    other = next(w for w in (" fox", " dog", " Paris", " capital") if w.strip() not in honest)
    liked = engine.tokenizer.encode(other, add_special_tokens=False)[0]
    biased = tiny_job(0, max_tokens=30, temperature=0, ignore_eos=True,
                      logit_bias={first: -100.0, liked: 3.0})
    text, reason = generate(engine, biased)
    assert text != honest
    assert judge.check(biased, text, reason).passed
    assert not judge.check(plain, text, reason).passed
