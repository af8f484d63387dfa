"""The one publish path for the event log and the work queue.

Every durable publish goes through :func:`publish_event` or :func:`enqueue_job`,
which set ``Nats-Msg-Id`` to the event id: a retry after a lost ack is
deduplicated by JetStream instead of recorded twice.
"""
from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck

from bus import subjects
from bus.events import ApiKeyIssued, ApiKeyRevoked, Event, JobSubmitted

MSG_ID = "Nats-Msg-Id"


def event_subject(event: Event, zone: str) -> str:
    if isinstance(event, ApiKeyIssued):
        return subjects.key_issued(event.key_hash)
    if isinstance(event, ApiKeyRevoked):
        return subjects.key_revoked(event.key_hash)
    return subjects.event(zone, type(event).__name__)


async def publish_event(js: JetStreamContext, event: Event, zone: str = subjects.GLOBAL,
                        timeout: float = 5.0, headers: dict[str, str] | None = None) -> PubAck:
    """Append ``event`` to the log on its zone's subject; returns once stored."""
    return await js.publish(event_subject(event, zone), event.model_dump_json().encode(),
                            timeout=timeout, headers={**(headers or {}), MSG_ID: event.event_id})


async def enqueue_job(js: JetStreamContext, job: JobSubmitted, timeout: float = 5.0) -> PubAck:
    """Queue a submitted job on its route's jobs subject (zone or global).

    The msg id is derived from the event id so a retried enqueue is deduplicated
    separately from the log entry of the same event."""
    subject = subjects.jobs(job.zone if job.route == "zone" else subjects.GLOBAL, job.model)
    return await js.publish(subject, job.model_dump_json().encode(), timeout=timeout,
                            headers={MSG_ID: f"q-{job.event_id}"})
