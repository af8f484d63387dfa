"""Settlement: each job outcome on the log becomes one ledger resolution.

A faststream durable pull consumer reads the four terminal job events and
drives the ledger; the ledger resolves a reservation at most once, so a
redelivered or repeated outcome changes nothing. A verified ``JobCompleted``
is charged its counted usage and earns its node's operator RCP; an
unverifiable one, a failure, an expiry or a cancel before any output is
refunded in full; a cancel charges what was produced. An expiry sweep refunds
reservations still held well past their job's deadline.

Only the node holding a job's sealed lease (``bus.leases``) speaks for it: an
outcome from a node whose lease was taken over, or from a node that never held
the job, is set aside and changes nothing, however well signed.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from bus import subjects
from bus.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobExpired,
    JobFailed,
    parse_event,
)
from bus.leases import Lease, Leases
from bus.pricing import Pricing
from bus.publish import dead_letter, publish_event
from bus.signing import verify_result
from projections import views

log = logging.getLogger("inferbus.settlement")
DURABLE = "settlement"
OUTCOMES = (JobCompleted, JobFailed, JobCancelled, JobExpired)
SWEEP_EVERY_S = 5.0
RETRY_DELAY_S = 1.0
# A job with a logged completion or cancel is left to settlement this many graces
# longer: settlement held up by an outage must not find it refunded as expired.
OUTCOME_GRACE_FACTOR = 10


class NotYetSealed(Exception):
    """The outcome's node holds the lease but its seal is not visible yet: retry."""


def admits(event: Event, lease: Lease | None) -> bool:
    """Whether ``event`` may settle its job, given the job's lease.

    An expiry is a matter of time, anyone's to tell. An outcome without a node (the
    API's cancel of a queued job, a failed enqueue) counts only while no node holds
    the job; a node's outcome counts only under its own sealed lease, for the
    attempt it holds. Raises ``NotYetSealed`` for the holder's outcome seen before
    its seal."""
    if isinstance(event, JobExpired):
        return True
    node = getattr(event, "node_id", None)
    if lease is None or node is None:
        return lease is None and node is None
    if lease.node_id != node:
        return False
    if isinstance(event, JobCompleted) and event.attempt != lease.attempt:
        return False
    if not lease.done:
        raise NotYetSealed(event.job_id)
    return True


class Settlement:
    """The settlement policy: job outcome -> ledger command."""

    def __init__(self, ledger, pricing: Pricing) -> None:
        self.ledger, self.pricing = ledger, pricing

    def apply(self, event: Event, lease: Lease | None = None):
        """Resolve the job's reservation; None when the job has none (unbilled) or the
        outcome is not its holder's (see ``admits``)."""
        if not admits(event, lease):
            log.warning("%s for %s from a node not holding its lease set aside",
                        type(event).__name__, event.job_id)
            return None
        try:
            return self._resolve(event)
        except KeyError:  # UnknownReservation: a job that was never billed
            log.warning("no reservation for %s %s", type(event).__name__, event.job_id)
            return None

    def _resolve(self, event: Event):
        if isinstance(event, JobCompleted):
            if not verify_result(event):
                return self.ledger.refund(event.job_id, "result signature invalid")
            return self.ledger.settle(
                event.job_id, self.pricing.cost(event.model, event.usage),
                operator=event.operator, node_id=event.node_id,
                points=self.pricing.points(event.usage.completion_tokens, event.tier))
        if isinstance(event, JobCancelled) and event.usage and event.model:
            return self.ledger.settle(event.job_id, self.pricing.cost(event.model, event.usage))
        reason = {JobFailed: "failed", JobExpired: "expired"}.get(type(event), "cancelled")
        return self.ledger.refund(event.job_id, reason)


def subscribe(broker: NatsBroker, settlement: Settlement, js: JetStreamContext,
              leases: Leases, ack_wait_s: float = 30.0) -> None:
    """Register the settlement consumer on ``broker`` (before it starts)."""

    @broker.subscriber(
        stream=JStream(name=subjects.EVENTS_STREAM, declare=False), durable=DURABLE,
        pull_sub=PullSub(batch_size=64, timeout=1.0), ack_policy=AckPolicy.NACK_ON_ERROR,
        config=ConsumerConfig(filter_subjects=subjects.events_of(*(e.__name__ for e in OUTCOMES)),
                              ack_wait=ack_wait_s))
    async def settle(msg: NatsMessage) -> None:
        try:
            event = parse_event(msg.body)
        except ValidationError as exc:  # a malformed outcome can never settle: set it aside
            raw = msg.raw_message
            log.error("malformed outcome at %s set aside: %s", raw.subject, exc)
            await dead_letter(js, DURABLE, raw.subject,
                              raw.metadata.sequence.stream, str(exc), msg.body)
            return
        try:
            lease = await leases.read(event.job_id)
            await asyncio.to_thread(settlement.apply, event, lease)
        except Exception as exc:  # noqa: BLE001 - a ledger outage or an unseen seal
            # Comes again after a pause, not at once: a database outage would
            # otherwise spin through the backlog thousands of times a second.
            log.warning("settling %s %s deferred: %s", type(event).__name__, event.job_id,
                        type(exc).__name__)
            await msg.nack(delay=RETRY_DELAY_S)


async def sweep_expired(store, ledger, js, grace_s: float, stop: asyncio.Event) -> None:
    """Close reservations still pending past deadline + grace: refund and log expiry."""
    while not stop.is_set():
        try:
            now = datetime.now(timezone.utc)
            for job_id in await asyncio.to_thread(views.expired_reservations, store, now, grace_s,
                                                  grace_s * OUTCOME_GRACE_FACTOR):
                resolution = await asyncio.to_thread(ledger.refund, job_id, "expired")
                if not resolution.already:
                    view = await asyncio.to_thread(ledger.reservation, job_id)
                    await publish_event(js, JobExpired(job_id=job_id, zone=view.zone), view.zone)
        except Exception:  # noqa: BLE001 - the next sweep tries again
            log.exception("expiry sweep failed")
        try:
            await asyncio.wait_for(stop.wait(), SWEEP_EVERY_S)
        except asyncio.TimeoutError:
            pass
