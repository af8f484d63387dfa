"""Logprobs are part of a node's signed output: the gate logs a result whose
signature covers its text and its logprobs, and refuses (and strikes) one whose
logprobs were changed after signing, or that the job did not ask for."""
from __future__ import annotations

import asyncio

from bus import signing
from bus.events import JobCompleted, NodeStrike, Sampling, output_hash
from bus.node_messages import Completed
from bus.replies import Finished, parse_reply
from bus.sampling import TokenLogprob, TopLogprob
from tests.integration.gate.conftest import MODEL, a_job


def logprobs(*words: str, top: int = 1) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(token=w, logprob=-0.25, bytes=tuple(w.encode()),
                              top_logprobs=tuple(TopLogprob(token=w, logprob=-0.25)
                                                 for _ in range(top))) for w in words)


def signed(world, job, text: str, lps) -> Completed:
    sig = signing.sign_output(world.keys["A"], job.job_id, 1, MODEL, job.input_hash(),
                              output_hash(text, lps))
    return Completed(job_id=job.job_id, attempt=1, text=text, finish_reason="stop",
                     signature=sig, logprobs=lps)


async def leased(world, job_id: str, **sampling):
    job = a_job(job_id, reply_to="replies.lp")
    job = job.model_copy(update={"sampling": Sampling(max_tokens=8, **sampling)})
    await world.queue(job)
    await world.gate["A"].lease("acquire", await world.take("eu"), job_id)
    return job


async def logged(world, kind, job_id: str) -> list:
    await asyncio.sleep(0.2)
    return [e for _, e in await world.log() if isinstance(e, kind) and e.job_id == job_id]


async def test_a_signed_result_with_logprobs_is_logged_and_handed_on_with_them(gate_world):
    w = gate_world
    replies = await w.nc.subscribe("replies.lp")
    job = await leased(w, "lp1", logprobs=1)
    lps = logprobs("one", " two")
    assert (await w.gate["A"].report(signed(w, job, "one two", lps))).logged
    (done,) = await logged(w, JobCompleted, "lp1")
    assert done.output_hash == output_hash("one two", lps)
    assert signing.verify_result(done)
    while not isinstance(reply := parse_reply((await replies.next_msg(timeout=2)).data),
                         Finished):
        pass
    assert reply.event.logprobs == lps and reply.event.text == "one two"


async def test_logprobs_altered_after_signing_are_refused_and_struck(gate_world):
    w = gate_world
    job = await leased(w, "lp2", logprobs=1)
    result = signed(w, job, "one two", logprobs("one", " two"))
    forged = result.model_copy(update={"logprobs": logprobs("one", " three")})
    answer = await w.gate["A"].report(forged)
    assert not answer.logged and "signature" in answer.reason
    assert await logged(w, JobCompleted, "lp2") == []
    assert [s.job_id for s in await logged(w, NodeStrike, "lp2")] == ["lp2"]


async def test_logprobs_a_job_did_not_ask_for_are_refused(gate_world):
    job = await leased(gate_world, "lp3")
    answer = await gate_world.gate["A"].report(signed(gate_world, job, "one", logprobs("one")))
    assert not answer.logged and "did not ask" in answer.reason


async def test_more_top_alternatives_than_the_job_asked_for_are_refused(gate_world):
    job = await leased(gate_world, "lp4", logprobs=1)
    answer = await gate_world.gate["A"].report(
        signed(gate_world, job, "one", logprobs("one", top=3)))
    assert not answer.logged and "top logprobs" in answer.reason
