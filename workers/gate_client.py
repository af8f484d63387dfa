"""The node's side of the gate (``gate/``): it asks for leases and reports
outcomes as requests on its own ``node.<id>.…`` subjects, and pings its
liveness. It never writes the claims or the log itself; its NATS user may not.
"""
from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from pydantic import ValidationError

from bus import subjects
from bus.node_messages import (Cancelled, Completed, Expired, Failed, LeaseAnswer, LeaseAsk,
                               OutcomeAnswer)

log = logging.getLogger("inferbus.worker")
ASK_TIMEOUT_S = 2.0
PING_S = 0.1  # gate/liveness.py: silent for LAPSE_S while holding a lease is dead


class GateClient:
    def __init__(self, nc: Client, node_id: str) -> None:
        self.nc, self.node_id = nc, node_id
        self._lease = subjects.node_says(node_id, subjects.NODE_LEASE)
        self._outcome = subjects.node_says(node_id, subjects.NODE_OUTCOME)
        self._alive = subjects.node_says(node_id, subjects.NODE_ALIVE)

    async def lease(self, op: str, msg: Msg, job_id: str) -> LeaseAnswer:
        """Ask the gate to take (``acquire``) or keep (``renew``) the lease of the job
        delivered as ``msg``; a gate that does not answer means wait and try again."""
        ask = LeaseAsk(op=op, job_id=job_id, attempt=msg.metadata.num_delivered,
                       message=msg.metadata.sequence.stream, ack=msg.reply)
        try:
            answer = await self.nc.request(self._lease, ask.model_dump_json().encode(),
                                           timeout=ASK_TIMEOUT_S)
            return LeaseAnswer.model_validate_json(answer.data)
        except (NatsError, asyncio.TimeoutError, ValidationError) as exc:
            log.warning("gate did not answer a lease %s for job %s (%s)", op, job_id,
                        type(exc).__name__)
            return LeaseAnswer(action="wait", delay_s=1.0, reason="no answer from the gate")

    async def report(self, outcome: Completed | Failed | Cancelled | Expired) -> OutcomeAnswer:
        """Report an outcome until the gate answers: the lease is the node's while it
        waits, and the gate logs a repeated report only once."""
        delay = 0.2
        while True:
            try:
                answer = await self.nc.request(self._outcome, outcome.model_dump_json().encode(),
                                               timeout=ASK_TIMEOUT_S)
                return OutcomeAnswer.model_validate_json(answer.data)
            except (NatsError, asyncio.TimeoutError, ValidationError) as exc:
                log.warning("reporting %s of job %s failed (%s); trying again", outcome.kind,
                            outcome.job_id, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def ping(self, stop: asyncio.Event) -> None:
        """Tell the gate this node lives, every ``PING_S``, until ``stop``."""
        while not stop.is_set():
            try:
                await self.nc.publish(self._alive, b"")
            except Exception:  # noqa: BLE001 - reconnecting: a missed ping is a missed ping
                pass
            try:
                await asyncio.wait_for(stop.wait(), PING_S)
            except asyncio.TimeoutError:
                pass
