"""The gate on a real nats-server: what a node says is logged only when it
holds the job's lease and its result checks out, and then as the network
counts it (usage recounted, operator and tier from the grant)."""
from __future__ import annotations

import asyncio

from bus import signing, subjects
from bus.events import (JobCompleted, JobExpired, JobFailed, JobStarted, NodeStrike,
                        output_hash)
from bus.node_messages import Cancelled, Completed, Expired, LeaseAnswer, LeaseAsk
from bus.replies import Finished, Started, parse_reply
from tests.integration.gate.conftest import MODEL, a_job


def signed(world, node: str, job, text: str, attempt: int = 1, key_of: str | None = None):
    sig = signing.sign_output(world.keys[key_of or node], job.job_id, attempt, MODEL,
                              job.input_hash(), output_hash(text))
    return Completed(job_id=job.job_id, attempt=attempt, text=text, finish_reason="stop",
                     signature=sig)


async def events_of(world, kind, job_id=None):
    await asyncio.sleep(0.2)
    return [e for _, e in await world.log() if isinstance(e, kind)
            and (job_id is None or getattr(e, "job_id", None) == job_id)]


async def test_a_held_job_is_logged_as_the_network_counts_it(gate_world):
    w = gate_world
    replies = await w.nc.subscribe("replies.api1")
    job = a_job("j1", words="a b c d e", max_tokens=3, reply_to="replies.api1")
    await w.queue(job)
    msg = await w.take("eu")
    lease = await w.gate["A"].lease("acquire", msg, "j1")
    assert (lease.action, lease.attempt) == ("run", 1)
    # The node claims nothing about usage; it returns 5 words where 3 were allowed.
    answer = await w.gate["A"].report(signed(w, "A", job, "a b c d e"))
    assert answer.logged
    (done,) = await events_of(w, JobCompleted, "j1")
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (5, 3)  # capped
    assert (done.operator, done.tier, done.node_id) == ("op-a", 2, w.ids["A"])
    assert signing.verify_result(done)
    assert len(await events_of(w, JobStarted, "j1")) == 1
    started = parse_reply((await replies.next_msg(timeout=2)).data)
    finished = parse_reply((await replies.next_msg(timeout=2)).data)
    assert isinstance(started, Started) and started.node_id == w.ids["A"]
    assert isinstance(finished, Finished) and finished.event.event_id == done.event_id


async def test_a_repeated_report_is_logged_once(gate_world):
    w = gate_world
    job = a_job("j2")
    await w.queue(job)
    await w.gate["A"].lease("acquire", await w.take("eu"), "j2")
    result = signed(w, "A", job, "one two")
    assert (await w.gate["A"].report(result)).logged
    assert (await w.gate["A"].report(result)).logged  # its answer was lost: asked again
    assert len(await events_of(w, JobCompleted, "j2")) == 1


async def test_a_lease_for_another_zones_job_is_refused_and_struck(gate_world):
    w = gate_world
    await w.queue(a_job("j3"))
    msg = await w.take("eu")  # an eu delivery, asked for by the na node
    answer = await w.gate["C"].lease("acquire", msg, "j3")
    assert answer.action == "stop"
    forged = LeaseAsk(op="acquire", job_id="other-job", attempt=1,
                      message=msg.metadata.sequence.stream)
    reply = await w.nc.request(subjects.node_says(w.ids["A"], subjects.NODE_LEASE),
                               forged.model_dump_json().encode(), timeout=2)
    assert LeaseAnswer.model_validate_json(reply.data).action == "stop"  # not that job
    strikes = await events_of(w, NodeStrike)
    assert {s.node_id for s in strikes} == {w.ids["C"], w.ids["A"]}
    assert (await w.gate["A"].lease("acquire", msg, "j3")).action == "run"  # the real one


async def test_a_result_from_a_node_without_the_lease_is_never_logged(gate_world):
    w = gate_world
    job = a_job("j4")
    await w.queue(job)
    await w.gate["A"].lease("acquire", await w.take("eu"), "j4")
    answer = await w.gate["B"].report(signed(w, "B", job, "stolen"))
    assert not answer.logged
    assert await events_of(w, JobCompleted, "j4") == []
    assert (await w.gate["A"].report(signed(w, "A", job, "one two three"))).logged


async def test_a_forged_signature_is_struck_and_the_job_moves_on(gate_world):
    w = gate_world
    job = a_job("j5")
    await w.queue(job)
    await w.gate["A"].lease("acquire", await w.take("eu"), "j5")
    answer = await w.gate["A"].report(signed(w, "A", job, "one", key_of="B"))
    assert not answer.logged and "signature" in answer.reason
    assert await events_of(w, JobCompleted, "j5") == []
    assert [s.job_id for s in await events_of(w, NodeStrike)] == ["j5"]
    again = await w.take("eu")  # a copy of the job, for another node
    lease = await w.gate["B"].lease("acquire", again, "j5")
    assert (lease.action, lease.took_over, lease.attempt) == ("run", True, 2)


async def test_expiry_is_the_networks_call_not_the_nodes(gate_world):
    w = gate_world
    job = a_job("j6")
    await w.queue(job)
    await w.gate["A"].lease("acquire", await w.take("eu"), "j6")
    answer = await w.gate["A"].report(Expired(job_id="j6", attempt=1))
    assert not answer.logged  # its deadline is minutes away
    assert await events_of(w, JobExpired, "j6") == []
    assert [s.job_id for s in await events_of(w, NodeStrike)] == ["j6"]


async def test_a_cancel_no_one_asked_for_is_a_failure_not_a_charge(gate_world):
    w = gate_world
    job = a_job("j7")
    await w.queue(job)
    await w.gate["B"].lease("acquire", await w.take("eu"), "j7")
    assert (await w.gate["B"].report(Cancelled(job_id="j7", attempt=1, text="one"))).logged
    (failed,) = await events_of(w, JobFailed, "j7")  # nobody asked: not a paid cancel
    assert failed.code == "worker_error"


async def test_one_attempt_has_one_outcome_whatever_the_node_reports_after(gate_world,
                                                                           monkeypatch):
    from bus.node_messages import Failed
    from gate import results
    w = gate_world
    job = a_job("j8")
    await w.queue(job)
    await w.gate["A"].lease("acquire", await w.take("eu"), "j8")
    done = signed(w, "A", job, "one two")
    assert (await w.gate["A"].report(done)).logged
    failed = Failed(job_id="j8", attempt=1, code="worker_error", message="changed my mind")
    assert not (await w.gate["A"].report(failed)).logged  # refused, and struck
    monkeypatch.setattr(results, "REPEAT_WINDOW_S", 0.0)  # as if minutes had passed
    assert (await w.gate["A"].report(done)).logged  # answered, not logged again
    assert len(await events_of(w, JobCompleted, "j8")) == 1
    assert await events_of(w, JobFailed, "j8") == []
    assert [s.job_id for s in await events_of(w, NodeStrike)] == ["j8"]


async def test_a_lease_naming_a_stream_that_keeps_no_jobs_is_refused(gate_world):
    """The gate reads the job from the stream a node's ack subject names: a node
    that names the log or the content store (to have them read back to it as a
    job) is refused and struck, and the job itself stays free."""
    w = gate_world
    await w.queue(a_job("j-own"))
    msg = await w.take("eu")
    seq = msg.metadata.sequence.stream
    for stream in (subjects.EVENTS_STREAM, subjects.CONTENT_STREAM, "JOBS_elsewhere"):
        forged = LeaseAsk(op="acquire", job_id="j-own", attempt=1, message=seq,
                          ack=f"$JS.ACK.{stream}.{subjects.consumer_name('eu', MODEL)}.1.{seq}.1.0.0")
        reply = await w.nc.request(subjects.node_says(w.ids["A"], subjects.NODE_LEASE),
                                   forged.model_dump_json().encode(), timeout=2)
        assert LeaseAnswer.model_validate_json(reply.data).action == "stop", stream
    assert {s.node_id for s in await events_of(w, NodeStrike)} == {w.ids["A"]}
    assert (await w.gate["A"].lease("acquire", msg, "j-own")).action == "run"
