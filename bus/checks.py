"""Spot-check requests: a completed job the gate sampled, on its way to the
verifier (``verifier/``).

The request carries the job as its node saw it (no account, no key) and the
completion as the gate logged it; it is queued on ``checks.<the job's zone>`` in the
``CHECKS`` work-queue stream, once per job attempt (the msg id is the
completion's event id). A node never sees whether its job was picked: the
gate decides after the result is in, by a keyed hash the node cannot compute.
"""
from __future__ import annotations

import hashlib
import hmac
import os

from nats.js import JetStreamContext
from bus import subjects
from bus.events import Contract, JobCompleted, JobSubmitted
from bus.grants import NodeGrant
from bus.publish import MSG_ID

DEFAULT_SHARE = 0.02


class CheckRequest(Contract):
    job: JobSubmitted
    completed: JobCompleted


class Sampler:
    """Which completions are checked: every one of a node on probation, else
    ``share`` of them, by a keyed hash of the job id (a repeated report of one
    job gets the same answer from the same gate; the key never leaves it)."""

    def __init__(self, share: float = DEFAULT_SHARE, key: bytes | None = None) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the spot-check share {share} is not between 0 and 1")
        self.share, self._key = share, key or os.urandom(32)

    def wanted(self, grant: NodeGrant, job_id: str) -> bool:
        if grant.status == "probation":
            return True
        digest = hmac.new(self._key, job_id.encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") < self.share * 2**64


async def request_check(js: JetStreamContext, job: JobSubmitted, completed: JobCompleted) -> None:
    """Queue ``completed`` for its spot check; returns once stored."""
    body = CheckRequest(job=job, completed=completed).model_dump_json().encode()
    await js.publish(subjects.check(job.zone), body,  # where the job's content lives
                     headers={MSG_ID: f"check-{completed.event_id}"})
