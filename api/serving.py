"""Serving a completion call: everything that decides between the router and
the network.

:meth:`Serving.generate` takes an authenticated call and returns what to
answer: a finished body (:class:`Body`), an accepted async job
(:class:`Accepted`) or a stream of SSE chunks (:class:`Stream`); errors are
raised as :class:`~api.errors.APIError`. In order: the ``max_tokens`` limit
(400), the key's rate and in-flight limits (429), admission
(:mod:`api.admission`: model, route, a repeated ``Idempotency-Key``, the
credit hold, log and queue), then the wait for the outcome. A repeated key
answers the first call's job: accepted again, or its result once it ends; so
does a call that lost the race to create it to a concurrent one with the same
key. ``n`` > 1 runs one job per choice (:mod:`api.choices`), each held and
billed. A stream starts with the job's first text, so anything known before
it (a context overflow) is an HTTP error; a caller that hangs up before the
end stops its job, and pays only for what was produced.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from api import choices, sse
from api.answers import Accepted, Answer, Body, Stream
from api.admission import Admission, GenerationBody, Prepared, Repeat
from api.cancellation import Cancellation
from api.discovery import Constraints
from api.errors import APIError, outcome_error
from api.job_serving import JobServing
from api.keys import Principal
from api.limits import KeyLimiter
from api.protocol import accepted_body, completed_body, now
from api.reply_router import JobReplies, ReplyRouter
from bus.config import Settings
from bus.events import JobCompleted, JobSubmitted
from bus.replies import Delta, Finished, Started
from bus.sampling import MAX_LOGPROB_ENTRIES


@dataclass(frozen=True)
class Call:
    """A completion call as the router hands it over: its body and where it comes from."""

    body: GenerationBody
    zone: str  # the declared zone, else the client address's, else global
    location: tuple[float, float] | None  # the client's coordinates, when GeoIP has them
    constraints: Constraints | None  # X-Inferbus-Near / -Within-Km / -Tier
    respond_async: bool  # Prefer: respond-async
    idempotency_key: str | None = None
    base_url: str = ""  # where this API was reached, for absolute links (``Location``)
    # Returns once the client has hung up (never, when None): a job it waits for stops.
    gone: Callable[[], Awaitable[object]] | None = None
    webhook: str | None = None  # X-Inferbus-Webhook: where an async job's outcome goes




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


def accepted(job_id: str, headers: dict[str, str], base_url: str) -> Accepted:
    """An async job's answer: where to poll, as an absolute URL (a relative one
    would be joined to a client's ``.../v1`` base URL twice)."""
    url = f"{base_url.rstrip('/')}/v1/jobs/{job_id}"
    return Accepted(accepted_body(job_id, url), {**headers, "Location": url,
                                                 "Preference-Applied": "respond-async"})


class ClientGone(APIError):
    """The caller hung up while it waited (nobody reads the answer; nginx's 499)."""

    def __init__(self) -> None:
        super().__init__(499, "the client closed the request", "client_closed_request")


class Serving:
    def __init__(self, config: ServingConfig, *, admission: Admission, replies: ReplyRouter,
                 jobs: JobServing, limits: KeyLimiter, cancellation: Cancellation) -> None:
        self._config, self._admission, self._replies = config, admission, replies
        self._jobs, self._limits, self._cancellation = jobs, limits, cancellation

    async def generate(self, who: Principal, call: Call) -> Answer:
        """Run ``call`` for ``who`` and say how to answer it (module docstring)."""
        req = call.body
        sampling = req.sampling()
        if sampling.max_tokens > self._config.max_tokens_limit:
            raise APIError(400, f"max_tokens is at most {self._config.max_tokens_limit} here",
                           "max_tokens_too_large", "max_tokens")
        if sampling.logprobs is not None and \
                sampling.max_tokens * (sampling.logprobs + 1) > MAX_LOGPROB_ENTRIES:
            raise APIError(400, "with logprobs, max_tokens × (top_logprobs + 1) is at most "
                           f"{MAX_LOGPROB_ENTRIES} (a result is one message)",
                           "logprobs_too_large", "top_logprobs")
        if (n := getattr(req, "n", None) or 1) > 1:
            if call.respond_async:
                raise APIError(400, "n > 1 is served on sync and streaming calls, not with "
                               "'Prefer: respond-async'", "unsupported_parameter", "n")
            return await choices.fan_out(self.one, who, call, n)
        return await self.one(who, call)

    async def one(self, who: Principal, call: Call) -> Answer:
        """One job for ``call`` (one choice)."""
        req = call.body
        live = not call.respond_async
        prepared = await self._limits.admit(who, self._admission.prepare(  # then reserve
            who, req, call.zone, call.constraints, call.location, call.idempotency_key,
            self._replies.subject if live else None, call.webhook))
        if isinstance(prepared, Repeat):
            return await self._repeat(who, prepared.job_id, call)
        if not live:
            placed = await self._admission.place(prepared)
            if isinstance(placed, Repeat):
                return await self._repeat(who, placed.job_id, call)
            return accepted(placed.job.job_id, where(placed.job), call.base_url)
        watching: list[JobReplies] = []

        def watch() -> None:
            # Once the hold is this call's (a call that lost the race for its key's job
            # must not take the job's replies from the winner), and before the job is
            # queued, so no reply arrives unrouted.
            watching.append(self._replies.watch(prepared.job.job_id, prepared.job.deadline))
        handed_over = False
        try:
            placed = await self._admission.place(prepared, on_held=watch)
            if isinstance(placed, Repeat):  # a concurrent call with its key made the job
                return await self._repeat(who, placed.job_id, call)
            replies = watching[0]
            if req.stream:
                answer = await self._stream(placed, replies, req.include_usage, call.gone)
                handed_over = True  # the stream closes them
                return answer
            return await self._complete(placed, replies, call.gone)
        finally:
            if watching and not handed_over:
                watching[0].close()

    async def _complete(self, prepared: Prepared, replies: JobReplies, gone) -> Body:
        """Wait for the job's outcome: the sync body, or its error."""
        job, created = prepared.job, now()

        async def outcome() -> Finished:
            while not isinstance(reply := await replies.next(), Finished):
                pass
            return reply
        try:
            reply = await self._unless_gone(outcome(), gone, job)
        except APIError as exc:
            exc.headers.update(where(job))  # a failed job is still named
            raise
        outcome = reply.event
        if not isinstance(outcome, JobCompleted):
            exc = outcome_error(outcome)
            exc.headers.update(where(job))
            raise exc
        return Body(completed_body(job, created, outcome), where(job, outcome.zone))

    async def _stream(self, prepared: Prepared, replies: JobReplies,
                      include_usage: bool, gone) -> Stream:
        """Wait for the job's first text (so the headers tell where it runs, and an
        error known before any token, such as a context overflow, is an HTTP error
        rather than a ``200`` with an error inside), then stream."""
        job, created = prepared.job, now()

        async def first_text() -> Started | Finished:
            started = await replies.next()
            while isinstance(started, Delta):  # text of no lease: not this stream's
                started = await replies.next()
            if isinstance(started, Finished):
                return started
            ahead = await replies.next()
            while isinstance(ahead, Started):  # taken over before its first token
                started, ahead = ahead, await replies.next()
            if isinstance(ahead, Finished) and not isinstance(ahead.event, JobCompleted):
                return ahead
            replies.put_back(ahead)
            return started
        try:
            first = await self._unless_gone(first_text(), gone, job)
            if isinstance(first, Finished) and not isinstance(first.event, JobCompleted):
                raise outcome_error(first.event)
        except APIError as exc:
            exc.headers.update(where(job))
            raise
        zone = first.zone if isinstance(first, Started) else first.event.zone
        chunks = sse.chunks(job, created, include_usage, replies, first, self._abandoned)
        return Stream(chunks, where(job, zone))

    async def _unless_gone(self, waited: Awaitable, gone, job: JobSubmitted | None):
        """``waited``'s result; a client that hangs up first gets :class:`ClientGone`
        and stops ``job`` (what it produced is charged, the rest refunded)."""
        if gone is None:
            return await waited
        result, hangup = asyncio.ensure_future(waited), asyncio.ensure_future(gone())
        try:
            await asyncio.wait((result, hangup), return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            if not result.done():
                result.cancel()
        if not result.done() or result.cancelled():
            if job is not None:
                self._abandoned(job)
            raise ClientGone()
        return result.result()

    def _abandoned(self, job: JobSubmitted) -> None:
        """A streaming client went away: stop the job, charge what ran."""
        self._cancellation.in_background(job.job_id)

    async def _repeat(self, who: Principal, job_id: str, call: Call) -> Answer:
        """A repeated Idempotency-Key: the first call's job, never a second one."""
        if call.respond_async:
            return accepted(job_id, {"X-Inferbus-Job": job_id}, call.base_url)
        view = await self._jobs.find_own(job_id, who.account)
        # A repeat's caller hanging up stops its wait, not the job: it is the first call's.
        view = await self._unless_gone(
            self._jobs.until_terminal(view, self._config.job_timeout_s), call.gone, None)
        if (body := (await self._jobs.body(view))["result"]) is None:
            raise APIError(409 if not view.terminal else 500,
                           f"the job for this Idempotency-Key is {view.status}", view.status)
        return Body(body, {"X-Inferbus-Job": job_id,
                           "X-Inferbus-Zone": view.served_zone or view.zone,
                           "X-Inferbus-Route": view.route or "zone"})

