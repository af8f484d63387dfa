"""Events about nodes: what the network refused of them, its spot checks'
verdicts, and their standing (suspended, verified)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bus.bounds import MAX_TOKENS, Attempt, Id, Name, Text
from bus.contracts import Event


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


class SpotChecked(Event):
    """The verifier's verdict on one completed job: the claimed output re-checked
    against the model it names (``verifier/``). A failed check also strikes the
    node; settlement compensates a failed job (debit reimbursed, RCP revoked)."""

    type: Literal["SpotChecked"] = "SpotChecked"
    job_id: Id
    node_id: Id
    zone: Name
    attempt: Attempt
    passed: bool
    probe: bool = False  # a job the network sent a node on probation
    reason: Text
    evidence: Annotated[str, Field(max_length=4096)] = ""


class NodeVerified(Event):
    """A node on probation that passed its checks: it earns RCP from now on."""

    type: Literal["NodeVerified"] = "NodeVerified"
    node_id: Id
    passed: int = Field(ge=0, le=MAX_TOKENS)
