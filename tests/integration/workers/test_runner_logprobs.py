"""A node runs a job that asks for logprobs and a JSON schema, on the real gate: the
live deltas carry each token's logprobs, the logged result carries them all, signed
with the text, and the text is an instance of the schema (echo model)."""
from __future__ import annotations

import asyncio
import json

import pytest

from bus import signing, subjects
from bus.events import Sampling
from bus.replies import Delta, Finished, parse_reply
from bus.sampling import Grammar
from tests.integration.gate.conftest import a_job, gate_world  # noqa: F401
from workers.echo import EchoEngine
from workers.runner import JobRunner

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


async def run_job(w, job, watch: bool = True) -> tuple[list, Finished]:
    """Run ``job`` on node A: its live replies (when ``watch``) and its final one."""
    live = await w.nc.subscribe(subjects.node_live(w.ids["A"], "replies.api1")
                                if watch else "nobody.listens")
    done = await w.nc.subscribe("replies.api1")
    await w.queue(job)
    runner = JobRunner(nc=w.nc, generator=EchoEngine("echo"), key=w.keys["A"], ack_wait_s=30,
                       max_attempts=3, cancels=w.cancels, gate=w.gate["A"])
    # The node pings as a worker does: a job longer than the gate's lapse (0.5 s)
    # would otherwise be moved on from a node it takes for dead.
    stop = asyncio.Event()
    pinging = asyncio.create_task(w.gate["A"].ping(stop))
    try:
        await runner.run(await w.take("eu"))
    finally:
        stop.set()
        await pinging
    deltas = []
    while (msg := await _next(live)) is not None:
        deltas.append(parse_reply(msg.data))
    while not isinstance(final := parse_reply((await done.next_msg(timeout=5)).data), Finished):
        pass
    return deltas, final


async def _next(sub):
    try:
        return await sub.next_msg(timeout=0.3)
    except Exception:  # noqa: BLE001 - nothing more came
        return None


async def test_live_deltas_and_the_signed_result_carry_the_logprobs(gate_world):  # noqa: F811
    job = a_job("lpj", words="one two three", reply_to="replies.api1")
    job = job.model_copy(update={"sampling": Sampling(max_tokens=8, logprobs=2)})
    deltas, final = await run_job(gate_world, job)
    assert all(isinstance(d, Delta) for d in deltas)
    assert [lp.token for d in deltas for lp in d.logprobs] == ["one", " two", " three"]
    done = final.event
    assert done.text == "one two three" and done.logprobs == tuple(
        lp for d in deltas for lp in d.logprobs)
    assert signing.verify_result(done)


async def test_a_schema_job_answers_an_instance_of_the_schema(gate_world):  # noqa: F811
    job = a_job("gj", words="anything", reply_to="replies.api1")
    job = job.model_copy(update={"sampling": Sampling(
        max_tokens=8, grammar=Grammar(kind="json_schema", text=json.dumps(SCHEMA)))})
    _, final = await run_job(gate_world, job)
    assert json.loads(final.event.text) == {"ok": False} and final.event.logprobs is None


async def test_a_schema_no_worker_can_compile_fails_the_job_with_its_reason(gate_world):  # noqa: F811
    job = a_job("bad", words="anything", reply_to="replies.api1")
    job = job.model_copy(update={"sampling": Sampling(
        max_tokens=8, grammar=Grammar(kind="json_schema", text="{broken"))})
    _, final = await run_job(gate_world, job)
    assert final.event.type == "JobFailed" and "not valid JSON" in final.event.message


# The gate runs in this process: under a loaded machine, measuring a result of this
# size can hold the shared event loop past the gate's 0.5 s lapse, and the gate would
# take its own node for dead. What is tested here is the size check, not liveness.
@pytest.mark.parametrize("gate_world", [{"lapse_s": 10.0}], indirect=True)
async def test_a_result_too_big_for_one_message_fails_the_job_saying_why(gate_world):  # noqa: F811
    words = " ".join(f"w{i}" for i in range(2000))  # 2000 tokens x 20 alternatives: > 1 MiB
    job = a_job("big", words=words, reply_to="replies.api1")
    job = job.model_copy(update={"sampling": Sampling(max_tokens=2000, logprobs=20)})
    _, final = await run_job(gate_world, job, watch=False)
    assert final.event.type == "JobFailed" and "top_logprobs" in final.event.message
