"""Probe jobs: work the network sends a node on probation so it is checked
before it earns RCP, even while no consumer's job reaches it.

A probe is an ordinary job on the node's own queue, as a consumer's would be
(the copy a node sees names no account), drawn from varied prompts and
sampling; the node cannot tell it from paid work. It is logged like any job
(account ``PROBE_ACCOUNT``, never billed) and checked like any job of a node
on probation. One probe at a time per node; an unanswered one is replaced
after its deadline.
"""
from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

from nats.js import JetStreamContext

from bus import subjects
from bus.events import ChatMessage, JobSubmitted, Sampling, new_id
from bus.grants import NodeGrant
from bus.content import put_input
from bus.publish import enqueue_job, publish_event
from workers.embedding_models import EMBEDDING_CATALOG

PROBE_ACCOUNT = "inferbus-probe"
PROBE_DEADLINE_S = 60.0
PROMPTS = (
    "What is the capital of France?", "Name three colours of the rainbow.",
    "Write one sentence about the sea.", "What is two plus two?",
    "Give a synonym for happy.", "Why is the sky blue? Answer briefly.",
    "List two fruits that are red.", "Say hello in Spanish.",
    "What do bees make?", "Describe a cat in five words.",
)


def probe_job(grant: NodeGrant, rng: random.Random) -> JobSubmitted:
    """A job for ``grant``'s own queue, for one of its models (an embedding job for
    a catalog embeddings model, whose node serves no chat)."""
    sampling = Sampling(max_tokens=rng.choice((8, 12, 16)),
                        temperature=rng.choice((0.0, 0.7, 1.0)),
                        seed=rng.randrange(2**31))
    model = rng.choice(grant.models)
    if model in EMBEDDING_CATALOG:
        content = {"kind": "embedding", "sampling": Sampling(max_tokens=1),
                   "inputs": tuple(rng.sample(PROMPTS, rng.choice((1, 2, 3))))}
    else:
        content = {"kind": "chat", "sampling": sampling,
                   "messages": (ChatMessage(role="user", content=rng.choice(PROMPTS)),)}
    return JobSubmitted(
        job_id=new_id(), account=PROBE_ACCOUNT, key_id=PROBE_ACCOUNT, model=model, **content,
        zone=grant.zone, route="zone", queue=subjects.node_queue(grant.node_id, grant.zone),
        deadline=datetime.now(timezone.utc) + timedelta(seconds=PROBE_DEADLINE_S))


class Prober:
    """Keeps one probe in flight for every node on probation."""

    def __init__(self, js: JetStreamContext, rng: random.Random | None = None) -> None:
        self.js, self.rng = js, rng or random.Random()
        self.sent: dict[str, tuple[str, float]] = {}  # node id -> (probe job id, sent at)

    def is_probe(self, job_id: str) -> bool:
        return any(job == job_id for job, _ in self.sent.values())

    def answered(self, node_id: str, job_id: str) -> None:
        if self.sent.get(node_id, ("",))[0] == job_id:
            del self.sent[node_id]

    async def tick(self, grants: list[NodeGrant]) -> int:
        """Send a probe to each node on probation without one in flight; how many."""
        now, count = time.monotonic(), 0
        for grant in grants:
            if grant.status != "probation":
                self.sent.pop(grant.node_id, None)
                continue
            if (sent := self.sent.get(grant.node_id)) and now - sent[1] < PROBE_DEADLINE_S:
                continue
            job = probe_job(grant, self.rng)
            # Logged as any job is (hashes; the prompt in the content store), so
            # nothing on the log tells a probe from a consumer's job.
            await put_input(self.js, job)
            await publish_event(self.js, job.without_content(), job.zone)
            await enqueue_job(self.js, job)
            self.sent[grant.node_id] = (job.job_id, now)
            count += 1
        return count
