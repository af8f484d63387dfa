"""The verifier service: judges the completions the gate sampled, logs each
verdict, keeps each node's standing, and probes nodes on probation.

Per check (``bus.checks``), one at a time (judging is CPU work, done in a
thread): the model's judge (:mod:`verifier.judges`) gives a verdict; the
verifier logs ``SpotChecked`` (and, when it failed, a ``NodeStrike`` with the
evidence), counts it in the node's grant, and logs ``NodeVerified`` or
``NodeSuspended`` when the standing rules (:mod:`verifier.standing`) say so;
a suspended node's recent unchecked work is queued for checks too
(:mod:`verifier.rechecks`). Strikes for other refusals count toward
suspension as well (:mod:`verifier.strikes`). Where the network checks
locations, the verifier also checks where each node connects from
(:mod:`verifier.location`).
Settlement compensates a failed job from the log. Event ids derive from the
job attempt, so a check judged twice (a redelivery) logs nothing new; it is
acked only once everything is logged. Several verifiers may run: they share
the checks.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.kv import KeyValue
from pydantic import ValidationError

from bus import subjects
from bus.checks import CheckRequest
from bus.config import Settings
from bus.content import EVIDENCE, put
from bus.events import Event, NodeStrike, SpotChecked, output_hash
from bus.grants import GrantBook, NodeGrant, change_grant
from bus.publish import publish_event
from bus.signing import verify_result
from bus.streams import batches, grants_bucket, patiently
from bus.model_store import ModelStore
from verifier.judges import Judges
from verifier.location import follow_locations
from verifier.probes import Prober
from verifier.rechecks import recheck_node
from verifier.standing import after_check
from verifier.strikes import SPOT_CHECK_STRIKE, Rule, follow_strikes
from verifier.verdict import Verdict

log = logging.getLogger("inferbus.verifier")
PROBE_EVERY_S = 1.0
MAX_DELIVER = 5  # a check that keeps failing (no judge loads it) is given up, not retried forever
NO_JUDGE_DELAY_S = 30.0


def _id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


class Verifier:
    def __init__(self, js: JetStreamContext, grants: KeyValue, judges: Judges,
                 settings: Settings, prober: Prober) -> None:
        self.js, self.grants, self.judges = js, grants, judges
        self.settings, self.prober = settings, prober
        self.layout = settings.layout()
        self.checked = self.failed = 0

    async def handle(self, msg: Msg) -> None:
        try:
            request = CheckRequest.model_validate_json(msg.data)
        except ValidationError as exc:  # only the gate writes checks: a bug, not an attack
            log.error("unreadable check request dropped: %s", exc.errors()[:1])
            return await msg.ack()
        job, done = request.job, request.completed
        if done.input_hash != job.input_hash() or done.job_id != job.job_id \
                or not verify_result(done):
            # Only the gate queues checks; a request whose text its node did not sign
            # for this job could frame an honest node, so it is never judged.
            log.error("check request for job %s not signed by its node for it: dropped",
                      done.job_id)
            return await msg.ack()
        judge = await self.judges.get(done.model, done.model_root)
        if judge is None:
            if (done.model_root or done.model) in self.judges.unjudgeable:
                return await msg.ack()  # no verdict rather than a wrong one
            return await msg.nak(delay=NO_JUDGE_DELAY_S)
        if not getattr(judge, "can_judge", lambda _: True)(job):
            return await msg.ack()  # its sampling is not replayed: no verdict, not a wrong one
        if job.kind == "embedding":
            if not hasattr(judge, "check_vectors"):  # its copy is no embeddings model
                return await msg.ack()  # no verdict rather than a wrong one
            verdict = await asyncio.to_thread(judge.check_vectors, job, done.vectors)
        else:
            verdict = await asyncio.to_thread(judge.check, job, done.text, done.finish_reason)
        await self.record(request, verdict)
        await msg.ack()

    async def record(self, request: CheckRequest, verdict: Verdict) -> None:
        """Log the verdict and what it does to the node's standing."""
        job, done = request.job, request.completed
        probe = self.prober.is_probe(job.job_id)
        self.prober.answered(done.node_id, job.job_id)
        # The evidence quotes the job's text: it is content, kept in the job's region;
        # the log keeps its hash.
        evidence = verdict.evidence[:4096]
        await put(self.js, job.zone, job.job_id, EVIDENCE, evidence.encode(),
                  f"ev-{job.job_id}-{done.attempt}")
        evidence = json.dumps({"content": EVIDENCE, "sha256": output_hash(evidence)})
        await publish_event(self.js, SpotChecked(
            event_id=_id("check", job.job_id, done.attempt), job_id=job.job_id,
            node_id=done.node_id, zone=job.zone, attempt=done.attempt, passed=verdict.passed,
            probe=probe, reason=verdict.reason[:2000], evidence=evidence), job.zone)
        self.checked += 1
        if not verdict.passed:
            self.failed += 1
            log.warning("node %s failed the check of job %s: %s", done.node_id[:12], job.job_id,
                        verdict.reason)
            await publish_event(self.js, NodeStrike(
                event_id=_id("check-strike", job.job_id, done.attempt), node_id=done.node_id,
                reason=f"{SPOT_CHECK_STRIKE}: {verdict.reason}"[:2000], job_id=job.job_id,
                evidence=evidence), job.zone)
        await self.count(done.node_id, lambda g: after_check(g, verdict.passed, self.settings))

    async def count(self, node_id: str, rule: Rule) -> None:
        """Apply a standing ``rule`` to the node's grant (compare-and-set), log the
        event its new status takes, and re-check a newly suspended node's work."""
        changed: list[Event | None] = []

        def change(grant: NodeGrant | None) -> NodeGrant | None:
            changed.clear()
            if grant is None:
                return None  # removed meanwhile: nothing to count
            new, event = rule(grant)
            changed.append(event)
            return new
        grant = await change_grant(self.grants, node_id, change)
        if not changed or changed[0] is None or grant is None:
            return
        event = changed[0].model_copy(update={"event_id": _id(
            "standing", node_id, grant.status, grant.passed, grant.failed, grant.strikes)})
        log.warning("node %s is now %s", node_id[:12], grant.status)
        await publish_event(self.js, event, grant.zone)
        if grant.status == "suspended":  # its other recent work may be wrong too
            try:
                await recheck_node(self.js, node_id, layout=self.layout)
            except Exception:  # noqa: BLE001 - the suspension stands; say what was missed
                log.exception("queueing the re-checks of node %s failed", node_id[:12])


async def _probe(prober: Prober, book: GrantBook, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await prober.tick(book.all())
        except Exception:  # noqa: BLE001 - the bus is away: probe again later
            log.warning("sending probes failed", exc_info=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY_S)


async def serve(settings: Settings, nc: Client, stop: asyncio.Event,
                judges: Judges | None = None) -> None:
    """Judge checks from the ``CHECKS`` stream and probe nodes until ``stop``."""
    js = nc.jetstream()
    kv = await grants_bucket(js, settings.stream_replicas, settings.home_placement())
    book = await GrantBook().follow(kv)
    prober = Prober(js)
    store = ModelStore(js, settings.layout(), settings.stream_replicas)
    verifier = Verifier(js, kv, judges or Judges(settings.models_dir, store), settings, prober)
    config = ConsumerConfig(durable_name=subjects.VERIFIER_DURABLE, ack_policy=AckPolicy.EXPLICIT,
                            ack_wait=120.0, max_deliver=MAX_DELIVER)
    # One verifier per region (or several): each judges its own region's checks,
    # where the jobs' content is.
    stream = settings.layout().checks_stream(settings.this_region())
    sub = await patiently(lambda: js.pull_subscribe(
        subjects.all_checks(), durable=subjects.VERIFIER_DURABLE, stream=stream,
        config=config), "verifier consumer")
    probing = asyncio.create_task(_probe(prober, book, stop))
    striking = asyncio.create_task(follow_strikes(js, verifier.count, settings, stop))
    locating = asyncio.create_task(follow_locations(settings, js, kv, book, stop))
    log.info("verifier serving")
    try:
        async for msgs in batches(sub, stop, 4, "verifier"):
            for msg in msgs:
                try:
                    await verifier.handle(msg)
                except Exception:  # noqa: BLE001 - not acked: it comes again after ack_wait
                    log.exception("checking %s failed", msg.subject)
    finally:
        helpers = (probing, striking, locating)
        for task in helpers:
            task.cancel()
        # Awaited, so each one's own pull subscription is gone before the connection
        # drains: a drain waits for every subscription still open, and one whose fetch
        # was cut short mid-message would hold the process for the drain's timeout.
        await asyncio.gather(*helpers, return_exceptions=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await book.close()
