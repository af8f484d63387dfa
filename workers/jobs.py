"""Running one job: claim, generate with live token replies, sign, record, ack.

The order is the contract: the result event is stored on the log before the
job is acked, so a crash at any point leaves the job either redelivered or
recorded, never lost. While generating, in-progress acks keep the claim.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from bus import signing, subjects
from bus.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobExpired,
    JobFailed,
    JobStarted,
    JobSubmitted,
    Usage,
    output_hash,
)
from bus.publish import dead_letter, publish_event
from bus.replies import Delta, Finished, Started
from workers.engine import ContextLengthExceeded, Engine, GenerationRequest, Step

log = logging.getLogger("inferbus.worker")


@dataclass
class JobRunner:
    nc: Client
    js: JetStreamContext
    engine: Engine
    key: SigningKey
    zone: str
    operator: str
    tier: int
    ack_wait_s: float
    max_attempts: int
    cancels: KeyValue
    claims: KeyValue
    busy: int = 0  # jobs running now, reported in heartbeats

    @property
    def node_id(self) -> str:
        return signing.node_id(self.key)

    async def run(self, msg: Msg) -> None:
        try:
            job = JobSubmitted.model_validate_json(msg.data)
        except ValidationError as exc:  # can never run: set it aside, never redeliver it
            log.error("malformed job set aside: %s", exc.errors()[:1])
            await dead_letter(self.js, "worker", msg.subject, msg.metadata.sequence.stream,
                              str(exc), msg.data)
            await msg.term()
            return
        attempt = msg.metadata.num_delivered
        if not await self._claim(job.job_id, attempt):
            await msg.ack()  # another copy of this job runs (or ran) on another node
            return
        keepalive = asyncio.create_task(self._keep_claim(msg))
        self.busy += 1
        try:
            outcome = await self._outcome(job, attempt)
            await publish_event(self.js, outcome, job.zone)
            await self._reply(job, Finished(event=outcome))
            await msg.ack()
        finally:
            self.busy -= 1
            keepalive.cancel()

    async def _outcome(self, job: JobSubmitted, attempt: int) -> Event:
        if attempt > self.max_attempts:
            return self._failed(job, "job_failed", f"gave up after {attempt - 1} attempts")
        if job.deadline <= datetime.now(timezone.utc):
            return JobExpired(job_id=job.job_id, zone=job.zone)
        stop = asyncio.Event()
        # Listen first, then look: a cancel sent between the two is still heard.
        async def on_cancel(_: Msg) -> None:
            stop.set()

        sub = await self.nc.subscribe(subjects.cancel(job.job_id), cb=on_cancel)
        try:
            if await self._cancelled(job.job_id):
                return self._cancelled_event(job, None)
            await publish_event(self.js, JobStarted(job_id=job.job_id, node_id=self.node_id,
                                                    zone=self.zone, attempt=attempt), job.zone)
            await self._reply(job, Started(job_id=job.job_id, zone=self.zone, attempt=attempt))
            try:
                text, last = await self._generate(job, stop)
            except ContextLengthExceeded as exc:
                return self._failed(job, "context_length_exceeded", str(exc))
            except Exception as exc:  # noqa: BLE001 - any engine fault fails this job only
                log.exception("job %s failed", job.job_id)
                return self._failed(job, "worker_error", f"{type(exc).__name__}: {exc}")
        finally:
            await sub.unsubscribe()
        if stop.is_set():
            return self._cancelled_event(job, _usage(last))
        return self._completed(job, attempt, text, last)

    async def _claim(self, job_id: str, attempt: int) -> bool:
        """Whether this node may run the job. The first copy delivered claims it; a
        redelivered copy (its holder stopped acking) takes the claim over."""
        mine = f"{self.node_id}:{attempt}".encode()
        try:
            await self.claims.create(job_id, mine)
            return True
        except KeyWrongLastSequenceError:
            pass
        entry = await self.claims.get(job_id)
        if (entry.value or b"").startswith(self.node_id.encode()):
            return attempt > 1  # our own crashed run: retry; a second copy: already done
        if attempt == 1:
            return False
        try:
            await self.claims.update(job_id, mine, last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def _cancelled(self, job_id: str) -> bool:
        try:
            await self.cancels.get(job_id)
        except KeyNotFoundError:
            return False
        return True

    def _cancelled_event(self, job: JobSubmitted, usage: Usage | None) -> JobCancelled:
        return JobCancelled(job_id=job.job_id, zone=job.zone, reason="cancelled",
                            model=job.model, node_id=self.node_id, usage=usage)

    async def _generate(self, job: JobSubmitted, stop: asyncio.Event) -> tuple[str, Step]:
        """Run the engine in a thread, replying each piece of text as it comes."""
        loop = asyncio.get_running_loop()
        steps: asyncio.Queue[Step | BaseException | None] = asyncio.Queue()
        request = GenerationRequest(
            kind=job.kind, prompt=job.prompt, sampling=job.sampling,
            messages=tuple(m.model_dump() for m in job.messages) if job.messages else None)

        def produce() -> None:
            try:
                for step in self.engine.generate(request, should_stop=stop.is_set):
                    loop.call_soon_threadsafe(steps.put_nowait, step)
            except BaseException as exc:  # noqa: BLE001 - handed to the event loop
                loop.call_soon_threadsafe(steps.put_nowait, exc)
            loop.call_soon_threadsafe(steps.put_nowait, None)

        producer = loop.run_in_executor(None, produce)
        text, last = "", None
        while (item := await steps.get()) is not None:
            if isinstance(item, BaseException):
                await producer
                raise item
            if item.text:
                await self._reply(job, Delta(job_id=job.job_id, offset=len(text), text=item.text))
                text += item.text
            last = item
        await producer
        return text, last

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

    async def _keep_claim(self, msg: Msg) -> None:
        """In-progress acks reset the redelivery timer while the job runs."""
        while True:
            await asyncio.sleep(self.ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as exc:  # noqa: BLE001
                log.warning("in-progress ack failed: %s", exc)


def _usage(last: Step) -> Usage:
    return Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens)
