"""Live reply messages: what a worker sends to the API instance waiting on a job.

These ride core NATS (at most once, lowest latency) on the job's
``reply_to`` subject. They are a convenience for live callers, never a record:
the durable outcome is always the ``JobCompleted``/``JobFailed`` event on the
log, which the final reply simply carries.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from bus.bounds import MAX_TEXT, Attempt, Id, Name, Text
from bus.events import Contract, JobCancelled, JobCompleted, JobExpired, JobFailed
from bus.sampling import Logprobs


class Started(Contract):
    kind: Literal["started"] = "started"
    job_id: Id
    zone: Name
    attempt: Attempt
    node_id: Id | None = None  # the lease holder the network granted it to (sent by the gate)


class Delta(Contract):
    """New output text. ``offset`` is where ``text`` starts in the full output,
    so a receiver can drop text it already has (e.g. after a redelivery)."""

    kind: Literal["delta"] = "delta"
    job_id: Id
    offset: int = Field(ge=0, le=MAX_TEXT)
    text: Text
    attempt: Attempt = 1  # the delivery that made it: text of a superseded attempt is dropped
    logprobs: Logprobs | None = None  # the tokens of ``text``, when the job asked for them


class Finished(Contract):
    kind: Literal["finished"] = "finished"
    event: Annotated[Union[JobCompleted, JobFailed, JobExpired, JobCancelled],
                     Field(discriminator="type")]


class Resume(Contract):
    """A request from a node taking over a job mid-stream: what text does the
    caller already have? The answer (``Resumed``) is where it continues from;
    from then on, text of earlier attempts is dropped."""

    kind: Literal["resume"] = "resume"
    job_id: Id
    attempt: Attempt


class Resumed(Contract):
    kind: Literal["resumed"] = "resumed"
    job_id: Id
    text: Text


Reply = Annotated[Union[Started, Delta, Finished, Resume], Field(discriminator="kind")]
_reply: TypeAdapter[Reply] = TypeAdapter(Reply)


def parse_reply(data: bytes) -> Started | Delta | Finished | Resume:
    return _reply.validate_json(data)
