"""Idempotent JetStream set-up: streams, the node KV bucket, worker consumers.

Every service process calls :func:`ensure_streams` at start; creating what
exists is a no-op, so start order never matters. Workers only wait for them
(:func:`wait_for_streams`) and create their own consumers. Streams and buckets
get ``replicas`` copies (``INFERBUS_STREAM_REPLICAS``; 3 on a production cluster).

On a cluster the JetStream API is briefly unavailable while a meta leader or
a stream's leader is elected (a timeout, no responders, or a 503); set-up
retries those for up to ``SETUP_PATIENCE_S``, so processes started together
with a fresh cluster, or during a failover, still come up.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DiscardPolicy, KeyValueConfig,
                         RetentionPolicy, StorageType, StreamConfig)
from nats.js.errors import (BadRequestError, KeyNotFoundError, NoStreamResponseError,
                            NotFoundError, ServiceUnavailableError)
from nats.js.kv import KeyValue

from bus import subjects

log = logging.getLogger("inferbus.bus")
DUPLICATE_WINDOW_S = 120.0
NODE_TTL_S = 10.0
SETUP_PATIENCE_S = 30.0
TRANSIENT = (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
T = TypeVar("T")


async def patiently(step: Callable[[], Awaitable[T]], what: str,
                    patience_s: float = SETUP_PATIENCE_S) -> T:
    """``step()``, retried while the cluster answers "not now"; other errors raise."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await step()
        except TRANSIENT as exc:
            if time.monotonic() > deadline:
                raise
            log.info("%s: JetStream not ready (%s); retrying", what, type(exc).__name__)
            await asyncio.sleep(0.5)


def jobs_stream_config(replicas: int = 1) -> StreamConfig:
    """Jobs wait here until one worker acks them (work-queue retention)."""
    return StreamConfig(
        name=subjects.JOBS_STREAM, subjects=[subjects.all_jobs()],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW, allow_direct=True,
    )


def events_stream_config(replicas: int = 1) -> StreamConfig:
    """The immutable log: nothing is ever deleted or purged from it."""
    return StreamConfig(
        name=subjects.EVENTS_STREAM, subjects=[subjects.all_events()],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True, deny_purge=True, allow_direct=True,
        # The relay appends the ledger's events in all-or-nothing batches.
        allow_atomic=True,
    )


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    async def step() -> None:
        try:
            info = await js.stream_info(config.name)
            if config.allow_atomic and not info.config.allow_atomic:  # made by an older version
                info.config.allow_atomic = True
                await js.update_stream(info.config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # another process created it first
                if exc.err_code != 10058:  # stream name already in use
                    raise
    await patiently(step, f"stream {config.name}")


def dead_letter_stream_config(replicas: int = 1) -> StreamConfig:
    """What consumers could not read, kept 30 days for someone to look at."""
    return StreamConfig(
        name=subjects.DEAD_LETTER_STREAM, subjects=[subjects.all_dead_letters()],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=replicas,
        max_age=30 * 24 * 3600.0, duplicate_window=DUPLICATE_WINDOW_S)


def checks_stream_config(replicas: int = 1) -> StreamConfig:
    """Completions waiting for their spot check: each judged once, by one verifier.
    A check not taken within a day is dropped (the work is paid as unchecked)."""
    return StreamConfig(
        name=subjects.CHECKS_STREAM, subjects=[subjects.all_checks()],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE, num_replicas=replicas,
        max_age=24 * 3600.0, duplicate_window=DUPLICATE_WINDOW_S)


async def ensure_streams(js: JetStreamContext, replicas: int = 1) -> None:
    await _ensure(js, jobs_stream_config(replicas))
    await _ensure(js, events_stream_config(replicas))
    await _ensure(js, dead_letter_stream_config(replicas))
    await _ensure(js, checks_stream_config(replicas))


async def _bucket(js: JetStreamContext, name: str, ttl_s: float, replicas: int) -> KeyValue:
    async def step() -> KeyValue:
        try:
            return await js.key_value(name)
        except NotFoundError:  # BucketNotFoundError; a concurrent create of the same config is fine
            return await js.create_key_value(KeyValueConfig(
                bucket=name, ttl=ttl_s, history=1, replicas=replicas, storage=StorageType.FILE))
    return await patiently(step, f"bucket {name}")


async def nodes_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Live node records; an entry older than ``NODE_TTL_S`` is dropped."""
    return await _bucket(js, subjects.NODES_BUCKET, NODE_TTL_S, replicas)


async def cancels_bucket(js: JetStreamContext, ttl_s: float, replicas: int = 1) -> KeyValue:
    """Jobs a consumer asked to stop; kept as long as a job can live."""
    return await _bucket(js, subjects.CANCELS_BUCKET, ttl_s, replicas)


async def claims_bucket(js: JetStreamContext, ttl_s: float, replicas: int = 1) -> KeyValue:
    """Which node runs each job: created once per job, taken over only on redelivery."""
    return await _bucket(js, subjects.CLAIMS_BUCKET, ttl_s, replicas)


async def has_key(kv: KeyValue, key: str) -> bool:
    """Whether ``key`` is set in ``kv`` now (a job claimed, a cancel asked)."""
    try:
        await kv.get(key)
    except KeyNotFoundError:
        return False
    return True


async def grants_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Each node's grant (``bus.grants``), kept until the admin removes it."""
    return await _bucket(js, subjects.GRANTS_BUCKET, 0, replicas)


async def ensure_work_consumer(js: JetStreamContext, zone: str, model: str,
                               ack_wait_s: float) -> str:
    """The durable pull consumer shared by every worker of (zone, model).

    Redelivery is unlimited at the server: the worker itself fails a job that
    has been attempted too often, so a poison job ends as ``JobFailed`` (and a
    refund) instead of lingering unacked in the work queue."""
    name = subjects.consumer_name(zone, model)
    config = ConsumerConfig(
        # Named: created on the subject that carries its filter, which a worker's
        # permission pins (bus/auth.py), so it cannot refilter a shared consumer.
        name=name, durable_name=name, filter_subject=subjects.jobs(zone, model),
        ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait_s, max_deliver=-1,
        max_ack_pending=-1)
    await patiently(lambda: js.add_consumer(subjects.JOBS_STREAM, config), f"consumer {name}")
    return name


# Streams (and buckets' streams) a worker needs but never makes: services (API,
# projector, `inferbus up`) create them, and a worker's credentials may not.
WORKER_STREAMS = (subjects.JOBS_STREAM, subjects.EVENTS_STREAM, subjects.DEAD_LETTER_STREAM,
                  *(subjects.kv_stream(b) for b in (subjects.NODES_BUCKET, subjects.CANCELS_BUCKET)))


async def wait_for_streams(js: JetStreamContext, poll_s: float = 0.5) -> None:
    """Until every stream of ``WORKER_STREAMS`` exists (a worker started before the
    services waits for them, as it would for a server that is not up yet)."""
    missing, told = list(WORKER_STREAMS), False
    while missing:
        try:
            await js.stream_info(missing[0])
            missing.pop(0)
        except (NotFoundError, *TRANSIENT):  # not made yet, or the cluster is electing
            if not told:  # once: a worker started before the API should say why it waits
                log.info("waiting for stream %s (made by the API and projector)", missing[0])
                told = True
            await asyncio.sleep(poll_s)


async def batches(sub, stop: asyncio.Event, size: int, what: str,
                  poll_s: float = 1.0) -> AsyncIterator[list]:
    """A durable pull subscription's messages, a fetch at a time, until ``stop``
    (looked at once per ``poll_s`` while idle); a failed fetch is retried after a
    pause, since the connection reconnects by itself."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(size, timeout=poll_s)
        except NatsTimeout:
            continue
        except Exception:  # noqa: BLE001
            log.warning("%s: fetch failed; retrying", what, exc_info=True)
            await asyncio.sleep(poll_s)
            continue
        yield msgs
