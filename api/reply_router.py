"""Routes the live replies of workers to the request that waits for each job.

Two core-NATS subscriptions per API instance: ``replies.<instance>``, where
only services publish (the gate's ``Started``, naming the node it leased the
job to, and the verified ``Finished``), and ``node.*.live.<instance>``, where
each node publishes under its own id (its ``Delta`` text and ``Resume``
requests). A node's text or resume request counts only while that node holds
the job's lease, for the attempt it holds: another node, whatever it sends,
reaches no caller and learns no caller's text. Live text is the holder's word
until its result is checked: a holder whose signed, logged text does not begin
with what it streamed has lied to the caller, and the API logs a
``NodeStrike`` against it.

Each waiting request opens a :class:`JobReplies` for its job *before* the job
is queued, so no reply can arrive unrouted, and closes it when it stops
reading (whoever holds it: the sync answer, or the SSE stream it was handed
to). The router keeps the text each job has streamed so far, so a node taking
a job over mid-stream continues from exactly what the caller has (``Resume``),
with nothing twice and nothing missing.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from nats.aio.client import Client
from nats.aio.msg import Msg
from pydantic import ValidationError

from api.errors import APIError
from bus import subjects
from bus.events import JobCompleted, NodeStrike, new_id, output_hash
from bus.publish import publish_event
from bus.replies import Delta, Finished, Resume, Resumed, Started, parse_reply

log = logging.getLogger("inferbus.api")


@dataclass
class Watch:
    """One waiting job: its reply queue, the output text received so far (contiguous
    from the start) and the attempt whose text counts."""

    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    text: str = ""
    attempt: int = 1
    gapped: bool = False  # a live delta was lost: the outcome's full text fills the gap
    holder: str | None = None  # the node the gate leased the job to, for ``attempt``
    since: int = 0  # how much of ``text`` was there when the holder took the job
    resumed: bool = False  # the holder continues from ``text`` (it asked, it was told)

    def holds(self, node: str | None, attempt: int) -> bool:
        """Whether ``node`` holds the job's lease for ``attempt`` (as the gate said)."""
        return node is not None and node == self.holder and attempt == self.attempt

    def leased(self, started: Started) -> bool:
        """The gate leased the job (again): text counts from that node only. False
        for a notice older than the lease already known."""
        if started.attempt < self.attempt or started.node_id is None:
            return False
        if started.attempt > self.attempt:
            self.gapped = False  # the new holder resumes from the text here
        if (started.node_id, started.attempt) != (self.holder, self.attempt):
            self.since, self.resumed = len(self.text), False
        self.attempt, self.holder = started.attempt, started.node_id
        return True

    def strayed(self, event) -> bool:
        """Whether ``event`` (the checked outcome) shows that its node streamed text
        it did not return: all of the text here is the holder's own (it streamed it,
        or resumed from it), yet its result does not begin with it."""
        return (isinstance(event, JobCompleted) and event.node_id == self.holder
                and event.attempt == self.attempt and (self.since == 0 or self.resumed)
                and not event.text.startswith(self.text))

    def accept(self, delta: Delta) -> Delta | None:
        """The part of ``delta`` that extends the text, or None (stale, repeated, gap)."""
        if delta.attempt < self.attempt or self.gapped:
            return None
        self.attempt = delta.attempt
        if delta.offset > len(self.text):
            self.gapped = True
            return None
        new = delta.text[len(self.text) - delta.offset:]
        if not new:
            return None
        fresh = Delta(job_id=delta.job_id, offset=len(self.text), text=new, attempt=delta.attempt)
        self.text += new
        return fresh

    def resume(self, request: Resume) -> Resumed:
        """The new holder continues from the text here."""
        self.gapped, self.resumed = False, True
        return Resumed(job_id=request.job_id, text=self.text)


Reply = Started | Delta | Finished


class JobReplies:
    """The live replies of one job, for the one request that waits for it."""

    def __init__(self, router: ReplyRouter, job_id: str, deadline: datetime) -> None:
        self._router, self.job_id, self._deadline = router, job_id, deadline
        self._queue: asyncio.Queue[Reply] = router._open(job_id)
        self._back: list[Reply] = []  # replies read ahead and put back, oldest last

    def put_back(self, reply: Reply) -> None:
        """Make ``reply`` the next one again (a caller that looked ahead)."""
        self._back.append(reply)

    async def next(self) -> Reply:
        """The next reply; a 504 once the job's deadline (and a second) has passed."""
        if self._back:
            return self._back.pop()
        left = (self._deadline - datetime.now(timezone.utc)).total_seconds()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=max(left, 0.0) + 1.0)
        except asyncio.TimeoutError:
            raise APIError(504, "no result before the job's deadline", "deadline") from None

    def waiting(self) -> Reply | None:
        """A reply that has arrived already, without waiting; None if there is none."""
        if self._back:
            return self._back.pop()
        return None if self._queue.empty() else self._queue.get_nowait()

    def close(self) -> None:
        """Stop routing this job's replies here (idempotent)."""
        self._router._close(self.job_id, self._queue)


class ReplyRouter:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self.subject = subjects.replies(new_id()[:16])
        self._waiting: dict[str, Watch] = {}
        self._subs: list = []
        self._strikes: set[asyncio.Task] = set()

    async def start(self) -> None:
        instance = self.subject.rsplit(".", 1)[-1]
        self._subs = [await self._nc.subscribe(self.subject, cb=self._route),
                      await self._nc.subscribe(subjects.live_from_any_node(instance),
                                               cb=self._route_live)]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    def watch(self, job_id: str, deadline: datetime) -> JobReplies:
        """Route ``job_id``'s replies to the returned handle until it is closed."""
        return JobReplies(self, job_id, deadline)

    def _open(self, job_id: str) -> asyncio.Queue[Reply]:
        watch = self._waiting[job_id] = Watch()
        return watch.queue

    def _close(self, job_id: str, queue: asyncio.Queue[Reply]) -> None:
        watch = self._waiting.get(job_id)
        if watch is not None and watch.queue is queue:  # a newer watch of the job stays
            del self._waiting[job_id]

    async def _route(self, msg: Msg) -> None:
        """The network's own replies: lease notices and verified outcomes."""
        try:
            reply = parse_reply(msg.data)
        except ValidationError:
            log.warning("malformed reply dropped")
            return
        if not isinstance(reply, (Started, Finished)):
            return  # a node's text comes on its own subject, never here
        job_id = reply.event.job_id if isinstance(reply, Finished) else reply.job_id
        watch = self._waiting.get(job_id)
        if watch is not None and (isinstance(reply, Finished) or watch.leased(reply)):
            watch.queue.put_nowait(reply)
            if isinstance(reply, Finished) and watch.strayed(reply.event):
                self._strike(reply.event, watch.text)

    def _strike(self, event: JobCompleted, streamed: str) -> None:
        """Log that ``event``'s node streamed text it did not return (in the background:
        the caller's answer does not wait for it)."""
        log.warning("node %s streamed text it did not return for job %s", event.node_id[:12],
                    event.job_id)
        strike = NodeStrike(
            node_id=event.node_id, job_id=event.job_id,
            reason="streamed text its checked result does not begin with",
            evidence=f"streamed sha256 {output_hash(streamed)}, {len(streamed)} characters; "
                     f"returned sha256 {event.output_hash}")
        task = asyncio.create_task(publish_event(self._nc.jetstream(), strike, event.zone))
        self._strikes.add(task)
        task.add_done_callback(self._strikes.discard)

    async def _route_live(self, msg: Msg) -> None:
        """A node's live text or resume request: only the lease holder's counts."""
        node = subjects.sender_node(msg.subject)
        try:
            reply = parse_reply(msg.data)
        except ValidationError:
            return
        if not isinstance(reply, (Delta, Resume)):
            return  # only the network says who runs a job and how it ended
        watch = self._waiting.get(reply.job_id)
        if watch is None or not watch.holds(node, reply.attempt):
            return  # not waited for here, or not from its holder: nothing, not even an answer
        if isinstance(reply, Resume):
            if msg.reply:
                await msg.respond(watch.resume(reply).model_dump_json().encode())
            return
        if (fresh := watch.accept(reply)) is not None:
            watch.queue.put_nowait(fresh)
