"""Leases as the gate grants them: a node runs a job only under a lease the
gate took for it, after checking the job is the node's to run.

A node asks on ``node.<its id>.lease`` (:class:`~bus.node_messages.LeaseAsk`)
with the JOBS stream sequence of the delivery it holds. The gate reads that
message itself: its subject names the queue and model, which must be in the
node's grant, and its job id must be the one asked for. Only then does it take
the lease in the ``claims`` bucket (``bus.leases``: compare-and-set, one holder
at a time), tell the API instance waiting on the job who holds it (``Started``
with the node id, so the API takes live text from that node only), log
``JobStarted`` and answer. The attempt is the network's count, taken from the
delivery's ack subject, and grows with every takeover.

A strict-residency job (``job.strict``) goes only to a node whose location the
network believes (``NodeGrant.location_believed``): any other node is told to
``wait``, so the delivery goes back to the queue for a node of the zone whose
location checks out. It is no strike: the node asked for a job of its own queue.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import ValidationError

from bus import regions, subjects
from bus.events import JobStarted, JobSubmitted
from bus.grants import NodeGrant
from bus.leases import HeldLease, Leases, Skip, parse_lease
from bus.node_messages import LeaseAnswer, LeaseAsk
from bus.publish import publish_event
from bus.regions import Layout
from bus.replies import Started

log = logging.getLogger("inferbus.gate")
UNLOCATED_WAIT_S = 5.0  # a strict job a node may not run: back to the queue for this long
OTHER_ROOT_WAIT_S = 1.0  # a job of a model whose published weights the node does not report


class NotTheirs(Exception):
    """A lease asked for a job the node may not run (or that does not exist)."""


@dataclass
class Held:
    """A lease the gate holds for a node, with what it needs to check the outcome."""

    node_id: str
    lease: HeldLease
    job: JobSubmitted
    queue: str  # the queue of the delivery the node runs
    ack: str | None  # that delivery's ack subject
    since: float = field(default_factory=time.monotonic)
    started: asyncio.Future | None = None  # the JobStarted publish


class Leasing:
    """Takes, renews and seals leases on nodes' behalf; remembers what it holds."""

    def __init__(self, nc: Client, js: JetStreamContext, leases: Leases,
                 layout: Layout | None = None, check_locations: bool = False) -> None:
        self.nc, self.js, self.leases = nc, js, leases
        self.layout = layout or regions.single()
        # Whether the network checks locations (bus.node_location.checks_on): then only a
        # verified location takes strict jobs; otherwise only a failed one is refused.
        self.check_locations = check_locations
        self.held: dict[str, Held] = {}  # by job id
        # Why a node may not take a model's jobs (its reported root is not a published
        # one: bus.model_book); None: it may. Unset: any node may.
        self.model_refusal: Callable[[str, str], str | None] = lambda node, model: None

    async def job_at(self, message: int, stream: str) -> tuple[str, str, JobSubmitted]:
        """(queue, model, job) of jobs stream ``stream``'s message ``message``; the
        message must be where the layout keeps its queue."""
        if stream not in self.layout.job_streams():
            raise NotTheirs(f"{stream} is not a jobs stream")
        try:
            raw = await self.js.get_msg(stream, message, direct=True)
        except Exception as exc:  # noqa: BLE001 - gone, or never there
            raise NotTheirs(f"no queued job at {message}") from exc
        found = subjects.queue_of(raw.subject or "")
        if found is None or self.layout.queue_stream(found[0]) != stream:
            raise NotTheirs(f"message {message} is not a job")
        try:
            job = JobSubmitted.model_validate_json(raw.data or b"")
        except ValidationError as exc:
            raise NotTheirs(f"message {message} is not a readable job") from exc
        return found[0], found[1], job

    async def acquire(self, grant: NodeGrant, ask: LeaseAsk) -> LeaseAnswer:
        stream = subjects.acked_stream(ask.ack) or subjects.JOBS_STREAM
        queue, model, job = await self.job_at(ask.message, stream)
        if job.job_id != ask.job_id or not grant.may_take(queue, model):
            raise NotTheirs(f"job {ask.job_id} on {queue} ({model}) is not this node's")
        if job.strict and not grant.location_believed(self.check_locations):
            return LeaseAnswer(action="wait", delay_s=UNLOCATED_WAIT_S,
                               reason=f"a strict-residency job needs a verified location; "
                                      f"this node's is {grant.location}")
        if why := self.model_refusal(grant.node_id, model):
            return LeaseAnswer(action="wait", delay_s=OTHER_ROOT_WAIT_S, reason=why)
        ack = ask.ack if _ack_of(ask.ack, stream, queue, model, ask.message) else None
        attempt = _delivered(ack) or ask.attempt
        got = await self.leases.acquire(job.job_id, grant.node_id, attempt, ask.message, stream)
        if isinstance(got, Skip):
            return LeaseAnswer(action=got.action, delay_s=got.delay_s)
        held = self.held[job.job_id] = Held(grant.node_id, got, job, queue, ack)
        notice = Started(job_id=job.job_id, zone=grant.zone, attempt=got.lease.attempt,
                         node_id=grant.node_id)
        if job.reply_to:
            await self.nc.publish(job.reply_to, notice.model_dump_json().encode())
        held.started = asyncio.ensure_future(publish_event(self.js, JobStarted(
            job_id=job.job_id, node_id=grant.node_id, zone=grant.zone,
            attempt=got.lease.attempt), job.zone))
        return LeaseAnswer(action="run", took_over=got.took_over, runs=got.lease.runs,
                           attempt=got.lease.attempt)

    async def renew(self, grant: NodeGrant, ask: LeaseAsk) -> LeaseAnswer:
        held = await self.find(ask.job_id)
        stream = subjects.acked_stream(ask.ack) or subjects.JOBS_STREAM
        if held is None or held.node_id != grant.node_id or held.lease.lease.done or \
                (held.lease.lease.stream, held.lease.lease.message) != (stream, ask.message):
            return LeaseAnswer(action="stop", reason="not this node's lease")
        if not await self.leases.renew(held.lease) and not (
                await self._current(held) and await self.leases.renew(held.lease)):
            self.held.pop(ask.job_id, None)
            return LeaseAnswer(action="stop", reason="taken over")
        return LeaseAnswer(action="run", attempt=held.lease.lease.attempt)

    async def find(self, job_id: str) -> Held | None:
        """The lease of ``job_id`` as the gate holds it; read back from the bucket
        (and the job from its queue) when this gate did not take it (a restart)."""
        if (held := self.held.get(job_id)) is not None:
            return held
        try:
            entry = await self.leases.kv.get(job_id)
        except KeyNotFoundError:
            return None
        lease = parse_lease(entry.value)
        if lease is None:
            return None
        try:
            queue, _, job = await self.job_at(lease.message, lease.stream)
        except NotTheirs:
            return None
        held = Held(lease.node_id, HeldLease(job_id, lease, entry.revision, lease.runs > 1),
                    job, queue, None)
        return self.held.setdefault(job_id, held)

    async def seal(self, held: Held, outcome: str) -> bool:
        """Seal the lease for its holder's ``outcome`` (a digest); False when it is no
        longer theirs."""
        return await self.leases.seal(held.lease, outcome) or (
            await self._current(held) and await self.leases.seal(held.lease, outcome))

    async def release(self, held: Held) -> bool:
        """End the lease of a dead holder; False when it is sealed or taken over."""
        return await self.leases.release(held.lease) or (
            await self._current(held) and await self.leases.release(held.lease))

    async def _current(self, held: Held) -> bool:
        """Catch up with a change another gate made to the same lease (gates share
        the work): True when it is still the same holder's, same run, unsealed."""
        try:
            entry = await self.leases.kv.get(held.lease.job_id)
        except KeyNotFoundError:
            return False
        lease, mine = parse_lease(entry.value), held.lease.lease
        if lease is None or lease.done or (lease.node_id, lease.attempt, lease.message) != (
                mine.node_id, mine.attempt, mine.message) or lease.until <= 0:
            return False
        held.lease.lease, held.lease.revision = lease, entry.revision
        return True

    def forget(self, job_id: str) -> None:
        self.held.pop(job_id, None)


def _ack_of(ack: str | None, stream: str, queue: str, model: str, message: int) -> bool:
    """Whether ``ack`` is the ack subject of ``stream``'s message ``message``
    delivered by the consumer of (``queue``, ``model``)."""
    if not ack:
        return False
    tokens = ack.split(".")
    consumer = tokens[3] if len(tokens) == 9 else tokens[5] if len(tokens) in (11, 12) else None
    return (subjects.acked_stream(ack) == stream
            and consumer == subjects.consumer_name(queue, model)
            and subjects.acked_stream_sequence(ack) == message)


def _delivered(ack: str | None) -> int | None:
    """The delivery count an ack subject names (how often the job was handed out)."""
    if not ack:
        return None
    tokens = ack.split(".")
    return int(tokens[4] if len(tokens) == 9 else tokens[6])
