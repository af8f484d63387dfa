"""Moving a job on when its queue does not start it in time.

A zone job nobody in the zone has claimed within the zone wait is escalated
to global; a job sent to chosen nodes moves to the next node when one has not
claimed it within the node wait. Each move logs ``JobEscalated`` (with an id
derived from the job and the target, so a repeat is deduplicated) and puts a
copy of the job on the next queue; the ``claims`` bucket lets exactly one
copy run. Strict-residency jobs have no chain: they wait in their zones.
"""
from __future__ import annotations

import asyncio
import logging
import uuid

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from bus import subjects
from bus.events import JobEscalated, JobSubmitted
from bus.publish import enqueue_job, publish_event
from bus.streams import has_key

log = logging.getLogger("inferbus.api")
_NS = uuid.UUID("0b8f4f57-3f4e-4e55-a3f6-5b1d1a7f2c10")


class Escalator:
    def __init__(self, js: JetStreamContext, claims: KeyValue, zone_wait_s: float,
                 node_wait_s: float) -> None:
        self._js, self._claims = js, claims
        self._zone_wait, self._node_wait = zone_wait_s, node_wait_s
        self._tasks: set[asyncio.Task] = set()

    def watch(self, job: JobSubmitted, chain: list[str]) -> None:
        """Escalate ``job`` along ``chain`` (the queues after its first) until claimed."""
        if not chain:
            return
        task = asyncio.get_running_loop().create_task(self._run(job, chain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wait(self, queue: str) -> float:
        return self._node_wait if subjects.is_node_queue(queue) else self._zone_wait

    async def _run(self, job: JobSubmitted, chain: list[str]) -> None:
        current = job.first_queue()
        try:
            for target in chain:
                await asyncio.sleep(self._wait(current))
                if await has_key(self._claims, job.job_id):
                    return
                reason = "no node started it in time" if subjects.is_node_queue(current) else \
                    f"no {current} worker started it within {self._zone_wait:g} s"
                event = JobEscalated(event_id=uuid.uuid5(_NS, f"{job.job_id}|{target}").hex,
                                     job_id=job.job_id, zone=job.zone, from_queue=current,
                                     to=target, reason=reason)
                await publish_event(self._js, event, job.zone)
                await enqueue_job(self._js, job, queue=target)
                current = target
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the job stays queued where it is
            log.exception("escalating job %s failed", job.job_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

