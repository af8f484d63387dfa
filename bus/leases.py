"""Job leases: which node may run a job now, and whose outcome counts.

A lease lives in the ``claims`` KV bucket under the job id. The node that
holds it renews it while it works; every change is a compare-and-set on the
entry's revision, so exactly one node holds a job at a time. A node whose
lease ran out (it paused, or lost the network) and was taken over can no
longer renew or *seal* it; the worker seals before it publishes an outcome,
and settlement pays only the outcome of the node that sealed. JetStream alone
cannot fence a late worker: its late ack would settle another worker's
redelivery (nats-server issue 4786), so a worker that lost its lease never
acks either.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import Field, ValidationError

from bus.bounds import Attempt, Hash, Id, Name
from bus.events import Contract


class Lease(Contract):
    """The claims entry of one job."""

    node_id: Id
    attempt: Attempt  # the holder's run: the delivery count, raised on every takeover
    message: int = Field(ge=0)  # the jobs stream sequence of the delivery the holder runs
    stream: Name = "JOBS"  # that jobs stream (one per region, and the global pool's)
    until: float  # unix time the lease runs out unless renewed
    done: bool = False  # sealed: the holder has an outcome and is publishing it
    runs: int = Field(default=1, ge=0, le=1000)  # nodes that started the job (not passed on)
    outcome: Hash = ""  # sealed: the digest of the holder's report, the one outcome it may log
    sealed_at: float = 0.0


@dataclass
class HeldLease:
    """A lease this node holds, with the revision its next change must name."""

    job_id: str
    lease: Lease
    revision: int
    took_over: bool  # another node (or an earlier run of this one) held it before


@dataclass(frozen=True)
class Skip:
    """Not this node's to run: ``discard`` a copy whose job another holds or
    held, or ``wait`` and see this same message again after ``delay_s``."""

    action: Literal["discard", "wait"]
    delay_s: float = 0.0


class Leases:
    """Acquire, renew, seal, release and read job leases in the ``claims`` bucket
    (the gate does, on nodes' behalf: ``gate/leasing.py``)."""

    def __init__(self, kv: KeyValue, lease_s: float, clock=time.time) -> None:
        self.kv, self.lease_s, self.clock = kv, lease_s, clock

    async def acquire(self, job_id: str, node_id: str, attempt: int,
                      message: int, stream: str = "JOBS") -> HeldLease | Skip:
        mine = Lease(node_id=node_id, attempt=attempt, message=message, stream=stream,
                     until=self.clock() + self.lease_s)
        try:
            revision = await self.kv.create(job_id, mine.model_dump_json().encode())
            return HeldLease(job_id, mine, revision, took_over=False)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:  # its entry aged out meanwhile: nothing holds it
            return Skip("wait", 0.5)
        current = parse_lease(entry.value)
        if current is not None:
            if current.done:
                return Skip("discard")  # ran (or is being published) already
            same = (current.stream, current.message) == (stream, message)  # the same copy
            ours = current.node_id == node_id and same
            live = current.until > self.clock()
            if live and not ours:
                # Another node works on it. Its own message comes back if it dies;
                # any other copy of the job can go.
                if not same:
                    return Skip("discard")
                return Skip("wait", current.until - self.clock() + 0.5)
        # A takeover is a new attempt, whatever the delivery count of the copy it
        # came on: live text and signatures of the old holder must not pass for it.
        mine = mine.model_copy(update={
            "runs": current.runs + 1 if current is not None else 1,
            "attempt": max(attempt, current.attempt + 1) if current is not None else attempt})
        try:
            revision = await self.kv.update(job_id, mine.model_dump_json().encode(),
                                            last=entry.revision)
        except KeyWrongLastSequenceError:
            return Skip("wait", self.lease_s)  # someone else took it over just now
        return HeldLease(job_id, mine, revision, took_over=True)

    async def renew(self, held: HeldLease) -> bool:
        """Extend the lease; False when it was taken over (this node must stop)."""
        lease = held.lease.model_copy(update={"until": self.clock() + self.lease_s})
        return await self._change(held, lease)

    async def seal(self, held: HeldLease, outcome: str = "") -> bool:
        """Mark the job done by this holder, with the digest of its ``outcome``; False
        when the lease is no longer ours."""
        return await self._change(held, held.lease.model_copy(update={
            "done": True, "outcome": outcome, "sealed_at": self.clock()}))

    async def release(self, held: HeldLease) -> bool:
        """End the holder's lease now (it died), so the next node takes over at once."""
        return await self._change(held, held.lease.model_copy(update={"until": 0.0}))

    async def _change(self, held: HeldLease, lease: Lease) -> bool:
        try:
            held.revision = await self.kv.update(held.job_id, lease.model_dump_json().encode(),
                                                 last=held.revision)
        except KeyWrongLastSequenceError:
            return False
        held.lease = lease
        return True

    async def read(self, job_id: str) -> Lease | None:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        return parse_lease(entry.value)


def parse_lease(value: bytes | None) -> Lease | None:
    try:
        return Lease.model_validate_json(value or b"")
    except ValidationError:
        return None  # not a lease (a corrupt entry): whoever updates it first takes it
