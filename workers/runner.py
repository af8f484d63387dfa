"""Running one job: lease, generate with live token replies, sign, seal, record, ack.

The order is the contract: the result event is stored on the log before the
job is acked, so a crash at any point leaves the job either redelivered or
recorded, never lost. While generating, the lease is renewed with the
in-progress acks; a node that lost its lease publishes and acks nothing
(``bus.leases``). A node that takes a job over mid-stream continues from the
text the caller already has.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from bus import signing, subjects
from bus.auth import WORKER_DEAD_LETTERS
from bus.events import (Event, JobCancelled, JobCompleted, JobExpired, JobFailed, JobStarted,
                        JobSubmitted, Usage, output_hash)
from bus.leases import HeldLease, Leases, Skip
from bus.publish import dead_letter, publish_event
from bus.replies import Delta, Finished, Resume, Resumed, Started
from workers.generation import ContextLengthExceeded, GenerationRequest, Generator, Step

log = logging.getLogger("inferbus.worker")
RESUME_TIMEOUT_S = 1.0
LEASE_RETRY_S = 1.0


@dataclass
class JobRunner:
    """Runs each job a node takes, from its lease to its ack, generating through
    ``generator``; ``busy`` counts the jobs running now (for heartbeats)."""

    nc: Client
    js: JetStreamContext
    generator: Generator
    key: SigningKey
    zone: str
    operator: str
    tier: int
    ack_wait_s: float
    max_attempts: int
    cancels: KeyValue
    leases: Leases
    busy: int = 0

    @property
    def node_id(self) -> str:
        return signing.node_id(self.key)

    async def run(self, msg: Msg) -> None:
        try:
            job = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:  # can never run: set it aside, never redeliver it
            log.error("malformed job set aside: %s", exc.errors()[:1])
            await dead_letter(self.js, WORKER_DEAD_LETTERS, msg.subject,
                              msg.metadata.sequence.stream, str(exc), msg.data)
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
                self._lease(msg, job), self._cancelled(job.job_id), return_exceptions=True)
            if isinstance(held, BaseException):
                raise held
            if isinstance(held, Skip):
                if held.action == "discard":
                    await msg.ack()  # another copy of this job runs (or ran) on another node
                else:
                    await msg.nak(delay=held.delay_s)
                return
            if isinstance(cancelled, BaseException):  # unknown: not run, redelivered
                raise cancelled
            await self._hold(msg, job, held, stop, finishing, cancelled)
        finally:
            await sub.unsubscribe()

    async def _lease(self, msg: Msg, job: JobSubmitted) -> HeldLease | Skip:
        try:
            return await self.leases.acquire(job.job_id, self.node_id,
                                             msg.metadata.num_delivered,
                                             msg.metadata.sequence.stream)
        except (NatsError, asyncio.TimeoutError) as exc:  # the claims bucket is away
            log.warning("lease on job %s not reachable (%s); passing it on", job.job_id,
                        type(exc).__name__)
            return Skip("wait", LEASE_RETRY_S)

    async def _hold(self, msg: Msg, job: JobSubmitted, held: HeldLease, stop: asyncio.Event,
                    finishing: asyncio.Event, cancelled: bool) -> None:
        """Run the job under its lease, then seal, record, reply and ack."""
        keepalive = asyncio.create_task(self._keep_lease(msg, held, stop, finishing))
        self.busy += 1
        try:
            outcome = await self._outcome(job, held, stop, cancelled)
            finishing.set()
            await keepalive  # no renewal may race the seal
            if not await self.leases.seal(held):
                # Taken over while this node was away: its result is late and must not
                # count, and its ack would settle the new holder's delivery.
                log.warning("lease on job %s lost; late %s dropped", job.job_id,
                            type(outcome).__name__)
                return
            await self._record(outcome, job)
            await self._reply(job, Finished(event=outcome))
            await msg.ack()
        finally:
            self.busy -= 1
            finishing.set()

    async def _record(self, outcome: Event, job: JobSubmitted) -> None:
        """Log the outcome, trying again while the bus is away (e.g. a stream leader
        election): the lease is sealed, so no other node will run the job, and the
        same event id lets JetStream drop a repeat of a publish that did land."""
        delay = 0.2
        while True:
            try:
                await publish_event(self.js, outcome, job.zone)
                return
            except Exception as exc:  # noqa: BLE001 - only a dead process gives up
                log.warning("logging %s of job %s failed (%s); trying again",
                            type(outcome).__name__, job.job_id, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _outcome(self, job: JobSubmitted, held: HeldLease, stop: asyncio.Event,
                       cancelled: bool) -> Event:
        attempt = held.lease.attempt
        if held.lease.runs > self.max_attempts:  # a job that keeps killing its nodes
            return self._failed(job, "job_failed",
                                f"gave up after {held.lease.runs - 1} nodes failed to run it")
        if job.deadline <= datetime.now(timezone.utc):
            return JobExpired(job_id=job.job_id, zone=job.zone)
        if cancelled:
            return self._cancelled_event(job, None)
        # Logged while the job runs, not before: its ack is awaited before the
        # outcome is, so the log still holds the start first.
        started = asyncio.ensure_future(publish_event(self.js, JobStarted(
            job_id=job.job_id, node_id=self.node_id, zone=self.zone, attempt=attempt),
            job.zone))
        try:
            delivered = await self._resume_point(job, held)
            await self._reply(job, Started(job_id=job.job_id, zone=self.zone, attempt=attempt))
            text, last = await self._generate(job, attempt, delivered, stop)
        except ContextLengthExceeded as exc:
            return self._failed(job, "context_length_exceeded", str(exc))
        except _EngineFault as fault:
            return self._failed(job, "worker_error", str(fault))
        finally:
            await started
        if stop.is_set():
            return self._cancelled_event(job, _usage(last))
        return self._completed(job, attempt, text, last)

    async def _resume_point(self, job: JobSubmitted, held: HeldLease) -> str:
        """The text the caller already has when this node takes a job over mid-stream,
        asked of the API instance that waits for it; "" on a first run or when nobody
        waits (an async job, or the API instance is gone)."""
        if not (held.took_over and job.reply_to):
            return ""
        ask = Resume(job_id=job.job_id, attempt=held.lease.attempt)
        try:
            answer = await self.nc.request(job.reply_to, ask.model_dump_json().encode(),
                                           timeout=RESUME_TIMEOUT_S)
            return Resumed.model_validate_json(answer.data).text
        except (NatsError, asyncio.TimeoutError, ValidationError):
            return ""

    async def _cancelled(self, job_id: str) -> bool:
        try:
            await self.cancels.get(job_id)
        except KeyNotFoundError:
            return False
        return True

    def _cancelled_event(self, job: JobSubmitted, usage: Usage | None) -> JobCancelled:
        return JobCancelled(job_id=job.job_id, zone=job.zone, reason="cancelled",
                            model=job.model, node_id=self.node_id, usage=usage)

    async def _generate(self, job: JobSubmitted, attempt: int, delivered: str,
                        stop: asyncio.Event) -> tuple[str, Step]:
        """Generate, replying each piece of text as it comes. The output goes on from
        ``delivered``, the text an earlier attempt streamed."""
        request = GenerationRequest(
            kind=job.kind, prompt=job.prompt, sampling=job.sampling, continuation=delivered,
            messages=tuple(m.model_dump() for m in job.messages) if job.messages else None)
        steps = self.generator.stream_async(request, stop.is_set)
        text, last = delivered, None
        while True:
            try:
                item = await anext(steps)
            except StopAsyncIteration:
                return text, last
            except ContextLengthExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - any engine fault fails this job only
                log.exception("job %s failed", job.job_id)
                raise _EngineFault(f"{type(exc).__name__}: {exc}") from exc
            if item.text:
                await self._reply(job, Delta(job_id=job.job_id, offset=len(text), text=item.text,
                                             attempt=attempt))
                text += item.text
            last = item

    def _completed(self, job: JobSubmitted, attempt: int, text: str, last: Step) -> JobCompleted:
        usage = _usage(last)
        in_hash, out_hash = job.input_hash(), output_hash(text)
        signature = signing.sign_result(self.key, job.job_id, self.operator, self.tier, attempt,
                                        in_hash, out_hash, usage)
        return JobCompleted(
            job_id=job.job_id, model=job.model, node_id=self.node_id, operator=self.operator,
            tier=self.tier,
            zone=self.zone, attempt=attempt, text=text, finish_reason=last.finish_reason or "stop",
            usage=usage, input_hash=in_hash, output_hash=out_hash, signature=signature)

    def _failed(self, job: JobSubmitted, code: str, message: str) -> JobFailed:
        return JobFailed(job_id=job.job_id, node_id=self.node_id, zone=job.zone, code=code,
                         message=message)

    async def _reply(self, job: JobSubmitted, reply: Started | Delta | Finished) -> None:
        if job.reply_to:
            await self.nc.publish(job.reply_to, reply.model_dump_json().encode())

    async def _keep_lease(self, msg: Msg, held: HeldLease, stop: asyncio.Event,
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
                if not await self.leases.renew(held):
                    log.warning("lease on job %s taken over; stopping it", held.job_id)
                    stop.set()
                    return
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001 - NATS away: the lease may yet hold
                log.warning("lease renewal failed: %s", exc)


class _EngineFault(Exception):
    """The engine failed this job (a bus fault is not one: the job is redelivered)."""


def _usage(last: Step) -> Usage:
    return Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens)
