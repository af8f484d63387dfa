"""A node's outcome, checked before it is logged or paid.

The node reports on ``node.<its id>.outcome`` (``bus.node_messages``). The
gate logs the outcome only for the node that holds the job's lease, for the
attempt it holds, and builds the event itself:

- ``JobCompleted``: the node's signature must verify over the job's input hash
  and the hash of the text it returned; usage is recounted from the job's
  prompt and that text with the model's tokenizer (``gate.usage``) and capped
  at the job's ``max_tokens``; operator and tier come from the node's grant.
- ``JobCancelled`` only when a cancel was asked for (the ``cancels`` bucket),
  charged for the text produced, recounted; otherwise it is a failure.
- ``JobExpired`` only when the job's deadline has passed by the gate's clock.

The gate seals the lease with the digest of the report, logs the event (its id
derived from the job and attempt), queues a sampled completion for its spot
check (``bus.checks``; every one of a node on probation, which earns no RCP),
sends the caller's API instance the final reply, and answers. One attempt has one outcome: a repeat of the sealed report
(its answer was lost) is logged again within the stream's duplicate window,
where JetStream drops it, and only answered after it; any other report for a
sealed attempt is refused. A refused result (a bad signature, a model whose
usage cannot be recounted) costs the node a strike and moves the job on.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import datetime, timezone

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus.checks import Sampler, request_check
from bus.content import put_output
from bus.events import (Event, JobCancelled, JobCompleted, JobExpired, JobFailed, JobSubmitted,
                        Usage, output_hash)
from bus.model_book import CatalogBook
from bus.grants import NodeGrant
from bus.node_messages import Cancelled, Completed, Expired, Failed, OutcomeAnswer
from bus.publish import publish_event
from bus.replies import Finished
from bus.signing import output_payload, verify_signature
from bus.streams import DUPLICATE_WINDOW_S, has_key
from gate.leasing import Held, Leasing
from gate.usage import Counters, vectors_refusal

log = logging.getLogger("inferbus.gate")
# A repeat of a sealed report is logged again only while JetStream still drops it.
REPEAT_WINDOW_S = DUPLICATE_WINDOW_S / 2


class Refused(Exception):
    """An outcome the gate will not log; ``strike``: the node is at fault."""

    def __init__(self, reason: str, strike: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.strike = reason, strike


def logprobs_refusal(job: JobSubmitted, logprobs: tuple | None) -> str | None:
    """Why a completion's logprobs do not answer the job: there iff it asked for them,
    with at most the top alternatives it asked for."""
    wanted = job.sampling.logprobs
    if (logprobs is None) != (wanted is None):
        return "logprobs " + ("missing" if wanted is not None else "the job did not ask for")
    if logprobs and any(len(p.top_logprobs) > wanted for p in logprobs):
        return f"more than the {wanted} top logprobs asked for"
    return None


def outcome_id(job_id: str, attempt: int) -> str:
    """The event id of a job attempt's outcome: a repeat of the report logs nothing new."""
    return hashlib.sha256(f"outcome|{job_id}|{attempt}".encode()).hexdigest()[:32]


class Outcomes:
    def __init__(self, nc: Client, js: JetStreamContext, leasing: Leasing, counters: Counters,
                 cancels: KeyValue, sampler: Sampler | None = None,
                 catalog: CatalogBook | None = None) -> None:
        self.nc, self.js, self.leasing = nc, js, leasing
        self.catalog = catalog  # which roots a model name means (None: any)
        self.counters, self.cancels = counters, cancels
        self.sampler = sampler or Sampler()

    async def report(self, grant: NodeGrant,
                     said: Completed | Failed | Cancelled | Expired) -> OutcomeAnswer:
        """Check, seal, log and forward one outcome; raises :class:`Refused`."""
        held = await self.leasing.find(said.job_id)
        if held is None or held.node_id != grant.node_id:
            raise Refused("this node does not hold the job's lease")
        if said.attempt != held.lease.lease.attempt:
            raise Refused(f"attempt {said.attempt} is not the one held "
                          f"({held.lease.lease.attempt})")
        digest = hashlib.sha256(said.model_dump_json().encode()).hexdigest()
        sealed = held.lease.lease
        if sealed.done and sealed.outcome != digest:
            raise Refused("another outcome of this attempt was sealed", strike=True)
        if sealed.done and time.time() - sealed.sealed_at > REPEAT_WINDOW_S:
            self.leasing.forget(said.job_id)
            return OutcomeAnswer(logged=True)  # logged long ago: JetStream would not drop it now
        root = said.model_root if isinstance(said, Completed) else None
        await self.counters.ready(held.job.model, root)  # loaded off the event loop
        event = await self._event(grant, held, said)
        if not sealed.done and not await self.leasing.seal(held, digest):
            self.leasing.forget(said.job_id)
            raise Refused("the lease was taken over")
        if held.started is not None:
            await held.started  # the start is on the log before the outcome
        # The caller is answered while the log stores the outcome: the outcome is
        # checked and sealed, and until it is stored the node has no answer, so it
        # reports again (to any gate) and the outcome is logged then.
        storing = asyncio.ensure_future(self._store(event, held.job))
        if held.job.reply_to:
            await self.nc.publish(held.job.reply_to,
                                  Finished(event=event).model_dump_json().encode())
        await storing
        if isinstance(event, JobCompleted) and self.sampler.wanted(grant, event.job_id):
            # The judges read the text (its signature stands on output_hash): a check
            # request without the logprobs stays well inside one message.
            await request_check(self.js, held.job, event.model_copy(update={"logprobs": None}))
        self.leasing.forget(said.job_id)
        return OutcomeAnswer(logged=True)

    async def _store(self, event: Event, job: JobSubmitted) -> None:
        """Log the outcome; a completion's text goes to the job's region's content
        store, and the log keeps its hash."""
        zone = job.zone
        if isinstance(event, JobCompleted):
            tools = job.sampling.grammar is not None and job.sampling.grammar.for_tools
            await asyncio.gather(put_output(self.js, zone, event, tools),
                                 publish_event(self.js, event.without_content(), zone))
        else:
            await publish_event(self.js, event, zone)

    async def _event(self, grant: NodeGrant, held: Held,
                     said: Completed | Failed | Cancelled | Expired) -> Event:
        job, node, attempt = held.job, grant.node_id, said.attempt
        event_id = outcome_id(job.job_id, attempt)
        if isinstance(said, Completed):
            in_hash = job.input_hash()
            out_hash = output_hash(said.text, said.logprobs, vectors=said.vectors)
            payload = output_payload(job.job_id, node, attempt, job.model, in_hash, out_hash,
                                     said.model_root)
            if not verify_signature(node, payload, said.signature):
                raise Refused("result signature does not verify", strike=True)
            if self.catalog and (why := self.catalog.refusal(job.model, said.model_root)):
                raise Refused(f"result refused: {why}", strike=True)
            if why := logprobs_refusal(job, said.logprobs):
                raise Refused(f"result refused: {why}", strike=True)
            if why := vectors_refusal(job, said.vectors,
                                      self.counters.get(job.model, said.model_root), said.text):
                raise Refused(f"result refused: {why}", strike=True)
            if (usage := self._usage(held, said.text, said.model_root)) is None:
                return JobFailed(event_id=event_id, job_id=job.job_id, node_id=node,
                                 zone=job.zone, code="usage_unverifiable",
                                 message=f"the network cannot count {job.model}'s tokens")
            return JobCompleted(
                event_id=event_id, job_id=job.job_id, model=job.model, node_id=node,
                operator=grant.operator, tier=grant.tier, zone=grant.zone, attempt=attempt,
                text=said.text, finish_reason=said.finish_reason,
                usage=usage, input_hash=in_hash, output_hash=out_hash,
                signature=said.signature, probation=grant.status == "probation",
                model_root=said.model_root, vectors=said.vectors, logprobs=said.logprobs)
        if isinstance(said, Cancelled):
            if not await has_key(self.cancels, job.job_id):
                return JobFailed(event_id=event_id, job_id=job.job_id, node_id=node,
                                 zone=job.zone, code="worker_error",
                                 message="the node stopped the job though no cancel was asked")
            # A cancelled embedding job delivered nothing: it is refunded whole.
            usage = None if said.text is None or job.kind == "embedding" else \
                self._usage(held, said.text)
            return JobCancelled(event_id=event_id, job_id=job.job_id, zone=job.zone,
                                reason="cancelled", model=job.model, node_id=node, usage=usage)
        if isinstance(said, Expired):
            if job.deadline > datetime.now(timezone.utc):
                raise Refused("the job's deadline has not passed", strike=True)
            return JobExpired(event_id=event_id, job_id=job.job_id, zone=job.zone)
        return JobFailed(event_id=event_id, job_id=job.job_id, node_id=node, zone=job.zone,
                         code=said.code, message=said.message)

    def _usage(self, held: Held, text: str, root: str | None = None) -> Usage | None:
        """The job's usage as the network counts it; None when it cannot count it."""
        counter = self.counters.get(held.job.model, root)
        if counter is None:
            return None
        completion = min(counter.output(text), held.job.sampling.max_tokens)
        return Usage(prompt_tokens=counter.prompt(held.job), completion_tokens=completion)
