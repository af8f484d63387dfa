"""Serving logic: turn a validated request into a job and answer it sync,
streaming (an async iterator of SSE chunks) or async (202 + Location).

Routers stay thin; everything that decides lives here.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from api.discovery import Constraints
from api.errors import APIError
from api.escalation import Escalator
from api.keys import Principal
from api.nodes import LiveNodes
from api.protocol import ChatCompletionRequest, CompletionRequest, chunk_body, now, result_body
from api.replies import ReplyRouter
from api.routing import Routing
from bus import subjects
from bus.events import JobCancelled, JobCompleted, JobExpired, JobFailed, JobSubmitted, new_id
from bus.ledger import InsufficientCredits, Ledger
from bus.ledger.group import ReserveGroup
from bus.pricing import Pricing, credits, prompt_tokens_bound
from bus.publish import enqueue_job, publish_event
from bus.replies import Delta, Finished, Started
from bus.streams import patiently

log = logging.getLogger("inferbus.api")
Request = ChatCompletionRequest | CompletionRequest
_FAILURE_STATUS = {"context_length_exceeded": 400}
_IDEMPOTENT = uuid.UUID("6f1c2a52-4c1e-4f0e-9a55-2d9f2a1b7c01")
ENQUEUE_PATIENCE_S = 12.0  # a JetStream leader election takes 4-9 s
ENQUEUE_TRY_S = 2.0  # short tries: one sent while no leader is elected is never answered


class Duplicate(Exception):
    """An ``Idempotency-Key`` seen before with the same body: answer with that job."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


@dataclass
class Submission:
    job: JobSubmitted
    replies: asyncio.Queue | None
    created: int
    include_usage: bool = False

    def headers(self, served_zone: str | None = None) -> dict[str, str]:
        """Where it ran: its zone, and ``zone`` when that is the client's own zone."""
        route = self.job.route if served_zone is None else \
            ("zone" if served_zone == self.job.zone else "global")
        return {"X-Inferbus-Zone": served_zone or self.job.zone,
                "X-Inferbus-Route": route, "X-Inferbus-Job": self.job.job_id}


def failure(event: JobFailed | JobExpired | JobCancelled) -> APIError:
    if isinstance(event, JobExpired):
        return APIError(504, "the job passed its deadline before a node ran it", "deadline")
    if isinstance(event, JobCancelled):  # DELETE /v1/jobs/{id} while a caller waited
        return APIError(409, "the job was cancelled before it finished", "cancelled")
    return APIError(_FAILURE_STATUS.get(event.code, 500), event.message, event.code)


class Serving:
    def __init__(self, nc: Client, js: JetStreamContext, nodes: LiveNodes, router: ReplyRouter,
                 ledger: Ledger, pricing: Pricing, cancels: KeyValue, routing: Routing,
                 escalator: Escalator, job_timeout_s: float) -> None:
        self._nc, self._js, self._nodes, self._router = nc, js, nodes, router
        self._ledger, self._pricing, self._cancels = ledger, pricing, cancels
        # Concurrent requests' holds are written together, one transaction per group.
        self._reserves = ReserveGroup(ledger)
        self._routing, self._escalator = routing, escalator
        self._timeout = job_timeout_s
        self._background: set[asyncio.Task] = set()

    def _check_model(self, req: Request) -> str:
        info = self._nodes.models().get(req.model)
        if info is None:
            if self._nodes.was_seen(req.model):
                raise APIError(503, f"no live node serves {req.model!r} right now", "no_capacity")
            raise APIError(404, f"The model {req.model!r} does not exist", "model_not_found",
                           "model")
        if req.sampling().max_tokens > info.context_length:
            raise APIError(400, f"max_tokens {req.sampling().max_tokens} exceeds the model's "
                           f"context length {info.context_length}", "context_length_exceeded",
                           "max_tokens")
        return info.name

    async def submit(self, who: Principal, req: Request, zone: str, live: bool,
                     idempotency_key: str | None = None, constraints: Constraints | None = None,
                     location: tuple[float, float] | None = None) -> Submission:
        """Validate, route, reserve the worst-case cost, then log and queue the job.

        Raises ``Duplicate`` for a repeated ``Idempotency-Key`` with the same body."""
        model = self._check_model(req)
        is_chat = isinstance(req, ChatCompletionRequest)
        messages = tuple(m.to_contract() for m in req.messages) if is_chat else None
        prompt = None if is_chat else req.prompt
        route = await self._routing.decide(
            who, model, zone, constraints=constraints, location=location,
            prompt_tokens=prompt_tokens_bound(messages, prompt),
            max_tokens=req.sampling().max_tokens)
        request_hash = hashlib.sha256(f"{type(req).__name__}|{req.model_dump_json()}".encode()
                                      ).hexdigest()
        job_id, event_id = new_id(), new_id()
        if idempotency_key:
            # The same key always names the same job, and its events the same ids, so a
            # concurrent repeat is deduplicated by JetStream rather than run twice.
            job_id = uuid.uuid5(_IDEMPOTENT, f"{who.account}|{idempotency_key}").hex
            event_id = uuid.uuid5(_IDEMPOTENT, f"{job_id}|submitted").hex
            await self._check_repeat(job_id, request_hash)
        job = JobSubmitted(
            event_id=event_id, job_id=job_id, account=who.account, key_id=who.key_id,
            model=model, kind="chat" if is_chat else "completion", sampling=req.sampling(),
            messages=messages, prompt=prompt, zone=route.zone, route=route.route,
            queue=route.queue, subcloud=route.subcloud, strict=route.strict,
            deadline=datetime.now(timezone.utc) + timedelta(seconds=self._timeout),
            reply_to=self._router.subject if live else None)
        await self._reserve(job, request_hash, idempotency_key is not None)
        replies = self._router.expect(job.job_id) if live else None
        try:
            await self._publish(job)
        except APIError:
            self._router.forget(job.job_id)
            raise
        self._escalator.watch(job, list(route.chain))
        return Submission(job, replies, now(), req.include_usage)

    async def _check_repeat(self, job_id: str, request_hash: str) -> None:
        held = await asyncio.to_thread(self._ledger.reservation, job_id)
        if held is not None:
            if held.request_hash != request_hash:
                raise APIError(422, "this Idempotency-Key was used with a different request",
                               "idempotency_key_reused", "Idempotency-Key")
            raise Duplicate(job_id)

    async def _reserve(self, job: JobSubmitted, request_hash: str, idempotent: bool) -> None:
        bound = prompt_tokens_bound(job.messages, job.prompt)
        amount = self._pricing.worst_case(job.model, bound, job.sampling.max_tokens)
        try:
            held = await self._reserves.reserve(
                job.account, job.job_id, amount, key_id=job.key_id, zone=job.zone,
                deadline=job.deadline, request_hash=request_hash)
        except InsufficientCredits as exc:
            raise APIError(402, f"This request may cost up to {credits(amount)} credits; the "
                           f"account has {credits(exc.available)} available.",
                           "insufficient_quota") from None
        if idempotent and held.request_hash != request_hash:  # lost a race to another body
            raise APIError(422, "this Idempotency-Key was used with a different request",
                           "idempotency_key_reused", "Idempotency-Key")

    async def _publish(self, job: JobSubmitted) -> None:
        """Log, then queue. A failure refunds or fails the job: no credit stays held."""
        try:
            await publish_event(self._js, job, job.zone)
        except Exception:  # noqa: BLE001 - nothing was logged: give the credits back
            await asyncio.to_thread(self._ledger.refund, job.job_id, "not queued")
            raise APIError(503, "the job log is unavailable; nothing was queued",
                           "bus_unavailable") from None
        try:
            # The same Nats-Msg-Id on every try: an enqueue whose ack was lost in a
            # stream leader's election is deduplicated, not queued twice, and is
            # waited out rather than left unknown.
            await patiently(lambda: enqueue_job(self._js, job, timeout=ENQUEUE_TRY_S), "enqueue",
                            ENQUEUE_PATIENCE_S)
        except Exception as exc:  # noqa: BLE001 - logged but not queued: refund, then fail it
            # Refund first: a copy that landed after all and runs is then settled as a
            # no-op (one resolution per reservation), so a 503 is never charged.
            await asyncio.to_thread(self._ledger.refund, job.job_id, "not queued")
            with contextlib.suppress(Exception):  # the log may be down too (no quorum)
                await publish_event(self._js, JobFailed(job_id=job.job_id, zone=job.zone,
                                                        code="enqueue_failed", message=str(exc)),
                                    job.zone)
            raise APIError(503, "the job queue is unavailable", "bus_unavailable") from None

    async def cancel(self, job_id: str, zone: str, queued: bool) -> None:
        """Ask whichever worker holds the job to stop; a job nobody runs is closed here.

        Mark first, then signal: a worker listens first, then looks (workers.jobs)."""
        await self._cancels.put(job_id, b"1")
        await self._nc.publish(subjects.cancel(job_id), b"")
        if queued:
            await publish_event(self._js, JobCancelled(job_id=job_id, zone=zone,
                                                       reason="cancelled before it started"), zone)

    async def _next(self, sub: Submission) -> Started | Delta | Finished:
        left = (sub.job.deadline - datetime.now(timezone.utc)).total_seconds()
        try:
            return await asyncio.wait_for(sub.replies.get(), timeout=max(left, 0.0) + 1.0)
        except asyncio.TimeoutError:
            raise APIError(504, "no result before the job's deadline", "deadline") from None

    async def complete(self, sub: Submission) -> tuple[dict, dict[str, str]]:
        """Wait for the job's outcome and return the sync body and headers."""
        try:
            while not isinstance(reply := await self._next(sub), Finished):
                pass
        except APIError as exc:
            exc.headers.update(sub.headers())  # a failed job is still named
            raise
        finally:
            self._router.forget(sub.job.job_id)
        event = reply.event
        if not isinstance(event, JobCompleted):
            exc = failure(event)
            exc.headers.update(sub.headers())
            raise exc
        body = result_body(sub.job.kind, sub.job.job_id, sub.job.model, sub.created, event.text,
                           event.finish_reason, event.usage)
        return body, sub.headers(event.zone)

    async def start_stream(self, sub: Submission) -> tuple[dict[str, str], AsyncIterator[bytes]]:
        """Wait until a node starts the job (so headers tell where), then stream."""
        try:
            first = await self._next(sub)
            while isinstance(first, Delta):
                first = await self._next(sub)
            if isinstance(first, Finished) and not isinstance(first.event, JobCompleted):
                raise failure(first.event)
        except APIError as exc:
            self._router.forget(sub.job.job_id)
            exc.headers.update(sub.headers())
            raise
        except BaseException:
            self._router.forget(sub.job.job_id)
            raise
        zone = first.zone if isinstance(first, Started) else first.event.zone
        return sub.headers(zone), self._sse(sub, first)

    async def _text_so_far(self, sub: Submission, sent: int
                           ) -> tuple[Started | Delta | Finished, str]:
        """The next reply, with every reply already waiting after it: the text new
        beyond ``sent`` they carry, and the last of them. A stream that outruns its
        client (deltas pile up while a chunk is being sent) goes out in fewer,
        larger chunks instead of falling further behind."""
        reply, pieces = await self._next(sub), []
        while True:
            if isinstance(reply, Delta) and reply.offset + len(reply.text) > sent:
                pieces.append(reply.text[max(sent - reply.offset, 0):])
                sent += len(pieces[-1])
            if isinstance(reply, Finished) or sub.replies.empty():
                return reply, "".join(pieces)
            reply = sub.replies.get_nowait()

    async def _sse(self, sub: Submission, first: Started | Finished) -> AsyncIterator[bytes]:
        job = sub.job

        def chunk(**kw) -> bytes:
            body = chunk_body(job.kind, job.job_id, job.model, sub.created, **kw)
            return b"data: " + json.dumps(body).encode() + b"\n\n"

        sent, finished = 0, False
        try:
            if job.kind == "chat":
                yield chunk(first=True)
            reply = first
            while not isinstance(reply, Finished):
                reply, text = await self._text_so_far(sub, sent)
                if text:
                    sent += len(text)
                    yield chunk(text=text)
            event = reply.event
            if not isinstance(event, JobCompleted):
                yield b"data: " + json.dumps(failure(event).body()).encode() + b"\n\n"
            else:
                if len(event.text) > sent:  # a lost live delta: the log has the whole text
                    yield chunk(text=event.text[sent:])
                yield chunk(finish_reason=event.finish_reason)
                if sub.include_usage:
                    yield chunk(usage=event.usage)
            yield b"data: [DONE]\n\n"
            finished = True
        except APIError as exc:
            yield b"data: " + json.dumps(exc.body()).encode() + b"\n\ndata: [DONE]\n\n"
        finally:
            self._router.forget(job.job_id)
            if not finished:  # the client went away mid-stream: stop the job, charge what ran
                task = asyncio.get_running_loop().create_task(
                    self.cancel(job.job_id, job.zone, False))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
