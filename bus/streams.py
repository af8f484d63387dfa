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
import contextlib
import logging
import time
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, KeyValueConfig, Placement, StorageType,
                         StreamConfig, StreamInfo)
from nats.js.errors import (BadRequestError, KeyNotFoundError, NoStreamResponseError,
                            NotFoundError, ServiceUnavailableError)
from nats.js.kv import KeyValue

from bus import regions, subjects
from bus.regions import Layout
from bus.subjects.webhooks import WEBHOOKS_BUCKET
from bus.stream_configs import (DEFAULT_RETENTION_S, DUPLICATE_WINDOW_S,  # noqa: F401 - re-exported
                                events_stream_config, jobs_stream_config, kv_stream_config,
                                stream_configs)

log = logging.getLogger("inferbus.bus")
NODE_TTL_S = 10.0
SETUP_PATIENCE_S = 30.0
LINGER_FETCH_S = 0.005  # batches(): the fetch after a linger waits no longer for more
TRANSIENT = (NatsTimeout, NoRespondersError, NoStreamResponseError, ServiceUnavailableError)
T = TypeVar("T")


class PlacementDrift(RuntimeError):
    """A region's stream exists outside its region: its data may be on the wrong disks."""


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


def _placed_elsewhere(info: StreamInfo, config: StreamConfig) -> str | None:
    """Why an existing stream is not where ``config`` places it (None: it is)."""
    want = config.placement
    if want is None:
        return None
    have = info.config.placement
    if have is None or have.cluster != want.cluster or list(have.tags or []) != want.tags:
        return f"stream {config.name} is placed {have} instead of {want}"
    if info.cluster is not None and info.cluster.name not in (None, want.cluster):
        return f"stream {config.name} lives in cluster {info.cluster.name}, not {want.cluster}"
    return None


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    async def step() -> None:
        try:
            info = await js.stream_info(config.name)
            if config.allow_atomic and not info.config.allow_atomic:  # made by an older version
                info.config.allow_atomic = True
                await js.update_stream(info.config)
            if config.max_age and info.config.max_age != config.max_age:  # retention changed
                info.config.max_age = config.max_age
                await js.update_stream(info.config)
        except NotFoundError:
            try:
                info = await js.add_stream(config)
            except BadRequestError as exc:  # another process created it first
                if exc.err_code != 10058:  # stream name already in use
                    raise
                # Its creator's stream may have no leader yet: "not found" for a moment.
                info = await _found(js, config.name)
        if (why := _placed_elsewhere(info, config)) is not None:
            raise PlacementDrift(f"{why}: move it back (or remove it) before starting")
    await patiently(step, f"stream {config.name}")


async def _found(js: JetStreamContext, name: str, patience_s: float = 10.0) -> StreamInfo:
    """The info of a stream that exists, waiting out the moment after its creation
    in which a replicated stream answers "not found" (no leader elected yet)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await js.stream_info(name)
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def ensure_streams(js: JetStreamContext, replicas: int = 1, layout: Layout | None = None,
                         retention_s: float = DEFAULT_RETENTION_S) -> None:
    """Create (or check) every stream of ``layout`` (default: one region). A stream
    that exists placed outside its region, or a mirror or source of a region's
    queues, checks or content kept in another cluster, raises :class:`PlacementDrift`."""
    layout = layout or regions.single()
    for config, _ in stream_configs(layout, replicas, retention_s):
        await _ensure(js, config)
    if layout.split:
        infos = await patiently(js.streams_info, "stream list")
        if problems := copies_elsewhere(infos, layout):
            raise PlacementDrift("; ".join(problems) + ": remove them before starting")


def copies_elsewhere(infos: list[StreamInfo], layout: Layout) -> list[str]:
    """Streams that copy (mirror or source) a region's content-bearing stream
    (its jobs, checks or content) while kept outside that region's cluster."""
    holding = {name: r for r in layout.regions for name in (
        layout.jobs_stream(r), layout.checks_stream(r), layout.content_stream(r))}
    found = []
    for info in infos:
        config = info.config
        copied = [config.mirror] if config.mirror else []
        copied += list(config.sources or [])
        cluster = info.cluster.name if info.cluster else None
        for origin in copied:
            region = holding.get(origin.name)
            if region is not None and cluster != region:
                found.append(f"stream {config.name} in cluster {cluster} copies {origin.name}, "
                             f"whose data must stay in region {region}")
    return found


async def _bucket(js: JetStreamContext, name: str, ttl_s: float, replicas: int,
                  placement: Placement | None = None) -> KeyValue:
    """A bucket, made if missing. With regions, services make every bucket first,
    in the home region (``ensure_buckets``); a later create finds it."""
    async def step() -> KeyValue:
        try:
            return await js.key_value(name)
        except NotFoundError:  # BucketNotFoundError; a concurrent create of the same config is fine
            if placement is None:
                return await js.create_key_value(KeyValueConfig(
                    bucket=name, ttl=ttl_s, history=1, replicas=replicas,
                    storage=StorageType.FILE))
            # nats-py's create_key_value drops a placement: the bucket would land in
            # the creator's cluster. Its stream is made here, as nats-py would, placed.
            try:
                await js.add_stream(kv_stream_config(name, ttl_s, replicas, placement))
            except BadRequestError as exc:
                if exc.err_code != 10058:  # made by another process meanwhile
                    raise
            return await js.key_value(name)
    return await patiently(step, f"bucket {name}")


async def nodes_bucket(js: JetStreamContext, replicas: int = 1,
                       placement: Placement | None = None) -> KeyValue:
    """Live node records; an entry older than ``NODE_TTL_S`` is dropped. Every
    bucket is made, if missing, at ``placement`` (``Settings.home_placement``)."""
    return await _bucket(js, subjects.NODES_BUCKET, NODE_TTL_S, replicas, placement)


async def cancels_bucket(js: JetStreamContext, ttl_s: float, replicas: int = 1,
                         placement: Placement | None = None) -> KeyValue:
    """Jobs a consumer asked to stop; kept as long as a job can live."""
    return await _bucket(js, subjects.CANCELS_BUCKET, ttl_s, replicas, placement)


async def claims_bucket(js: JetStreamContext, ttl_s: float, replicas: int = 1,
                        placement: Placement | None = None) -> KeyValue:
    """Which node runs each job: created once per job, taken over only on redelivery."""
    return await _bucket(js, subjects.CLAIMS_BUCKET, ttl_s, replicas, placement)


async def webhooks_bucket(js: JetStreamContext, ttl_s: float, replicas: int = 1,
                          placement: Placement | None = None) -> KeyValue:
    """Each async job's webhook target and delivery record (``api.webhook_targets``);
    kept for a job's life and its delivery window."""
    return await _bucket(js, WEBHOOKS_BUCKET, ttl_s, replicas, placement)


async def has_key(kv: KeyValue, key: str) -> bool:
    """Whether ``key`` is set in ``kv`` now (a job claimed, a cancel asked)."""
    try:
        await kv.get(key)
    except KeyNotFoundError:
        return False
    return True


async def grants_bucket(js: JetStreamContext, replicas: int = 1,
                        placement: Placement | None = None) -> KeyValue:
    """Each node's grant (``bus.grants``), kept until the admin removes it."""
    return await _bucket(js, subjects.GRANTS_BUCKET, 0, replicas, placement)


async def models_bucket(js: JetStreamContext, replicas: int = 1,
                        placement: Placement | None = None) -> KeyValue:
    """The model catalog (``bus.model_store``): each name's published roots."""
    return await _bucket(js, subjects.MODELS_BUCKET, 0, replicas, placement)


async def ensure_buckets(js: JetStreamContext, layout: Layout, job_life_s: float,
                         replicas: int = 1) -> None:
    """Every bucket, placed in the home region (only the split layout places); one
    found in another cluster raises :class:`PlacementDrift`."""
    at = layout.placement(layout.home)
    for name, ttl in ((subjects.NODES_BUCKET, NODE_TTL_S), (subjects.CANCELS_BUCKET, job_life_s),
                      (subjects.CLAIMS_BUCKET, job_life_s), (subjects.GRANTS_BUCKET, 0),
                      (subjects.MODELS_BUCKET, 0)):
        await _bucket(js, name, ttl, replicas, at)
        info = await _found(js, subjects.kv_stream(name))
        if at is not None and info.cluster is not None and info.cluster.name != at.cluster:
            raise PlacementDrift(f"bucket {name} lives in cluster {info.cluster.name}, not in "
                                 f"the home region {at.cluster}: move it back (or remove it)")


async def ensure_work_consumer(js: JetStreamContext, zone: str, model: str,
                               ack_wait_s: float, stream: str = subjects.JOBS_STREAM) -> str:
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
    await patiently(lambda: js.add_consumer(stream, config), f"consumer {name}")
    return name


def worker_streams(layout: Layout | None = None, zone: str = subjects.GLOBAL) -> tuple[str, ...]:
    """Streams (and buckets' streams) a worker of ``zone`` needs but never makes:
    services (API, projector, `inferbus up`) create them, and a worker's
    credentials may not."""
    layout = layout or regions.single()
    own = layout.queue_stream(zone)
    return tuple(dict.fromkeys((
        own, subjects.JOBS_STREAM, subjects.EVENTS_STREAM, subjects.DEAD_LETTER_STREAM,
        *(subjects.kv_stream(b) for b in (subjects.NODES_BUCKET, subjects.CANCELS_BUCKET)))))


async def wait_for_streams(js: JetStreamContext, poll_s: float = 0.5,
                           streams: tuple[str, ...] | None = None) -> None:
    """Until every stream of ``streams`` (default :func:`worker_streams`) exists (a
    worker started before the services waits for them, as it would for a server
    that is not up yet)."""
    missing, told = list(streams or worker_streams()), False
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
                  poll_s: float = 1.0, linger_s: float = 0.0,
                  linger_below: int = 16) -> AsyncIterator[list]:
    """A durable pull subscription's messages, a fetch at a time, until ``stop``
    (looked at once per ``poll_s`` while idle); a failed fetch is retried after a
    pause, since the connection reconnects by itself. A fetch that brought fewer
    than ``linger_below`` waits ``linger_s`` and takes what came meanwhile too."""
    while not stop.is_set():
        try:
            msgs = await sub.fetch(size, timeout=poll_s)
            if linger_s and len(msgs) < min(size, linger_below):
                await asyncio.sleep(linger_s)
                with contextlib.suppress(NatsTimeout, asyncio.TimeoutError):
                    msgs += await sub.fetch(size - len(msgs), timeout=LINGER_FETCH_S)
        except (NatsTimeout, asyncio.TimeoutError):
            # nats-py also raises asyncio's own when the server's idle answer lands on
            # the client's deadline: as idle as the other, not a failure to wait out.
            continue
        except Exception:  # noqa: BLE001
            log.warning("%s: fetch failed; retrying", what, exc_info=True)
            await asyncio.sleep(poll_s)
            continue
        yield msgs
