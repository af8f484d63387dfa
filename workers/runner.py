"""Running one job: lease, generate with live token replies, sign, report, ack.

The order is the contract: the gate has logged the outcome before the job is
acked, so a crash at any point leaves the job either redelivered (or moved on
by the gate) or recorded, never lost. The node asks the gate for the lease
and reports to it (``workers.gate_client``); while generating, the lease is
renewed with the in-progress acks; a node that lost its lease acks nothing. A
node that takes a job over mid-stream continues from the text the caller
already has. Live text goes to the waiting API instance on the node's own
subject, which the API reads only from the lease holder.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from bus import signing, subjects
from bus.events import JobSubmitted, output_hash
from bus.node_messages import Cancelled, Completed, Expired, Failed, LeaseAnswer
from bus.replies import Delta, Resume, Resumed
from bus.streams import has_key
from workers.embedding_jobs import embedding_outcome
from workers.gate_client import GateClient
from workers.generation import (ContextLengthExceeded, GenerationRequest, Generator,
                                InvalidRequest, Step)

Outcome = Completed | Failed | Cancelled | Expired

log = logging.getLogger("inferbus.worker")
RESUME_TIMEOUT_S = 1.0
RESULT_MARGIN = 16 * 1024  # bytes a result's message adds around it (the gate's reply)
LEASE_RETRY_S = 1.0


@dataclass
class JobRunner:
    """Runs each job a node takes, from its lease to its ack, generating through
    ``generator``; ``busy`` counts the jobs running now (for heartbeats)."""

    nc: Client
    generator: Generator
    key: SigningKey
    ack_wait_s: float
    max_attempts: int
    cancels: KeyValue
    gate: GateClient
    model_root: str | None = None  # the root of the weights it runs, signed into results
    busy: int = 0

    @functools.cached_property
    def node_id(self) -> str:
        return signing.node_id(self.key)

    async def run(self, msg: Msg) -> None:
        try:
            job = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:  # can never run: never redeliver it (the sweep refunds)
            log.error("malformed job at %d dropped: %s", msg.metadata.sequence.stream,
                      exc.errors()[:1])
            await msg.term()
            return
        stop, finishing = asyncio.Event(), asyncio.Event()

        async def on_cancel(_: Msg) -> None:
            stop.set()

        # Listen first, then look: a cancel sent between the two is still heard. The
        # look goes with the lease request, in the same round trip.
        sub = await self.nc.subscribe(subjects.cancel(job.job_id), cb=on_cancel)
        try:
            held, cancelled = await asyncio.gather(
                self.gate.lease("acquire", msg, job.job_id), has_key(self.cancels, job.job_id),
                return_exceptions=True)
            if isinstance(held, BaseException):
                raise held
            if held.action == "discard":
                await msg.ack()  # another copy of this job runs (or ran) on another node
                return
            if held.action != "run":
                await msg.nak(delay=held.delay_s or LEASE_RETRY_S)
                return
            if isinstance(cancelled, BaseException):  # unknown: not run, redelivered
                raise cancelled
            await self._hold(msg, job, held, stop, finishing, cancelled)
        finally:
            await sub.unsubscribe()

    async def _hold(self, msg: Msg, job: JobSubmitted, held: LeaseAnswer, stop: asyncio.Event,
                    finishing: asyncio.Event, cancelled: bool) -> None:
        """Run the job under its lease, then report and ack."""
        keepalive = asyncio.create_task(self._keep_lease(msg, job, stop, finishing))
        self.busy += 1
        try:
            outcome = await self._outcome(job, held, stop, cancelled)
            finishing.set()
            await keepalive  # no renewal may race the report
            answer = await self.gate.report(outcome)
            if not answer.logged:
                # Taken over while this node was away (its result is late and must not
                # count, and its ack would settle the new holder's delivery), or refused.
                log.warning("%s of job %s not logged: %s", outcome.kind, job.job_id,
                            answer.reason)
                return
            await msg.ack()
        finally:
            self.busy -= 1
            finishing.set()

    async def _outcome(self, job: JobSubmitted, held: LeaseAnswer, stop: asyncio.Event,
                       cancelled: bool) -> Outcome:
        attempt = held.attempt
        if held.runs > self.max_attempts:  # a job that keeps killing its nodes
            return Failed(job_id=job.job_id, attempt=attempt, code="job_failed",
                          message=f"gave up after {held.runs - 1} nodes failed to run it")
        if job.deadline <= datetime.now(timezone.utc):
            return Expired(job_id=job.job_id, attempt=attempt)
        if cancelled:
            return Cancelled(job_id=job.job_id, attempt=attempt)
        if job.kind == "embedding":  # one batched forward pass, no text to stream
            return await embedding_outcome(self.generator, self.key, self.model_root, job, attempt)
        try:
            delivered = await self._resume_point(job, held)
            text, last, logprobs = await self._generate(job, attempt, delivered, stop)
        except ContextLengthExceeded as exc:
            return Failed(job_id=job.job_id, attempt=attempt, code="context_length_exceeded",
                          message=str(exc)[:2000])
        except InvalidRequest as exc:  # e.g. a grammar this model cannot follow
            return Failed(job_id=job.job_id, attempt=attempt, code="job_failed",
                          message=str(exc)[:2000])
        except _EngineFault as fault:
            return Failed(job_id=job.job_id, attempt=attempt, code="worker_error",
                          message=str(fault)[:2000])
        if stop.is_set():
            return Cancelled(job_id=job.job_id, attempt=attempt, text=text if last else None)
        finish = (last.finish_reason if last else None) or "stop"
        if logprobs:  # thousands of entries to hash and measure: off the loop, which pings
            return await asyncio.to_thread(self._completed, job, attempt, text, finish,
                                           logprobs)
        return self._completed(job, attempt, text, finish, logprobs)

    def _completed(self, job: JobSubmitted, attempt: int, text: str, finish: str,
                   logprobs) -> Completed | Failed:
        """The signed result, or a failure when it cannot travel as one message."""
        # Logprobs, when asked for, are signed with the text (those of a continuation
        # cover the tokens this attempt made).
        signature = signing.sign_output(self.key, job.job_id, attempt, job.model,
                                        job.input_hash(), output_hash(text, logprobs),
                                        self.model_root)
        done = Completed(job_id=job.job_id, attempt=attempt, text=text, finish_reason=finish,
                         signature=signature, model_root=self.model_root, logprobs=logprobs)
        # One NATS message carries the result (to the gate, and on to the caller): one
        # too big would never arrive, and the job would come back forever.
        size, room = len(done.model_dump_json()), self.nc.max_payload - RESULT_MARGIN
        if size > room:
            return Failed(job_id=job.job_id, attempt=attempt, code="job_failed",
                          message=f"the result is {size} bytes with its logprobs, over the "
                                  f"{room} one message carries: ask for fewer tokens or "
                                  f"top_logprobs")
        return done

    async def _resume_point(self, job: JobSubmitted, held: LeaseAnswer) -> str:
        """The text the caller already has when this node takes a job over mid-stream,
        asked of the API instance that waits for it; "" on a first run or when nobody
        waits (an async job, or the API instance is gone)."""
        if not (held.took_over and job.reply_to):
            return ""
        ask = Resume(job_id=job.job_id, attempt=held.attempt)
        try:
            answer = await self.nc.request(subjects.node_live(self.node_id, job.reply_to),
                                           ask.model_dump_json().encode(),
                                           timeout=RESUME_TIMEOUT_S)
            return Resumed.model_validate_json(answer.data).text
        except (NatsError, asyncio.TimeoutError, ValidationError):
            return ""

    async def _generate(self, job: JobSubmitted, attempt: int, delivered: str,
                        stop: asyncio.Event) -> tuple[str, Step, tuple | None]:
        """Generate, replying each piece of text (and its logprobs) as it comes: the
        text, the last step, the logprobs (None when the job did not ask). The output
        goes on from ``delivered``, the text an earlier attempt streamed."""
        request = GenerationRequest(
            kind=job.kind, prompt=job.prompt, sampling=job.sampling, continuation=delivered,
            messages=tuple(m.model_dump() for m in job.messages) if job.messages else None)
        steps = self.generator.stream_async(request, stop.is_set)
        text, last, logprobs = delivered, None, []
        while True:
            try:
                item = await anext(steps)
            except StopAsyncIteration:
                return text, last, tuple(logprobs) if job.sampling.logprobs is not None else None
            except (ContextLengthExceeded, InvalidRequest):
                raise
            except Exception as exc:  # noqa: BLE001 - any engine fault fails this job only
                log.exception("job %s failed", job.job_id)
                raise _EngineFault(f"{type(exc).__name__}: {exc}") from exc
            if item.text or item.logprobs:
                await self._reply(job, Delta(job_id=job.job_id, offset=len(text), text=item.text,
                                             attempt=attempt, logprobs=item.logprobs or None))
                text += item.text
                logprobs += item.logprobs
            last = item

    async def _reply(self, job: JobSubmitted, reply: Delta) -> None:
        if job.reply_to:
            await self.nc.publish(subjects.node_live(self.node_id, job.reply_to),
                                  reply.model_dump_json().encode())

    async def _keep_lease(self, msg: Msg, job: JobSubmitted, stop: asyncio.Event,
                          finishing: asyncio.Event) -> None:
        """Renew the lease and reset the redelivery timer while the job runs; a
        lease taken over (this node was away too long) stops the job at once."""
        while not finishing.is_set():
            try:
                await asyncio.wait_for(finishing.wait(), self.ack_wait_s / 3)
                return
            except asyncio.TimeoutError:
                pass
            try:
                answer = await self.gate.lease("renew", msg, job.job_id)
                if answer.action == "stop":
                    log.warning("lease on job %s lost (%s); stopping it", job.job_id,
                                answer.reason)
                    stop.set()
                    return
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - NATS away: the lease may yet hold
                log.warning("lease renewal failed: %s", exc)


class _EngineFault(Exception):
    """The engine failed this job (a bus fault is not one: the job is redelivered)."""

