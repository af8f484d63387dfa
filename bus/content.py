"""The content store: a job's prompt and result, apart from the immutable log.

The log keeps what the audit needs forever (ids, hashes, usage, signatures,
money). What a consumer asked and what a node answered is content: it is kept
in the ``CONTENT`` stream of the region hosting the job's zone
(``content.<zone>.<job>.<part>``), for the retention period
(``INFERBUS_CONTENT_RETENTION_S``, default 7 days), and can be erased: by its
owner (``DELETE /v1/jobs/{id}/content``) or for a whole account
(``inferbus accounts forget``). An erased job leaves a small ``erased`` marker,
so a reader can tell erased from expired.

Parts: ``input`` (the request: model, kind, messages or prompt, sampling),
``output`` (``{"text", "finish_reason"}``), ``evidence`` (what a spot check
compared). Writers are services only (API, gate, verifier): a node's user may
not publish here.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from bus import subjects
from bus.events import JobCompleted, JobSubmitted
from bus.publish import MSG_ID
from bus.regions import Layout
from bus.sampling import TokenLogprob
from bus.stream_configs import DEFAULT_RETENTION_S
from bus.vectors import Vectors

Part = Literal["input", "output", "evidence", "erased"]
INPUT, OUTPUT, EVIDENCE, ERASED = "input", "output", "evidence", "erased"


@dataclass(frozen=True)
class Kept:
    """One part as stored, and when it was stored (it expires a retention later)."""

    data: bytes
    stored_at: datetime
    seq: int


async def put(js: JetStreamContext, zone: str, job_id: str, part: Part, data: bytes,
              msg_id: str | None = None) -> None:
    """Store one part; returns once stored (in the region hosting ``zone``)."""
    headers = {MSG_ID: msg_id} if msg_id else None
    await js.publish(subjects.content(zone, job_id, part), data, headers=headers)


async def put_input(js: JetStreamContext, job: JobSubmitted) -> None:
    """The job's request, as its node will see it."""
    asked = {"model", "kind", "messages", "prompt", "sampling"}
    body = job.model_dump_json(include=asked | ({"inputs"} if job.inputs is not None else set()))
    await put(js, job.zone, job.job_id, INPUT, body.encode(), f"in-{job.event_id}")


async def put_output(js: JetStreamContext, zone: str, completed: JobCompleted,
                     tools: bool = False) -> None:
    """A completed job's text, under its job's zone (where its input is); its
    logprobs when it asked for them, and whether its text is a tool call."""
    kept = {"text": completed.text, "finish_reason": completed.finish_reason}
    if completed.vectors is not None:  # an embedding job's result
        kept["vectors"] = completed.vectors.model_dump()
    if completed.logprobs is not None:
        kept["logprobs"] = [p.model_dump(mode="json") for p in completed.logprobs]
    if tools:
        kept["tools"] = True
    body = json.dumps(kept)
    await put(js, zone, completed.job_id, OUTPUT, body.encode(), f"out-{completed.event_id}")


@dataclass(frozen=True)
class Output:
    """A completed job's result as kept, and when it will be gone."""

    text: str
    finish_reason: str
    expires_at: datetime | None  # None: kept on the log (written before the content store)
    vectors: Vectors | None = None  # an embedding job's result
    logprobs: tuple[TokenLogprob, ...] | None = None  # when the job asked for them
    tools: bool = False  # the text is a tool call (the job ran under a tool grammar)


class ContentStore:
    """Reads and erases the content of jobs across the regions of ``layout``;
    content is kept ``retention_s`` (the content streams' max age)."""

    def __init__(self, js: JetStreamContext, layout: Layout,
                 retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.js, self.layout, self.retention = js, layout, timedelta(seconds=retention_s)

    def stream_of(self, zone: str) -> str:
        return self.layout.content_stream(self.layout.region_of(zone))

    async def get(self, zone: str, job_id: str, part: Part) -> Kept | None:
        """The part, or None when it expired, was erased or never was."""
        try:
            msg = await self.js.get_last_msg(self.stream_of(zone),
                                             subjects.content(zone, job_id, part), direct=True)
        except NotFoundError:
            return None
        stamp = (msg.headers or {}).get("Nats-Time-Stamp")
        stored = _parse_time(stamp) if stamp else datetime.now(timezone.utc)
        return Kept(msg.data or b"", stored, msg.seq or 0)

    async def output(self, zone: str, job_id: str) -> Output | None:
        """A completed job's result, None once its content is gone."""
        kept = await self.get(zone, job_id, OUTPUT)
        if kept is None:
            return None
        body = json.loads(kept.data)
        vectors = Vectors.model_validate(body["vectors"]) if body.get("vectors") else None
        logprobs = tuple(TokenLogprob.model_validate(p) for p in body["logprobs"]) \
            if body.get("logprobs") is not None else None
        return Output(body["text"], body["finish_reason"], kept.stored_at + self.retention,
                      vectors, logprobs, bool(body.get("tools")))

    async def erase(self, jobs: list[tuple[str, str]]) -> int:
        """Erase every part of each ``(zone, job_id)``, leaving an ``erased`` marker;
        returns how many jobs still had content. Each message is deleted with
        JetStream's secure erase (its bytes overwritten in the store), not only
        marked deleted."""
        erased = 0
        for zone, job_id in jobs:
            had = False
            for part in (INPUT, OUTPUT, EVIDENCE):
                kept = await self.get(zone, job_id, part)
                if kept is not None:
                    await self.js.delete_msg(self.stream_of(zone), kept.seq)
                    had = True
            await put(self.js, zone, job_id, ERASED, b"{}")
            erased += had
        return erased

    async def erased(self, zone: str, job_id: str) -> bool:
        return await self.get(zone, job_id, ERASED) is not None


def _parse_time(stamp: str) -> datetime:
    """JetStream's ``Nats-Time-Stamp`` (RFC 3339 with nanoseconds) -> a datetime."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head).replace(
        microsecond=int((frac + "000000")[:6]) if frac else 0, tzinfo=timezone.utc)
