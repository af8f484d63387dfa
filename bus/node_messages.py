"""What a node may say to the network, and what the gate answers.

A node never writes the log, the claims or the ledger: it asks the gate
(``gate/``) on ``node.<its id>.lease`` and reports on ``node.<its id>.outcome``
(requests, ``bus.subjects.node_says``). Who sent a message is the subject's
node id, never a field: none of these carries one. What a node reports is a
claim the gate checks; usage, operator and tier are not the node's to claim.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, TypeAdapter

from bus.bounds import Attempt, Hash, Id, Text
from bus.events import Contract
from bus.model_manifest import Sha256
from bus.sampling import Logprobs
from bus.vectors import Vectors

AckSubject = Annotated[str, Field(max_length=256)]


class LeaseAsk(Contract):
    """Take (``acquire``) or keep (``renew``) the lease of the job delivered as JOBS
    stream message ``message`` for the ``attempt``-th time; ``ack`` is that
    delivery's ack subject, which the gate uses to move the job on at once if this
    node dies."""

    op: Literal["acquire", "renew"]
    job_id: Id
    attempt: Attempt
    message: int = Field(ge=1, le=2**63 - 1)
    ack: AckSubject | None = None


class LeaseAnswer(Contract):
    """``run``: the lease is this node's (``took_over``: another held it before,
    so continue from the caller's text); ``discard``: another copy runs or ran,
    ack this one; ``wait``: deliver it again after ``delay_s``; ``stop``: a lease
    being renewed is no longer this node's."""

    action: Literal["run", "discard", "wait", "stop"]
    delay_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    took_over: bool = False
    runs: int = Field(default=1, ge=0, le=1000)
    attempt: Attempt = 1  # the network's count of this run: sign and reply under it
    reason: Text = ""


class Completed(Contract):
    """The node's output; ``signature`` signs it (``bus.signing.sign_output``)."""

    kind: Literal["completed"] = "completed"
    job_id: Id
    attempt: Attempt
    text: Text
    finish_reason: Literal["stop", "length"]
    signature: Hash
    model_root: Sha256 | None = None  # the weights it ran (signed with the rest)
    logprobs: Logprobs | None = None  # when the job asked; in the signed output hash
    vectors: Vectors | None = None  # an embedding job's result (``text`` ""); signed too


class Failed(Contract):
    kind: Literal["failed"] = "failed"
    job_id: Id
    attempt: Attempt
    code: Literal["context_length_exceeded", "worker_error", "job_failed"]
    message: Annotated[str, Field(max_length=2000)]


class Cancelled(Contract):
    """Stopped on request; ``text`` is what was produced (charged), None before any."""

    kind: Literal["cancelled"] = "cancelled"
    job_id: Id
    attempt: Attempt
    text: Text | None = None


class Expired(Contract):
    """The node found the job past its deadline; the gate checks the clock itself."""

    kind: Literal["expired"] = "expired"
    job_id: Id
    attempt: Attempt


Outcome = Annotated[Union[Completed, Failed, Cancelled, Expired], Field(discriminator="kind")]
_outcome: TypeAdapter[Outcome] = TypeAdapter(Outcome)


def parse_outcome(data: bytes) -> Completed | Failed | Cancelled | Expired:
    return _outcome.validate_json(data)


class OutcomeAnswer(Contract):
    """``logged``: the outcome is on the log (ack the job); otherwise ``reason``
    says why it was refused (a lease lost to another node: drop the job)."""

    logged: bool
    reason: Text = ""
