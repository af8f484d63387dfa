"""Admitting a job: the model check, where it goes, its worst case held, then
logged and queued.

:meth:`Admission.prepare` decides without side effects: the model must be
served (404 unknown, 503 no live node, 400 over its context), routing picks
the first queue and the escalation chain, and an ``Idempotency-Key`` names
the job (a key seen before answers :class:`Repeat`, or 422 with another
body). :meth:`Admission.place` then holds the job's worst-case cost (402 when
short; nothing is published), logs ``JobSubmitted``, queues it, and starts
its escalation. A log or queue that cannot be reached refunds the hold and
answers 503: no credit stays held for a job that will not run.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import NoReturn

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from api.discovery import Constraints
from api.embedding_protocol import EmbeddingRequest, check_model
from api.errors import APIError
from api.escalation import Escalator
from api.keys import Principal
from api.limits import SpendGuard
from api.live_nodes import LiveNodes
from api.protocol import ChatCompletionRequest, CompletionRequest
from api.routing import Route, Routing
from api.webhook_targets import WebhookTargets
from bus.content import put_input
from bus.credits import credits
from bus.events import JobFailed, JobSubmitted, new_id
from bus.partitions import stamp
from bus.pricing import Pricing, prompt_tokens_bound
from bus.publish import enqueue_job, publish_event
from bus.streams import patiently
from bus.subjects import GLOBAL
from ledger import Books, InsufficientCredits, ReserveGroup

GenerationBody = ChatCompletionRequest | CompletionRequest
_IDEMPOTENT = uuid.UUID("6f1c2a52-4c1e-4f0e-9a55-2d9f2a1b7c01")


ENQUEUE_PATIENCE_S = 12.0  # a JetStream leader election takes 4-9 s
ENQUEUE_TRY_S = 2.0  # short tries: one sent while no leader is elected is never answered


def idempotent_job_id(account: str, idempotency_key: str) -> str:
    """The job an ``Idempotency-Key`` of ``account`` names: the same on every repeat,
    and stamped with the account's slot as every job id is (bus.partitions)."""
    return stamp(uuid.uuid5(_IDEMPOTENT, f"{account}|{idempotency_key}").hex, account)


@dataclass(frozen=True)
class Prepared:
    """A job ready to place: its event, its request's hash, its escalation chain."""

    job: JobSubmitted
    request_hash: str
    chain: tuple[str, ...]
    idempotent: bool
    webhook: str | None = None  # an async job's checked X-Inferbus-Webhook


@dataclass(frozen=True)
class Repeat:
    """An ``Idempotency-Key`` seen before with the same body: the job it named."""

    job_id: str


class Admission:
    def __init__(self, js: JetStreamContext, nodes: LiveNodes, routing: Routing, ledger: Books,
                 pricing: Pricing, escalator: Escalator, job_timeout_s: float,
                 webhooks: WebhookTargets | None = None, spend: SpendGuard | None = None) -> None:
        self._js, self._nodes, self._routing = js, nodes, routing
        self._webhooks = webhooks
        self._spend = spend  # keys' spend limits, checked before each hold
        self._ledger, self._pricing, self._escalator = ledger, pricing, escalator
        # Concurrent requests' holds are written together, one transaction per group.
        self._reserves = ReserveGroup(ledger)
        self._timeout_s = job_timeout_s

    async def prepare(self, who: Principal, req: GenerationBody, zone: str,
                      constraints: Constraints | None, location: tuple[float, float] | None,
                      idempotency_key: str | None, reply_to: str | None,
                      webhook: str | None = None) -> Prepared | Repeat:
        """The job ``req`` asks for, from ``zone``, or the job an earlier call with the
        same ``idempotency_key`` made. ``reply_to``: where live replies go (None: no
        one waits live); ``webhook``: the ``X-Inferbus-Webhook`` header, if sent."""
        model = self._check_model(req)
        if self._webhooks is not None:
            webhook = await self._webhooks.requested_for(webhook, respond_async=reply_to is None)
            if webhook is None and reply_to is None:
                # An async call naming none: its key's default, checked when the key was
                # made (the dispatcher resolves the host again before every attempt).
                webhook = who.webhook_url
        is_chat = isinstance(req, ChatCompletionRequest)
        inputs = req.texts() if isinstance(req, EmbeddingRequest) else None
        messages = req.contract_messages() if is_chat else None
        prompt = None if is_chat or inputs is not None else req.prompt
        route: Route = await self._routing.decide(
            who, model, zone, constraints=constraints, location=location,
            prompt_tokens=prompt_tokens_bound(messages, prompt, inputs),
            max_tokens=req.sampling().max_tokens)
        request_hash = hashlib.sha256(f"{type(req).__name__}|{req.model_dump_json()}".encode()
                                      ).hexdigest()
        # A job id carries its account's slot, so its outcome reaches the ledger shard
        # holding the account's money from the id alone (bus.partitions).
        job_id, event_id = stamp(new_id(), who.account), new_id()
        if idempotency_key:
            # The same key always names the same job, and its events the same ids, so a
            # concurrent repeat is deduplicated by JetStream rather than run twice.
            job_id = idempotent_job_id(who.account, idempotency_key)
            event_id = uuid.uuid5(_IDEMPOTENT, f"{job_id}|submitted").hex
            held = await asyncio.to_thread(self._ledger.reservation, job_id)
            if held is not None:
                _same_request(held.request_hash, request_hash)
                return Repeat(job_id)
        job = JobSubmitted(
            event_id=event_id, job_id=job_id, account=who.account, key_id=who.key_id,
            model=model, sampling=req.sampling(), inputs=inputs,
            kind="embedding" if inputs is not None else "chat" if is_chat else "completion",
            messages=messages, prompt=prompt, zone=route.zone, route=route.route,
            queue=route.queue, then=route.chain, subcloud=route.subcloud, strict=route.strict,
            deadline=datetime.now(timezone.utc) + timedelta(seconds=self._timeout_s),
            reply_to=reply_to)
        return Prepared(job, request_hash, route.chain, idempotency_key is not None, webhook)

    async def place(self, prepared: Prepared,
                    on_held: Callable[[], None] | None = None) -> Prepared | Repeat:
        """Hold the job's worst case, log it, queue it, watch it for escalation;
        returns the job as placed (a job whose region is down, re-homed), or
        :class:`Repeat` when a concurrent call with the same ``Idempotency-Key``
        made the job first (its caller waits for it; this one polls it). ``on_held``
        runs once the hold is this call's, before the job is logged or queued."""
        if not self._js._nc.is_connected:  # this API lost its region's servers: fail at once
            raise APIError(503, "this API cannot reach its region's servers; nothing was "
                           "held or queued", "bus_unavailable")
        if prepared.webhook is not None and self._webhooks is not None:
            # Kept before the job is logged, so however fast it ends, its outcome
            # finds its target; a failure here holds and queues nothing.
            try:
                await self._webhooks.record(prepared.job.job_id, prepared.job.account,
                                            prepared.webhook)
            except Exception:  # noqa: BLE001
                raise APIError(503, "the webhook could not be recorded; nothing was held or "
                               "queued", "bus_unavailable") from None
        if not await self._reserve(prepared):
            return Repeat(prepared.job.job_id)
        if on_held is not None:
            on_held()
        try:
            await self._log(prepared.job)
        except (NoRespondersError, NoStreamResponseError, NatsTimeout) as exc:
            job = prepared.job
            # A timeout from a region that answers may have stored the job: refunded,
            # and failed on the log too, or it would stay there with no outcome.
            if isinstance(exc, NatsTimeout) and not await self._routing.region_down(job.zone):
                await self._failed(job, "log_timeout", exc)
            if job.strict or job.zone == GLOBAL or not self._routing.regions:
                await self._unlogged(job)
            # The job's zone's region is down: a job free to leave it is kept and
            # queued in the global pool's region instead.
            prepared = replace(prepared, chain=(), job=prepared.job.model_copy(update={
                "zone": GLOBAL, "route": "global", "queue": None, "then": ()}))
            try:
                await self._log(prepared.job)
            except Exception:  # noqa: BLE001
                await self._unlogged(prepared.job)
        except Exception:  # noqa: BLE001 - nothing was logged: give the credits back
            await self._unlogged(prepared.job)
        await self._enqueue(prepared.job)
        self._escalator.watch(prepared.job, list(prepared.chain))
        return prepared

    def _check_model(self, req: GenerationBody) -> str:
        info = self._nodes.models().get(req.model)
        if info is None:
            if self._nodes.was_seen(req.model):
                raise APIError(503, f"no live node serves {req.model!r} right now", "no_capacity")
            raise APIError(404, f"The model {req.model!r} does not exist", "model_not_found",
                           "model")
        embeds = isinstance(req, EmbeddingRequest)
        if embeds != (info.kind == "embedding"):  # each endpoint serves its own kind of model
            raise APIError(400, f"{info.name} is " + ("not an embeddings model" if embeds else
                           "an embeddings model: use POST /v1/embeddings"),
                           "model_not_supported", "model")
        if embeds:
            check_model(req, info)
        if req.sampling().max_tokens > info.context_length:
            raise APIError(400, f"max_tokens {req.sampling().max_tokens} exceeds the model's "
                           f"context length {info.context_length}", "context_length_exceeded",
                           "max_tokens")
        return info.name

    async def _reserve(self, prepared: Prepared) -> bool:
        """Hold the job's worst case; False when the hold was already there, made
        by a concurrent call with the same ``Idempotency-Key`` (then nothing is held
        twice, and that call's job is this one's answer)."""
        job = prepared.job
        bound = prompt_tokens_bound(job.messages, job.prompt, job.inputs)
        amount = self._pricing.worst_case(job.model, bound, job.sampling.max_tokens)
        if self._spend is not None:
            await self._spend.check(job.key_id, job.job_id, amount)
        try:
            held = await self._reserves.reserve(
                job.account, job.job_id, amount, key_id=job.key_id, zone=job.zone,
                deadline=job.deadline, request_hash=prepared.request_hash)
        except InsufficientCredits as exc:
            raise APIError(402, f"This request may cost up to {float(credits(amount))} credits; "
                           f"the account has {float(credits(exc.available))} available.",
                           "insufficient_quota") from None
        if prepared.idempotent:  # lost a race to another body with the same key
            _same_request(held.request_hash, prepared.request_hash)
            # Each call stamps its own deadline: another deadline is another call's hold.
            return held.deadline == job.deadline
        return True

    async def _log(self, job: JobSubmitted) -> None:
        """Log the job: hashes on the log, the prompt in its region's content store.
        Raises what the log publish raised when nothing was logged; a job logged
        whose prompt was not kept is failed (:meth:`_failed`)."""
        logged, kept = await asyncio.gather(
            publish_event(self._js, job.without_content(), job.zone), put_input(self._js, job),
            return_exceptions=True)
        if isinstance(logged, BaseException):
            raise logged
        if isinstance(kept, BaseException):
            await self._failed(job, "content_unavailable", kept)

    async def _unlogged(self, job: JobSubmitted) -> NoReturn:
        """Nothing was logged: give the credits back and say so."""
        await asyncio.to_thread(self._ledger.refund, job.job_id, "not queued")
        raise APIError(503, "the job log is unavailable; nothing was queued",
                       "bus_unavailable") from None

    async def _enqueue(self, job: JobSubmitted) -> None:
        """Queue the logged job. A failure refunds and fails it: no credit stays held."""
        try:
            # The same Nats-Msg-Id on every try: an enqueue whose ack was lost in a
            # stream leader's election is deduplicated, not queued twice, and is
            # waited out rather than left unknown.
            await patiently(lambda: enqueue_job(self._js, job, timeout=ENQUEUE_TRY_S), "enqueue",
                            ENQUEUE_PATIENCE_S)
        except Exception as exc:  # noqa: BLE001 - logged but not queued: refund, then fail it
            await self._failed(job, "enqueue_failed", exc)

    async def _failed(self, job: JobSubmitted, code: str, exc: BaseException) -> NoReturn:
        """A logged job that cannot run: refund, log its failure, answer 503."""
        # Refund first: a copy that landed after all and runs is then settled as a
        # no-op (one resolution per reservation), so a 503 is never charged.
        await asyncio.to_thread(self._ledger.refund, job.job_id, "not queued")
        failed = JobFailed(job_id=job.job_id, zone=job.zone, code=code,
                           message=str(exc) or type(exc).__name__)
        with contextlib.suppress(Exception):  # the log may be down too (no quorum)
            # Patient (one event id, deduplicated): the election that lost the job's
            # ack is over in a few seconds, and a logged job must not stay open.
            await patiently(lambda: publish_event(self._js, failed, job.zone,
                                                  timeout=ENQUEUE_TRY_S),
                            "log the failure", ENQUEUE_PATIENCE_S)
        raise APIError(503, "the job queue is unavailable", "bus_unavailable") from None


def _same_request(held_hash: str, request_hash: str) -> None:
    """A repeated ``Idempotency-Key`` must come with the same request."""
    if held_hash != request_hash:
        raise APIError(422, "this Idempotency-Key was used with a different request",
                       "idempotency_key_reused", "Idempotency-Key")
