"""Event contracts: every fact inferbus records is one of these frozen models.

Events are immutable and past tense. Each carries ``event_id`` (also the
JetStream ``Nats-Msg-Id``, so a republish is deduplicated) and
``occurred_at``. ``type`` is the discriminator used by :func:`parse_event`.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from bus.bounds import MAX_TOKENS, Attempt, Hash, Id, Micro, Name, Text, Tokens
from bus.contracts import Contract, Event, new_id
from bus.credit_events import (CreditsDebited, CreditsDeposited, CreditsRefunded,
                               CreditsReimbursed, CreditsReserved, RCPAwarded, RCPRevoked)
from bus.account_events import (ACCOUNT_EVENTS, PlanDefined, ReferralLinked, ReferralRewarded,
                                ReferralRewardRevoked, SubscriptionCancelled, SubscriptionLapsed,
                                SubscriptionRenewed, SubscriptionStarted)
from bus.model_events import ModelPublished, ModelRetired
from bus.node_events import NodeStrike, NodeSuspended, NodeVerified, SpotChecked
from bus.sampling import Logprobs, Sampling
from bus.subjects import GLOBAL
from bus.vectors import MAX_INPUTS, Vectors

__all__ = [  # the node and money events live in their own modules; all are named here
    "Contract", "Event", "new_id", "NodeStrike", "NodeSuspended", "NodeVerified", "SpotChecked",
    "CreditsDebited", "CreditsDeposited", "CreditsRefunded", "CreditsReimbursed",
    "CreditsReserved", "RCPAwarded", "RCPRevoked", "ACCOUNT_EVENTS", "PlanDefined",
    "ReferralLinked", "ReferralRewarded", "ReferralRewardRevoked", "SubscriptionCancelled",
    "SubscriptionLapsed", "SubscriptionRenewed", "SubscriptionStarted"]


class ChatMessage(Contract):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text


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
    kind: Literal["chat", "completion", "embedding"]
    messages: tuple[ChatMessage, ...] | None = Field(default=None, max_length=4096)
    prompt: Text | None = None
    # An embedding job's texts (``kind="embedding"``; its sampling is max_tokens=1).
    inputs: tuple[Text, ...] | None = Field(default=None, min_length=1, max_length=MAX_INPUTS)
    sampling: Sampling
    zone: Name
    route: Literal["zone", "global"]
    deadline: datetime
    reply_to: Name | None = None
    queue: Name | None = None  # the first queue it was put on; None: its zone or global
    then: tuple[Name, ...] = Field(default=(), max_length=16)
    subcloud: Name | None = None
    strict: bool = False  # subcloud residency: never leaves its zones
    # Set on the log's copy, which carries no content (``without_content``).
    input_sha256: Hash | None = None

    def first_queue(self) -> str:
        return self.queue or (self.zone if self.route == "zone" else GLOBAL)

    def input_hash(self) -> str:
        """Hash of what the model is asked, bound into the result signature."""
        if self.messages is None and self.prompt is None and self.inputs is None \
                and self.input_sha256:
            return self.input_sha256  # the log's copy: the content is in the content store
        # Sampling fields added later count only when set, so older jobs hash as they did;
        # so do ``inputs``, which only embedding jobs have.
        exclude: dict = {"sampling": self.sampling.off()}
        if self.inputs is None:
            exclude["inputs"] = True
        body = self.model_dump_json(
            include={"model", "kind", "messages", "prompt", "inputs", "sampling"}, exclude=exclude)
        return hashlib.sha256(body.encode()).hexdigest()

    def without_content(self) -> "JobSubmitted":
        """The copy the log keeps: the prompt replaced by its hash (``bus.content``)."""
        return self.model_copy(update={"messages": None, "prompt": None, "inputs": None,
                                       "input_sha256": self.input_hash()})


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
    probation: bool = False  # its node was on probation: checked, and earns no RCP yet
    # The root of the weights the node signed it ran (bus.model_manifest); None on
    # events from before models had roots.
    model_root: Hash | None = None
    # Per-token log probabilities, when the job asked for them; content, like the text,
    # and covered by ``output_hash`` (see ``output_hash``).
    logprobs: Logprobs | None = None
    # An embedding job's vectors (``text`` is ""): content, covered by ``output_hash``.
    vectors: Vectors | None = None

    def without_content(self) -> "JobCompleted":
        """The copy the log keeps: ``output_hash`` stands for the text (``bus.content``)."""
        return self.model_copy(update={"text": "", "logprobs": None, "vectors": None})


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
    """A consumer key. Only its SHA-256 is ever stored or published.

    ``admin``: the key may manage its account's keys (``/v1/keys``);
    ``spend_limit``: micro-credits its debits and holds may reach at most;
    ``expires_at``: refused from then on; ``webhook_url``: where its async jobs'
    outcomes go when a call names none. All optional: a key logged before they
    existed is a plain, unlimited, non-admin key."""

    type: Literal["ApiKeyIssued"] = "ApiKeyIssued"
    key_hash: Id
    account: Id
    subcloud: Name | None = None
    name: Name | None = None
    admin: bool = False
    spend_limit: Micro | None = None
    expires_at: datetime | None = None
    webhook_url: Annotated[str, Field(max_length=2048)] | None = None


class SubcloudCreated(Event):
    """A named group of zones keys can be bound to. ``strict``: its jobs never
    run outside ``zones`` (data residency), and wait there rather than fall back."""

    type: Literal["SubcloudCreated"] = "SubcloudCreated"
    name: Name
    zones: tuple[str, ...]
    strict: bool = False


class ApiKeyRevoked(Event):
    """A key refused from now on by every API instance (they watch this subject)."""

    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    key_hash: Id
    account: Id | None = None  # None on keys revoked before accounts managed their own


class DeadLetter(Contract):
    """A message a consumer could not read: kept, with why, instead of blocking it."""

    consumer: str
    subject: str
    stream_seq: int | None = Field(ge=0)
    reason: Text
    data: str  # the message as it came, base64


CREDIT_EVENTS = (CreditsDeposited, CreditsReserved, CreditsDebited, CreditsRefunded, RCPAwarded,
                 CreditsReimbursed, RCPRevoked)
# The events that end a job: its outcome, which settlement resolves its reservation by.
TERMINAL_JOB_EVENTS = (JobCompleted, JobFailed, JobCancelled, JobExpired)
# What settlement reads: the outcomes and a failed spot check's compensation. Each is
# logged on a subject carrying its job's slot (bus.partitions), so each ledger shard's
# settlement reads only its own.
SETTLED_EVENTS = (*TERMINAL_JOB_EVENTS, SpotChecked)
# Every event of one job, logged under its job's slot: the outcomes above, and the
# rest of its life, so each read-model partition reads a job's events whole.
SLOTTED_EVENTS = (JobSubmitted, JobStarted, JobEscalated, *SETTLED_EVENTS)

AnyEvent = Annotated[
    Union[JobSubmitted, JobStarted, JobEscalated, JobCompleted, JobFailed, JobCancelled,
          JobExpired, ApiKeyIssued, ApiKeyRevoked, SubcloudCreated, CreditsDeposited,
          CreditsReserved, CreditsDebited, CreditsRefunded, RCPAwarded, CreditsReimbursed,
          RCPRevoked, NodeStrike, NodeSuspended, NodeVerified, SpotChecked, ModelPublished,
          ModelRetired,
          ReferralLinked, ReferralRewarded, ReferralRewardRevoked, PlanDefined,
          SubscriptionStarted, SubscriptionRenewed, SubscriptionCancelled, SubscriptionLapsed],
    Field(discriminator="type"),
]

_any_event: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> Event:
    """Decode one event from its JSON form; raises ``pydantic.ValidationError``."""
    return _any_event.validate_json(data)


def output_hash(text: str, logprobs: tuple | None = None, vectors: Vectors | None = None) -> str:
    """The hash a node signs for its output: the text, and its log probabilities
    when the job asked for them (so a gate or a reader can check those too); an
    embedding job's vectors (``Vectors.digest``)."""
    if vectors is not None:
        return vectors.digest()
    if logprobs is None:
        return hashlib.sha256(text.encode()).hexdigest()
    listed = json.dumps([p.model_dump(mode="json") for p in logprobs], separators=(",", ":"),
                        sort_keys=True)
    return hashlib.sha256(text.encode() + b"\x00" + listed.encode()).hexdigest()
