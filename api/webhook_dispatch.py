"""The webhook dispatcher (``inferbus webhooks``): delivers each async job's
outcome to the target its caller named (``api.webhook_targets``).

A durable pull consumer (``webhooks``) reads every job outcome from the log.
An outcome whose job has no target is acked at once. Otherwise the job's body
(``GET /v1/jobs/{id}``'s shape, from the read models) is POSTed, signed
(``api.webhook_signing``), and the attempt recorded in the target's KV entry;
then the event is acked (delivered, or given up after
``INFERBUS_WEBHOOK_MAX_ATTEMPTS``) or nacked with the backoff as its delay, so
JetStream itself keeps the retry: nothing sleeps, and a dispatcher that dies
mid-retry leaves the event to be redelivered to whichever runs next. A target
already delivered is never POSTed again; a crash between a receiver's 2xx and
its record repeats the POST with the same ``X-Inferbus-Delivery`` id.

Each message is handled in its own task, at most ``INFERBUS_WEBHOOK_CONCURRENCY``
at once, and each attempt is bounded by ``INFERBUS_WEBHOOK_TIMEOUT_S``: a dead or
hanging receiver holds one slot for one timeout, never the consumer.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from datetime import datetime, timedelta, timezone

from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyWrongLastSequenceError
from pydantic import ValidationError

from api.job_serving import JobServing
from api.webhook_delivery import Sender
from api.webhook_signing import account_secret
from api.webhook_targets import Target, WebhookTargets, bucket_ttl_s, retry_delay
from bus import subjects
from bus.config import Settings
from bus.events import TERMINAL_JOB_EVENTS, parse_event
from bus.streams import patiently
from bus.subjects.webhooks import WEBHOOKS_DURABLE
from projections.job_status import get_job
from projections.store import Store

log = logging.getLogger("inferbus.webhooks")
POLL_S = 1.0
NOT_PROJECTED_S = 0.5  # the read model is a few ms behind the log: look again soon
UNSETTLED_TRIES = 10  # deliveries that wait for the job's cost before sending without it


def event_name(event_type: str) -> str:
    """``JobCompleted`` -> ``job.completed`` (``X-Inferbus-Event``)."""
    return ".".join(w.lower() for w in re.findall(r"[A-Z][a-z]*", event_type))


class Dispatcher:
    """Delivers the webhooks of job outcomes read from the ``webhooks`` consumer
    (module docstring); ``run`` until stopped. Several may share the consumer."""

    def __init__(self, js: JetStreamContext, targets: WebhookTargets, jobs: JobServing,
                 store: Store, sender: Sender, network_secret: bytes, settings: Settings) -> None:
        self._js, self._targets, self._jobs, self._store = js, targets, jobs, store
        self._sender, self._network, self._settings = sender, network_secret, settings

    def _config(self) -> ConsumerConfig:
        s = self._settings
        # Outcomes older than a target's life can have no target left: a new
        # consumer starts there rather than at the beginning of the log.
        since = datetime.now(timezone.utc) - timedelta(seconds=bucket_ttl_s(s))
        return ConsumerConfig(
            durable_name=WEBHOOKS_DURABLE, ack_policy=AckPolicy.EXPLICIT,
            filter_subjects=subjects.events_of(*(e.__name__ for e in TERMINAL_JOB_EVENTS)),
            deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since,
            ack_wait=s.webhook_timeout_s + 30.0, max_deliver=-1, max_ack_pending=-1)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set."""
        config = self._config()
        sub = await patiently(lambda: self._js.pull_subscribe(
            "", durable=WEBHOOKS_DURABLE, stream=subjects.EVENTS_STREAM, config=config),
            "webhooks consumer")
        tasks: set[asyncio.Task] = set()
        try:
            while not stop.is_set():
                free = self._settings.webhook_concurrency - len(tasks)
                if free <= 0:
                    await asyncio.wait(tasks, timeout=POLL_S, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(min(free, 256), timeout=POLL_S)
                except NatsTimeout:
                    continue
                except Exception:  # noqa: BLE001 - the connection reconnects by itself
                    log.warning("webhooks: fetch failed; retrying", exc_info=True)
                    await asyncio.sleep(POLL_S)
                    continue
                for msg in msgs:
                    task = asyncio.create_task(self._handle(msg))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:  # unacked: redelivered to the next dispatcher
                task.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, msg) -> None:
        try:
            await self._deliver(msg)
        except Exception:  # noqa: BLE001 - unacked: it comes again after ack_wait
            log.exception("webhooks: handling %s failed", msg.subject)

    async def _deliver(self, msg) -> None:
        try:
            event = parse_event(msg.data)
        except ValidationError:  # not ours to judge: the projector dead-letters it
            await msg.ack()
            return
        found = await self._targets.get(event.job_id)
        if found is None or found[0].done:
            await msg.ack()
            return
        target, revision = found
        view = await asyncio.to_thread(get_job, self._store, event.job_id)
        if view is None or not view.terminal:
            await msg.nak(delay=NOT_PROJECTED_S)
            return
        job = await self._jobs.body(view)
        if job["cost"] is None and msg.metadata.num_delivered < UNSETTLED_TRIES:
            await msg.nak(delay=NOT_PROJECTED_S)  # settlement is a moment behind
            return
        if view.account != target.account:  # cannot happen: the API wrote both
            await self._record(msg, event.job_id, target, revision, given_up_at=time.time(),
                               last_error="the job belongs to another account")
            return
        secret = account_secret(self._network, target.account)
        attempt = await self._sender.post(target, secret, event_name(event.type), job)
        now, attempts = time.time(), target.attempts + 1
        changes = dict(attempts=attempts, last_status=attempt.status, last_error=attempt.error,
                       last_at=now)
        if attempt.ok:
            changes["delivered_at"] = now
        elif attempts >= self._settings.webhook_max_attempts:
            changes["given_up_at"] = now
        await self._record(msg, event.job_id, target, revision, **changes)

    async def _record(self, msg, job_id: str, target: Target, revision: int, **changes) -> None:
        """Record the attempt, then ack (done) or schedule the next one."""
        try:
            target = await self._targets.update(job_id, target, revision, **changes)
        except KeyWrongLastSequenceError:  # another dispatcher recorded it first: its word
            found = await self._targets.get(job_id)
            if found is None or found[0].done:
                await msg.ack()
            else:
                await msg.nak(delay=NOT_PROJECTED_S)
            return
        if target.done:
            await msg.ack()
            return
        s = self._settings
        await msg.nak(delay=retry_delay(target.attempts, s.webhook_retry_base_s,
                                        s.webhook_retry_max_s))
