"""Re-checks after a suspension: when a node is suspended for wrong work, every
completion it logged within ``RECHECK_WINDOW_S`` that was not checked yet is
queued for its check, so each of its consumers whose work was wrong is
refunded (and its RCP revoked), not only those the sample happened to pick.

The verifier reads the log back from the window's start (the jobs'
``JobSubmitted`` and ``JobCompleted``, ``SpotChecked`` the jobs already judged)
with an ephemeral, unacked consumer, and each job's prompt and text from the
content store (a job whose content expired or was erased cannot be checked);
a suspension is rare, so the cost of that read is taken then, not on every job.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from bus import regions, subjects
from bus.content import INPUT, ContentStore
from bus.regions import Layout
from bus.checks import request_check
from bus.events import JobCompleted, JobSubmitted, SpotChecked, parse_event

log = logging.getLogger("inferbus.verifier")
RECHECK_WINDOW_S = 24 * 3600.0  # as long as a check waits in its stream
BATCH = 512


async def recheck_node(js: JetStreamContext, node_id: str, since: datetime | None = None,
                       layout: Layout | None = None) -> int:
    """Queue a check of each unchecked completion ``node_id`` logged since ``since``
    (default: the window); returns how many were queued."""
    since = since or datetime.now(timezone.utc) - timedelta(seconds=RECHECK_WINDOW_S)
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    sub = await js.pull_subscribe("", stream=subjects.EVENTS_STREAM, config=ConsumerConfig(
        filter_subjects=subjects.events_of("JobSubmitted", "JobCompleted", "SpotChecked"),
        deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since.isoformat(),
        ack_policy=AckPolicy.NONE, inactive_threshold=60.0))
    submitted: dict[str, JobSubmitted] = {}
    done: dict[str, tuple[JobSubmitted, JobCompleted]] = {}
    checked: set[tuple[str, int]] = set()
    try:
        seq = 0
        while seq < last:
            try:
                msgs = await sub.fetch(BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                break  # nothing more in the window
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                try:
                    event = parse_event(msg.data)
                except ValidationError:
                    continue  # the audit reports malformed events; nothing to check here
                if isinstance(event, JobSubmitted):
                    submitted[event.job_id] = event
                elif isinstance(event, JobCompleted):
                    job = submitted.pop(event.job_id, None)  # a job completes once
                    if event.node_id == node_id and job is not None:
                        done[event.job_id] = (job, event)
                elif isinstance(event, SpotChecked) and event.node_id == node_id:
                    checked.add((event.job_id, event.attempt))
    finally:
        await sub.unsubscribe()
    queued, store = 0, ContentStore(js, layout or regions.single())
    for job_id, (job, completed) in done.items():
        if (job_id, completed.attempt) in checked:
            continue
        asked, said = await store.get(job.zone, job_id, INPUT), await store.output(job.zone, job_id)
        if asked is None or said is None:
            continue  # its content is gone: nothing left to judge
        # As its node saw it: no account, no key (as the gate queues a check).
        seen = JobSubmitted.model_validate({**job.model_dump(), **json.loads(asked.data),
                                            "account": "-", "key_id": "-", "input_sha256": None})
        await request_check(js, seen, completed.model_copy(update={
            "text": said.text, "finish_reason": said.finish_reason, "vectors": said.vectors}))
        queued += 1
    log.warning("node %s suspended: %d of its completions since %s queued for checks",
                node_id[:12], queued, since.isoformat())
    return queued
