"""Settlement: each job outcome on the log becomes one ledger resolution.

A durable pull consumer reads the four terminal job events and drives the
ledger, a pull's worth at a time in one ledger save (group commit); the
ledger resolves a reservation at most once, so a redelivered or repeated
outcome changes nothing. A verified ``JobCompleted``
is charged its counted usage and earns its node's operator RCP (and the
referrer of its account, if any, a share: ``ledger.referrals``); an
unverifiable one, a failure, an expiry or a cancel before any output is
refunded in full; a cancel charges what was produced. What no outcome ever
resolves, :mod:`ledger.expiry` refunds. A completion of a node on probation
earns no RCP. A failed spot check (``SpotChecked``, from ``verifier/``) is
compensated: the consumer's debit reimbursed, the operator's RCP revoked
(and the referral reward).

Only services write the log: a node's outcome is there because the gate
(``gate/``) checked it against the job's lease and the node's grant, sealed the
lease and recounted its usage. So a logged node outcome settles whenever
settlement gets to it, however long after (the lease may have aged out of the
``claims`` bucket by then: completed work is never forfeited). An outcome
without a node (the API's cancel of a queued job) counts only while no node
holds the job. An outcome settlement cannot apply at all is dead-lettered,
and the others go on.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from bus import subjects
from bus.events import (SETTLED_EVENTS, Event, JobCancelled, JobCompleted, JobExpired,
                        JobFailed, SpotChecked, parse_event)
from bus.leases import Lease, Leases
from bus.partitions import slots_of
from bus.pricing import Pricing
from bus.publish import dead_letter
from bus.signing import verify_result
from bus.streams import batches, patiently
from ledger.commands import Refund, Resolve, Revoke, Settle
from ledger.outcomes import UnknownReservation

log = logging.getLogger("inferbus.settlement")
DURABLE = "settlement"
OUTCOMES = SETTLED_EVENTS
RETRY_DELAY_S = 1.0
BATCH = 256  # outcomes per pull at most: one ledger save settles them all (bigger when behind)
POLL_S = 1.0  # how long an idle pull waits before looking at `stop` again
LINGER_S = 0.02  # a settlement is at most this much later for batching a quiet network


class Poison(Exception):
    """An outcome that can never settle (settlement raised on it): set aside."""


def needs_lease(event: Event) -> bool:
    """Whether settling ``event`` depends on the job's lease: only an outcome
    without a node does (the gate checked every node's outcome before logging it)."""
    return not isinstance(event, JobExpired) and getattr(event, "node_id", None) is None


def admits(event: Event, lease: Lease | None) -> bool:
    """Whether ``event`` may settle its job, given the job's lease (read only when
    :func:`needs_lease`). An expiry comes from the network's own sweep or the gate's
    clock; a node's outcome was checked by the gate against its lease before it
    was logged; an outcome without a node counts only while no node holds the job."""
    return not needs_lease(event) or lease is None


class Settlement:
    """The settlement policy: job outcome -> ledger command."""

    def __init__(self, ledger, pricing: Pricing) -> None:
        self.ledger, self.pricing = ledger, pricing

    def apply(self, event: Event, lease: Lease | None = None):
        """Resolve the job's reservation; None when the job has none (unbilled) or the
        outcome is not its holder's (see ``admits``)."""
        outcome = self.apply_many([(event, lease)])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def apply_many(self, outcomes: Sequence[tuple[Event, Lease | None]]) -> list:
        """Resolve each outcome as :meth:`apply` would, in order, in ONE ledger save.
        Per outcome: its Resolution, None, or a :class:`Poison` that sets it aside
        alone; a ledger error (an outage) raises for all."""
        results: list = [None] * len(outcomes)
        commands: dict[int, Resolve] = {}
        for i, (event, lease) in enumerate(outcomes):
            if not admits(event, lease):
                log.warning("%s for %s while a node holds the job set aside",
                            type(event).__name__, event.job_id)
                continue
            if isinstance(event, SpotChecked) and event.passed:
                continue  # nothing to settle: the job's own outcome did
            try:
                commands[i] = self._command(event)
            except Exception as exc:  # noqa: BLE001 - this one can never settle
                results[i] = Poison(f"{type(exc).__name__}: {exc}")
        resolved = self.ledger.resolve_many(list(commands.values())) if commands else []
        for i, outcome in zip(commands, resolved, strict=True):
            if isinstance(outcome, UnknownReservation):  # a job that was never billed
                event = outcomes[i][0]
                log.warning("no reservation for %s %s", type(event).__name__, event.job_id)
            else:
                results[i] = outcome
        return results

    def _command(self, event: Event) -> Resolve:
        if isinstance(event, SpotChecked):
            return Revoke(event.job_id, event.node_id, f"spot check failed: {event.reason}"[:500])
        if isinstance(event, JobCompleted):
            if not verify_result(event):
                return Refund(event.job_id, "result signature invalid")
            # A completed job also earns its account's referrer, if any, a share.
            return Settle(event.job_id, self.pricing.cost(event.model, event.usage),
                          operator=event.operator, node_id=event.node_id,
                          points=0 if event.probation else
                          self.pricing.points(event.usage.completion_tokens, event.tier),
                          referral_rate=self.pricing.referral_rate())
        if isinstance(event, JobCancelled) and event.usage and event.model:
            return Settle(event.job_id, self.pricing.cost(event.model, event.usage))
        reason = {JobFailed: "failed", JobExpired: "expired"}.get(type(event), "cancelled")
        return Refund(event.job_id, reason)


def durable(shard: int, shards: int) -> str:
    """Shard ``shard``'s consumer: ``settlement`` for a ledger of one shard."""
    return DURABLE if shards == 1 else f"{DURABLE}-{shard}"


async def consume(js: JetStreamContext, settlement: Settlement, leases: Leases,
                  stop: asyncio.Event, ack_wait_s: float = 30.0, shard: int = 0,
                  shards: int = 1) -> None:
    """Settle outcomes from the durable consumer until ``stop`` is set, a pull's
    worth at a time (see :func:`settle_batch`): of ledger shard ``shard``'s slots
    only, when there are several (``bus.partitions``)."""
    name = durable(shard, shards)
    config = ConsumerConfig(
        filter_subjects=subjects.settled_by_shard(
            [e.__name__ for e in OUTCOMES], slots_of(shard, shards) if shards > 1 else None),
        ack_wait=ack_wait_s, durable_name=name)
    # Create or update: a consumer made by an older version keeps its position and
    # takes today's filter (pull_subscribe alone would reuse the old one as is).
    await patiently(lambda: js.add_consumer(subjects.EVENTS_STREAM, config),
                    "settlement consumer")
    # Patient: a cluster may be electing the stream's leader just now.
    sub = await patiently(lambda: js.pull_subscribe(
        "", durable=name, stream=subjects.EVENTS_STREAM, config=config), "settlement consumer")
    try:
        # A fetch returns as soon as anything is there; a few outcomes wait LINGER_S
        # for others, so a quiet network does not pay a ledger commit per job.
        async for msgs in batches(sub, stop, BATCH, "settlement", POLL_S, linger_s=LINGER_S):
            try:
                await settle_batch(js, settlement, leases, msgs)
            except Exception:  # noqa: BLE001 - unacked messages come again after ack_wait
                log.exception("settling a batch of %d failed", len(msgs))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def settle_batch(js: JetStreamContext, settlement: Settlement, leases: Leases,
                       msgs: Sequence[Msg]) -> None:
    """Settle one pull's messages: leases read concurrently, every admitted
    outcome resolved in one ledger save, then each message acked on its own.
    A malformed one is dead-lettered and acked; one that cannot settle yet (an
    unseen seal, a lease read failing, the ledger down) is nacked to come again
    after ``RETRY_DELAY_S`` while the others ack. Outcomes of one job resolve
    in message order, as one at a time: the first admitted one wins."""
    parsed: list[tuple[Msg, Event]] = []
    for msg in msgs:
        try:
            parsed.append((msg, parse_event(msg.data)))
        except ValidationError as exc:  # a malformed outcome can never settle: set it aside
            await _set_aside(js, msg, f"malformed: {exc}")

    async def lease_of(event: Event) -> Lease | None:
        return await leases.read(event.job_id) if needs_lease(event) else None
    read = await asyncio.gather(*(lease_of(e) for _, e in parsed), return_exceptions=True)
    later: list[tuple[Msg, Event, BaseException]] = []
    ready: list[tuple[Msg, Event, Lease | None]] = []
    for (msg, event), lease in zip(parsed, read, strict=True):
        if isinstance(lease, BaseException):
            later.append((msg, event, lease))
        else:
            ready.append((msg, event, lease))
    try:
        outcomes = await asyncio.to_thread(settlement.apply_many,
                                           [(event, lease) for _, event, lease in ready])
    except Exception as exc:  # noqa: BLE001 - a ledger outage: every one comes again
        outcomes = [exc] * len(ready)
    for (msg, event, _), outcome in zip(ready, outcomes, strict=True):
        if isinstance(outcome, Poison):
            await _set_aside(js, msg, str(outcome))
        elif isinstance(outcome, Exception):
            later.append((msg, event, outcome))
        else:
            await msg.ack()
    for msg, event, exc in later:
        # Comes again after a pause, not at once: a database outage would
        # otherwise spin through the backlog thousands of times a second.
        log.warning("settling %s %s deferred: %s", type(event).__name__, event.job_id,
                    type(exc).__name__)
        await msg.nak(delay=RETRY_DELAY_S)


async def _set_aside(js: JetStreamContext, msg: Msg, reason: str) -> None:
    """Dead-letter an outcome that can never settle, then ack it: the consumer goes on."""
    log.error("outcome at %s set aside: %s", msg.subject, reason[:500])
    try:
        await dead_letter(js, DURABLE, msg.subject, msg.metadata.sequence.stream, reason,
                          msg.data)
    except Exception:  # noqa: BLE001 - keep it until it is set aside
        log.warning("dead-lettering %s failed; retrying", msg.subject, exc_info=True)
        await msg.nak(delay=RETRY_DELAY_S)
    else:
        await msg.ack()
