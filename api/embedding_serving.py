"""Serving ``POST /v1/embeddings``: the same rails as a chat job, one answer.

In order: the key's rate and in-flight limits (429), admission
(:mod:`api.admission`: the model must be a live embeddings model, 404/503
otherwise and 400 for a chat model; the route by zone, region and subcloud;
a repeated ``Idempotency-Key``; the worst case held in the ledger, 402 when
short; logged and queued), then the wait for the gate's checked outcome
(:mod:`api.reply_router`): the vectors a node signed, usage recounted by the
gate with the model's own tokenizer. Settlement charges that usage from the
log, as for any job. A repeated key answers the first call's job, never a
second one. Embeddings are never streamed and never async: the call is short.
"""
from __future__ import annotations

from dataclasses import dataclass

from api.admission import Admission, Repeat
from api.discovery import Constraints
from api.embedding_protocol import EmbeddingRequest, embeddings_body
from api.errors import APIError, outcome_error
from api.job_serving import JobServing
from api.keys import Principal
from api.limits import KeyLimiter
from api.reply_router import ReplyRouter
from bus.events import JobCompleted, JobSubmitted
from bus.replies import Finished
from bus.vectors import pack


@dataclass(frozen=True)
class EmbeddingCall:
    """An embeddings call as the router hands it over: its body and where it comes from."""

    body: EmbeddingRequest
    zone: str
    location: tuple[float, float] | None
    constraints: Constraints | None
    idempotency_key: str | None = None


def _where(job: JobSubmitted, served_zone: str | None = None) -> dict[str, str]:
    zone = served_zone or job.zone
    route = job.route if served_zone is None else ("zone" if served_zone == job.zone
                                                    else "global")
    return {"X-Inferbus-Zone": zone, "X-Inferbus-Route": route, "X-Inferbus-Job": job.job_id}


class EmbeddingServing:
    def __init__(self, admission: Admission, replies: ReplyRouter, limits: KeyLimiter,
                 jobs: JobServing, job_timeout_s: float) -> None:
        self._admission, self._replies, self._limits = admission, replies, limits
        self._jobs, self._timeout_s = jobs, job_timeout_s

    async def embed(self, who: Principal, call: EmbeddingCall) -> tuple[dict, dict[str, str]]:
        """The embeddings of ``call`` for ``who``: (body, headers); errors raise APIError."""
        req = call.body
        prepared = await self._limits.admit(who, self._admission.prepare(  # then reserve
            who, req, call.zone, call.constraints, call.location, call.idempotency_key,
            self._replies.subject))
        if isinstance(prepared, Repeat):
            return await self._repeat(who, prepared.job_id, req)
        job = prepared.job
        # Watched before it is queued, so no reply arrives unrouted.
        replies = self._replies.watch(job.job_id, job.deadline)
        try:
            placed = await self._admission.place(prepared)
            if isinstance(placed, Repeat):  # a concurrent call with this key made the job
                return await self._repeat(who, placed.job_id, req)
            job = placed.job
            while not isinstance(reply := await replies.next(), Finished):
                pass
        except APIError as exc:
            exc.headers.update(_where(job))  # a failed job is still named
            raise
        finally:
            replies.close()
        outcome = reply.event
        if not isinstance(outcome, JobCompleted) or outcome.vectors is None:
            exc = outcome_error(outcome) if not isinstance(outcome, JobCompleted) else \
                APIError(500, "the job completed without vectors", "worker_error")
            exc.headers.update(_where(job))
            raise exc
        body = embeddings_body(job.model, outcome.vectors, outcome.usage.prompt_tokens,
                               req.encoding_format)
        return body, _where(job, outcome.zone)

    async def _repeat(self, who: Principal, job_id: str,
                      req: EmbeddingRequest) -> tuple[dict, dict[str, str]]:
        """A repeated Idempotency-Key: the first call's job's vectors, once it ends."""
        view = await self._jobs.find_own(job_id, who.account)
        view = await self._jobs.until_terminal(view, self._timeout_s)
        if (body := (await self._jobs.body(view))["result"]) is None:
            raise APIError(409 if not view.terminal else 500,
                           f"the job for this Idempotency-Key is {view.status}", view.status)
        if req.encoding_format == "base64":  # the first call's floats, as this one asks
            floats = [d["embedding"] for d in body["data"]]
            vectors = pack(floats, len(floats[0]))
            body = {**body, "data": [{**d, "embedding": b64} for d, b64 in
                                     zip(body["data"], vectors.each_base64(), strict=True)]}
        return body, {"X-Inferbus-Job": job_id, "X-Inferbus-Zone": view.served_zone or view.zone,
                      "X-Inferbus-Route": view.route or "zone"}
