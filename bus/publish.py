"""The one publish path for the event log and the work queue.

Every durable publish goes through :func:`publish_event`, :func:`publish_batch`
or :func:`enqueue_job`, which set ``Nats-Msg-Id`` to the event id: a retry
after a lost ack is deduplicated by JetStream instead of recorded twice.
"""
from __future__ import annotations

import base64
import json

from nats.js import JetStreamContext
from nats.js.api import PubAck

from bus import subjects
from bus.events import (SLOTTED_EVENTS, ApiKeyIssued, ApiKeyRevoked, DeadLetter, Event,
                        JobSubmitted, SubcloudCreated, new_id)
from bus.partitions import job_slot

MSG_ID = "Nats-Msg-Id"
ATOMIC_DISABLED = 10174  # JetStream: the stream does not allow atomic batches


class BatchRefused(Exception):
    """JetStream refused an atomic batch; none of its events was stored."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(f"{description} ({err_code})")
        self.err_code = err_code


def event_subject(event: Event, zone: str, shard: int | None = None) -> str:
    """Where ``event`` is logged: a key or subcloud under its own token, a job's
    events under its job's slot, money relayed from ledger shard ``shard`` under the
    shard."""
    if isinstance(event, SLOTTED_EVENTS):
        return subjects.event(zone, type(event).__name__,
                              subjects.slot_token(job_slot(event.job_id)))
    if shard is not None:
        return subjects.event(zone, type(event).__name__, subjects.shard_token(shard))
    if isinstance(event, ApiKeyIssued):
        return subjects.key_issued(event.key_hash)
    if isinstance(event, ApiKeyRevoked):
        return subjects.key_revoked(event.key_hash)
    if isinstance(event, SubcloudCreated):
        return subjects.subcloud_created(event.name)
    return subjects.event(zone, type(event).__name__)


async def publish_event(js: JetStreamContext, event: Event, zone: str = subjects.GLOBAL,
                        timeout: float = 5.0, headers: dict[str, str] | None = None,
                        shard: int | None = None) -> PubAck:
    """Append ``event`` to the log on its zone's subject (``shard``: the ledger shard
    relaying it, where there are several); returns once stored."""
    return await js.publish(event_subject(event, zone, shard), event.model_dump_json().encode(),
                            timeout=timeout, headers={**(headers or {}), MSG_ID: event.event_id})


async def publish_batch(js: JetStreamContext, items: list[tuple[Event, str, dict[str, str]]],
                        timeout: float = 5.0, shard: int | None = None) -> PubAck:
    """Append every ``(event, zone, headers)`` to the log in order, all or none, in
    one round trip: a JetStream atomic batch (the stream needs ``allow_atomic``;
    at most 1,000 events). Only the last message is acknowledged, for the whole
    batch. Raises :class:`BatchRefused` when the stream refused it (e.g.
    ``ATOMIC_DISABLED``, or a ``Nats-Msg-Id`` already stored), and a timeout when
    no answer came, in which case the batch may or may not be stored."""
    if not items:
        raise ValueError("an empty batch")
    nc, batch = js._nc, new_id()  # nats-py's JetStream context has no batch API yet
    messages = [(event_subject(event, zone, shard), event.model_dump_json().encode(),
                 {**headers, MSG_ID: event.event_id, "Nats-Batch-Id": batch,
                  "Nats-Batch-Sequence": str(sequence)})
                for sequence, (event, zone, headers) in enumerate(items, 1)]
    for subject, data, header in messages[:-1]:
        await nc.publish(subject, data, headers=header)
    subject, data, header = messages[-1]  # the commit, the one message answered
    answer = json.loads((await nc.request(subject, data, timeout=timeout, headers={
        **header, "Nats-Batch-Commit": "1"})).data)
    if error := answer.get("error"):
        raise BatchRefused(error.get("err_code", 0), error.get("description", "refused"))
    return PubAck(stream=answer["stream"], seq=answer["seq"])


async def enqueue_job(js: JetStreamContext, job: JobSubmitted, queue: str | None = None,
                      timeout: float = 5.0, copy: str = "") -> PubAck:
    """Queue a submitted job on ``queue`` (default: its first queue).

    The msg id is derived from the event id, the queue and ``copy``, so a retried
    enqueue is deduplicated, while the same job put on another queue (an
    escalation), or again on the same one after its node died (``copy`` names
    the attempt it replaces), is a copy of its own; the ``claims`` bucket lets
    only one copy run. The copy a node sees names no consumer: the account and
    key stay with the network (the log's ``JobSubmitted`` keeps them)."""
    queue = queue or job.first_queue()
    seen = job.model_copy(update={"account": "-", "key_id": "-"})
    return await js.publish(subjects.jobs(queue, job.model), seen.model_dump_json().encode(),
                            timeout=timeout, headers={MSG_ID: f"q-{queue}-{job.event_id}{copy}"})


async def dead_letter(js: JetStreamContext, consumer: str, subject: str, stream_seq: int | None,
                      reason: str, data: bytes) -> PubAck:
    """Set aside a message ``consumer`` could not read, with the reason; it moves on."""
    letter = DeadLetter(consumer=consumer, subject=subject, stream_seq=stream_seq,
                        reason=reason[:2000], data=base64.b64encode(data).decode())
    headers = {MSG_ID: f"dl-{consumer}-{stream_seq}"} if stream_seq is not None else None
    return await js.publish(subjects.dead_letter(consumer), letter.model_dump_json().encode(),
                            headers=headers)
