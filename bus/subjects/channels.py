"""The event log's channel addresses as the AsyncAPI document (``api.asyncapi``)
shows them: ``{zone}`` and ``{entity}`` stand for a subject's variable tokens.
Part of :mod:`bus.subjects`, which spells the concrete subjects.
"""
from __future__ import annotations

# Events logged under an entity token, so one direct get finds the latest
# (``bus.publish.event_subject``): keys by their hash, subclouds by name.
ENTITY_EVENTS = {"ApiKeyIssued": "key_hash", "ApiKeyRevoked": "key_hash",
                 "SubcloudCreated": "name"}
# Events logged under their job's slot (``bus.partitions``): every event of a job
# (``bus.events.SLOTTED_EVENTS``), which settlement and read-model partitions read by.
SLOT_EVENTS = ("JobSubmitted", "JobStarted", "JobEscalated", "JobCompleted", "JobFailed",
               "JobCancelled", "JobExpired", "SpotChecked")


def event_address(event_type: str) -> str:
    """``events.{zone}.<Type>``, ``events.global.<Type>.{key_hash}`` for a keyed
    event, ``events.{zone}.<Type>.{slot}`` for a job's event (``j`` and its slot);
    a ledger of several shards adds ``s`` and its shard to its money events."""
    if event_type in ENTITY_EVENTS:
        return f"events.global.{event_type}.{{{ENTITY_EVENTS[event_type]}}}"
    if event_type in SLOT_EVENTS:
        return f"events.{{zone}}.{event_type}.{{slot}}"
    return f"events.{{zone}}.{event_type}"


def event_type_of(subject: str) -> str | None:
    """The ``<Type>`` of a concrete ``events.<zone>.<Type>[...]`` subject; None for
    any other subject."""
    tokens = subject.split(".")
    return tokens[2] if len(tokens) >= 3 and tokens[0] == "events" else None


JOB_QUEUE_ADDRESS = "jobs.{queue}.{model}"  # bus.subjects.jobs: a zone, global, node or pool
