"""Event contracts: every fact inferbus records is one of these frozen models.

Events are immutable and past tense. Each carries ``event_id`` (also the
JetStream ``Nats-Msg-Id``, so a republish is deduplicated) and
``occurred_at``. ``type`` is the discriminator used by :func:`parse_event`.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Annotated, Literal, Union
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from bus.bounds import MAX_MICRO, MAX_TOKENS, Attempt, Hash, Id, Micro, Name, Text, Tokens
from bus.subjects import GLOBAL


def _now() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid4().hex


class Contract(BaseModel):
    """A frozen, strict message shape shared between processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Contract):
    event_id: Id = Field(default_factory=new_id)
    occurred_at: datetime = Field(default_factory=_now)


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text


class Sampling(Contract):
    """Per-request generation parameters; the worker honours each one."""

    max_tokens: int = Field(ge=1, le=MAX_TOKENS)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[Annotated[str, Field(max_length=256)], ...] = Field(default=(), max_length=16)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)


class JobSubmitted(Event):
    """A consumer's job, accepted by the API and queued on a jobs subject.

    ``kind`` is ``chat`` (``messages`` set) or ``completion`` (``prompt`` set).
    ``zone`` is the consumer's resolved zone, ``route`` whether it was queued on
    that zone's subject or the global one, ``then`` the queues its route allows
    after the first, in order (escalation and failover go no further). ``reply_to``
    is the core-NATS subject of the API instance waiting for tokens, if any.
    """

    type: Literal["JobSubmitted"] = "JobSubmitted"
    job_id: Id
    account: Id
    key_id: Id
    model: Name
    kind: Literal["chat", "completion"]
    messages: tuple[ChatMessage, ...] | None = Field(default=None, max_length=4096)
    prompt: Text | None = None
    sampling: Sampling
    zone: Name
    route: Literal["zone", "global"]
    deadline: datetime
    reply_to: Name | None = None
    queue: Name | None = None  # the first queue it was put on; None: its zone or global
    then: tuple[Name, ...] = Field(default=(), max_length=16)
    subcloud: Name | None = None
    strict: bool = False  # subcloud residency: never leaves its zones

    def first_queue(self) -> str:
        return self.queue or (self.zone if self.route == "zone" else GLOBAL)

    def input_hash(self) -> str:
        """Hash of what the model is asked, bound into the result signature."""
        body = self.model_dump_json(include={"model", "kind", "messages", "prompt", "sampling"})
        return hashlib.sha256(body.encode()).hexdigest()


class JobStarted(Event):
    type: Literal["JobStarted"] = "JobStarted"
    job_id: Id
    node_id: Id
    zone: Name  # the node's zone: where the job runs
    attempt: Attempt


class JobEscalated(Event):
    """A job that left its first queue: no in-zone worker started it within the
    zone wait (``to="global"``), or a chosen node did not start it in time
    (``to`` = the next node's queue token)."""

    type: Literal["JobEscalated"] = "JobEscalated"
    job_id: Id
    zone: Name  # the job's own zone (its log subject)
    from_queue: Name
    to: Name
    reason: Text


class Usage(Contract):
    prompt_tokens: Tokens
    completion_tokens: Tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class JobCompleted(Event):
    """A finished job, signed by the node that ran it (see ``bus.signing``)."""

    type: Literal["JobCompleted"] = "JobCompleted"
    job_id: Id
    model: Name
    node_id: Id
    operator: Id  # the account that earns the job's RCP
    tier: int = Field(default=1, ge=1, le=6)
    zone: Name
    attempt: Attempt
    text: Text
    finish_reason: Literal["stop", "length"]
    usage: Usage
    input_hash: Hash
    output_hash: Hash
    signature: Hash


class JobFailed(Event):
    """A job that cannot complete. ``code`` is an OpenAI-style error code."""

    type: Literal["JobFailed"] = "JobFailed"
    job_id: Id
    node_id: Id | None = None
    zone: Name
    code: Name
    message: Text


class JobCancelled(Event):
    """A job stopped on request (``DELETE``, or the client went away). ``usage``
    counts what was produced before it stopped: that much is charged."""

    type: Literal["JobCancelled"] = "JobCancelled"
    job_id: Id
    zone: Name
    reason: Text
    model: Name | None = None
    node_id: Id | None = None
    usage: Usage | None = None


class JobExpired(Event):
    type: Literal["JobExpired"] = "JobExpired"
    job_id: Id
    zone: Name


class ApiKeyIssued(Event):
    """A consumer key. Only its SHA-256 is ever stored or published."""

    type: Literal["ApiKeyIssued"] = "ApiKeyIssued"
    key_hash: Id
    account: Id
    subcloud: Name | None = None


class SubcloudCreated(Event):
    """A named group of zones keys can be bound to. ``strict``: its jobs never
    run outside ``zones`` (data residency), and wait there rather than fall back."""

    type: Literal["SubcloudCreated"] = "SubcloudCreated"
    name: Name
    zones: tuple[str, ...]
    strict: bool = False


class ApiKeyRevoked(Event):
    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    key_hash: Id


class NodeStrike(Event):
    """Something a node sent that the network refused: a forged, malformed or
    wrong result, or a request outside its grant. ``evidence`` holds what it sent
    (truncated) so the audit can judge the strike."""

    type: Literal["NodeStrike"] = "NodeStrike"
    node_id: Id
    reason: Text
    job_id: Id | None = None
    evidence: Annotated[str, Field(max_length=4096)] = ""


class NodeSuspended(Event):
    """A node taken out of the network: no leases, no routing, grant suspended."""

    type: Literal["NodeSuspended"] = "NodeSuspended"
    node_id: Id
    reason: Text


class DeadLetter(Contract):
    """A message a consumer could not read: kept, with why, instead of blocking it."""

    consumer: str
    subject: str
    stream_seq: int | None = Field(ge=0)
    reason: Text
    data: str  # the message as it came, base64


# --- credits: amounts are integer micro-credits (``bus.credits.MICRO``) --------


class CreditsDeposited(Event):
    type: Literal["CreditsDeposited"] = "CreditsDeposited"
    account: Id
    amount: int = Field(gt=0, le=MAX_MICRO)
    zone: Name = GLOBAL


class CreditsReserved(Event):
    """The worst-case cost of a job, held before the job is published."""

    type: Literal["CreditsReserved"] = "CreditsReserved"
    account: Id
    job_id: Id
    key_id: Id
    amount: Micro
    zone: Name
    deadline: datetime
    request_hash: Hash = ""


class CreditsDebited(Event):
    """The job's actual cost, taken from the reservation (at most once per job)."""

    type: Literal["CreditsDebited"] = "CreditsDebited"
    account: Id
    job_id: Id
    amount: Micro
    zone: Name


class CreditsRefunded(Event):
    """What a reservation returns: the rest after a debit, or all of it.
    Exactly one per reservation; it is what closes the reservation."""

    type: Literal["CreditsRefunded"] = "CreditsRefunded"
    account: Id
    job_id: Id
    amount: Micro
    zone: Name
    reason: Text


class RCPAwarded(Event):
    """Contribution points for the operator of the node that completed a job."""

    type: Literal["RCPAwarded"] = "RCPAwarded"
    operator: Id
    job_id: Id
    node_id: Id
    points: Micro
    zone: Name


CREDIT_EVENTS = (CreditsDeposited, CreditsReserved, CreditsDebited, CreditsRefunded, RCPAwarded)
# The events that end a job: its outcome, which settlement resolves its reservation by.
TERMINAL_JOB_EVENTS = (JobCompleted, JobFailed, JobCancelled, JobExpired)

AnyEvent = Annotated[
    Union[JobSubmitted, JobStarted, JobEscalated, JobCompleted, JobFailed, JobCancelled,
          JobExpired, ApiKeyIssued, ApiKeyRevoked, SubcloudCreated, CreditsDeposited,
          CreditsReserved, CreditsDebited, CreditsRefunded, RCPAwarded, NodeStrike, NodeSuspended],
    Field(discriminator="type"),
]

_any_event: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> Event:
    """Decode one event from its JSON form; raises ``pydantic.ValidationError``."""
    return _any_event.validate_json(data)


def output_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
