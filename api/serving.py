"""Serving a completion call: everything that decides between the router and
the network.

:meth:`Serving.generate` takes an authenticated call and returns what to
answer: a finished body (:class:`Body`), an accepted async job
(:class:`Accepted`) or a stream of SSE chunks (:class:`Stream`); errors are
raised as :class:`~api.errors.APIError`. In order: the ``max_tokens`` limit
(400), the key's rate and in-flight limits (429), admission
(:mod:`api.admission`: model, route, a repeated ``Idempotency-Key``, the
credit hold, log and queue), then the wait for the outcome. A repeated key
answers the first call's job: accepted again, or its result once it ends.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from api import sse
from api.admission import Admission, GenerationBody, Prepared, Repeat
from api.cancellation import Cancellation
from api.discovery import Constraints
from api.errors import APIError, outcome_error
from api.job_serving import JobServing
from api.keys import Principal
from api.limits import KeyLimiter
from api.protocol import accepted_body, now, result_body
from api.reply_router import JobReplies, ReplyRouter
from bus.config import Settings
from bus.events import JobCompleted, JobSubmitted
from bus.replies import Delta, Finished, Started


@dataclass(frozen=True)
class Call:
    """A completion call as the router hands it over: its body and where it comes from."""

    body: GenerationBody
    zone: str  # the declared zone, else the client address's, else global
    location: tuple[float, float] | None  # the client's coordinates, when GeoIP has them
    constraints: Constraints | None  # X-Inferbus-Near / -Within-Km / -Tier
    respond_async: bool  # Prefer: respond-async
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Body:
    body: dict
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    body: dict
    headers: dict[str, str]


@dataclass(frozen=True)
class Stream:
    chunks: AsyncIterator[bytes]
    headers: dict[str, str]


Answer = Body | Accepted | Stream


@dataclass(frozen=True)
class ServingConfig:
    max_tokens_limit: int
    job_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> ServingConfig:
        return cls(settings.max_tokens_limit, settings.job_timeout_s)


def where(job: JobSubmitted, served_zone: str | None = None) -> dict[str, str]:
    """Where the job ran: its zone, and route ``zone`` when that is the client's own."""
    route = job.route if served_zone is None else \
        ("zone" if served_zone == job.zone else "global")
    return {"X-Inferbus-Zone": served_zone or job.zone, "X-Inferbus-Route": route,
            "X-Inferbus-Job": job.job_id}


def accepted(job_id: str, headers: dict[str, str]) -> Accepted:
    return Accepted(accepted_body(job_id), {**headers, "Location": f"/v1/jobs/{job_id}",
                                            "Preference-Applied": "respond-async"})


class Serving:
    def __init__(self, config: ServingConfig, *, admission: Admission, replies: ReplyRouter,
                 jobs: JobServing, limits: KeyLimiter, cancellation: Cancellation) -> None:
        self._config, self._admission, self._replies = config, admission, replies
        self._jobs, self._limits, self._cancellation = jobs, limits, cancellation

    async def generate(self, who: Principal, call: Call) -> Answer:
        """Run ``call`` for ``who`` and say how to answer it (module docstring)."""
        req = call.body
        if req.sampling().max_tokens > self._config.max_tokens_limit:
            raise APIError(400, f"max_tokens is at most {self._config.max_tokens_limit} here",
                           "max_tokens_too_large", "max_tokens")
        await self._limits.admit(who)  # before anything is reserved
        live = not call.respond_async
        prepared = await self._admission.prepare(
            who, req, call.zone, call.constraints, call.location, call.idempotency_key,
            self._replies.subject if live else None)
        if isinstance(prepared, Repeat):
            return await self._repeat(who, prepared.job_id, call.respond_async)
        if not live:
            prepared = await self._admission.place(prepared)
            return accepted(prepared.job.job_id, where(prepared.job))
        # Watched before it is queued, so no reply arrives unrouted.
        replies = self._replies.watch(prepared.job.job_id, prepared.job.deadline)
        handed_over = False
        try:
            prepared = await self._admission.place(prepared)
            if req.stream:
                answer = await self._stream(prepared, replies, req.include_usage)
                handed_over = True  # the stream closes them
                return answer
            return await self._complete(prepared, replies)
        finally:
            if not handed_over:
                replies.close()

    async def _complete(self, prepared: Prepared, replies: JobReplies) -> Body:
        """Wait for the job's outcome: the sync body, or its error."""
        job, created = prepared.job, now()
        try:
            while not isinstance(reply := await replies.next(), Finished):
                pass
        except APIError as exc:
            exc.headers.update(where(job))  # a failed job is still named
            raise
        outcome = reply.event
        if not isinstance(outcome, JobCompleted):
            exc = outcome_error(outcome)
            exc.headers.update(where(job))
            raise exc
        body = result_body(job.kind, job.job_id, job.model, created, outcome.text,
                           outcome.finish_reason, outcome.usage)
        return Body(body, where(job, outcome.zone))

    async def _stream(self, prepared: Prepared, replies: JobReplies,
                      include_usage: bool) -> Stream:
        """Wait until a node starts the job (so headers tell where), then stream."""
        job, created = prepared.job, now()
        try:
            first = await replies.next()
            while isinstance(first, Delta):
                first = await replies.next()
            if isinstance(first, Finished) and not isinstance(first.event, JobCompleted):
                raise outcome_error(first.event)
        except APIError as exc:
            exc.headers.update(where(job))
            raise
        zone = first.zone if isinstance(first, Started) else first.event.zone
        chunks = sse.chunks(job, created, include_usage, replies, first, self._abandoned)
        return Stream(chunks, where(job, zone))

    def _abandoned(self, job: JobSubmitted) -> None:
        """A streaming client went away: stop the job, charge what ran."""
        self._cancellation.in_background(job.job_id)

    async def _repeat(self, who: Principal, job_id: str, respond_async: bool) -> Answer:
        """A repeated Idempotency-Key: the first call's job, never a second one."""
        if respond_async:
            return accepted(job_id, {"X-Inferbus-Job": job_id})
        view = await self._jobs.find_own(job_id, who.account)
        view = await self._jobs.until_terminal(view, self._config.job_timeout_s)
        if (body := (await self._jobs.body(view))["result"]) is None:
            raise APIError(409 if not view.terminal else 500,
                           f"the job for this Idempotency-Key is {view.status}", view.status)
        return Body(body, {"X-Inferbus-Job": job_id,
                           "X-Inferbus-Zone": view.served_zone or view.zone,
                           "X-Inferbus-Route": view.route or "zone"})
