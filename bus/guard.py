"""The production start-up guard: with ``INFERBUS_PRODUCTION=1`` a process
refuses to start on a bus that could lose a write it has acknowledged.

Every service's composition root connects through :func:`connect_service`,
which calls :func:`refuse_unsafe_bus` right after its streams exist (a worker
calls it itself). It checks, and names the setting and the fix for anything
short of:

- ``INFERBUS_STREAM_REPLICAS`` >= 3, so what is created next is replicated;
- every inferbus stream and KV bucket on file storage with >= 3 replicas
  (one made earlier by hand, or by a replicas=1 run, is not silently used);
- every server holding a replica of one fsyncs each write
  (``sync_interval: always``). A NATS client cannot learn this: neither the
  JetStream API nor the ``$SYS`` requests an ordinary account may send show
  it. The servers' HTTP monitoring endpoint does (``/varz``:
  ``jetstream.config.sync_always``), so production names every server's
  monitor in ``INFERBUS_NATS_MONITOR_URL`` and the guard reads each one.
"""
from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamInfo
from nats.js.errors import NotFoundError

from bus import subjects
from bus.config import Settings
from bus.connection import connect, server_list
from bus.streams import ensure_buckets, ensure_streams, patiently, stream_configs

log = logging.getLogger("inferbus.guard")

MIN_REPLICAS = 3
BUCKETS = (subjects.NODES_BUCKET, subjects.CANCELS_BUCKET, subjects.CLAIMS_BUCKET)
SHOWN = 3  # problems spelled out in the one-line refusal; the rest are counted


class UnsafeDeployment(RuntimeError):
    """Production was asked for, and the bus could lose acknowledged writes."""


@dataclass(frozen=True)
class StoreFacts:
    """What the guard needs to know of one stream: how and where it is kept."""

    name: str
    memory: bool
    replicas: int
    servers: tuple[str, ...]  # the servers holding a copy (leader first)


def facts_of(info: StreamInfo) -> StoreFacts:
    cluster = info.cluster
    servers = ((cluster.leader,) if cluster and cluster.leader else ()) + tuple(
        r.name for r in ((cluster.replicas if cluster else None) or ()))
    return StoreFacts(info.config.name, info.config.storage == StorageType.MEMORY,
                      info.config.num_replicas or 1, servers)


def settings_problems(settings: Settings) -> list[str]:
    if settings.stream_replicas < MIN_REPLICAS:
        return [f"INFERBUS_STREAM_REPLICAS is {settings.stream_replicas}; set it to "
                f"{MIN_REPLICAS} (on a cluster of at least {MIN_REPLICAS} servers)"]
    return []


def store_problems(stores: list[StoreFacts]) -> list[str]:
    problems = []
    if memory := [s.name for s in stores if s.memory]:
        problems.append(f"{', '.join(memory)} keep messages in memory; recreate them with "
                        "file storage")
    if few := [s.name for s in stores if s.replicas < MIN_REPLICAS]:
        problems.append(f"{', '.join(few)} have fewer than {MIN_REPLICAS} replicas; raise "
                        f"each (nats stream edit NAME --replicas {MIN_REPLICAS})")
    return problems


def sync_problems(varz: dict[str, dict | str], holders: set[str]) -> list[str]:
    """``varz``: each monitor URL's ``/varz`` document, or why it could not be
    read; ``holders``: the servers that hold a copy of an inferbus stream."""
    problems, seen = [], set()
    unread = {url: doc for url, doc in varz.items() if isinstance(doc, str)}
    if unread and len(unread) == len(varz):
        return [f"cannot read {url}/varz ({doc}); check INFERBUS_NATS_MONITOR_URL"
                for url, doc in unread.items()]
    for url, doc in unread.items():
        # One server down (a restart, an outage) must not keep a service from
        # starting while the others keep quorum; it is checked when it is back.
        log.warning("cannot read %s/varz (%s): its fsync setting is not checked now", url, doc)
    for url, doc in varz.items():
        if isinstance(doc, str):
            continue
        name = doc.get("server_name", url)
        seen.add(name)
        config = (doc.get("jetstream") or {}).get("config") or {}
        if config.get("sync_always") is not True:
            problems.append(f"server {name} does not fsync every write; set "
                            "`sync_interval: always` in its jetstream block")
    if not any(isinstance(doc, str) for doc in varz.values()):
        for name in sorted(holders - seen):
            problems.append(f"server {name} holds inferbus streams but its monitor is not in "
                            "INFERBUS_NATS_MONITOR_URL")
    return problems


def read_varz(url: str, timeout: float = 3.0) -> dict | str:
    """The server's ``/varz`` document, or a short reason it could not be read."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/varz", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


async def _stores(js: JetStreamContext, settings: Settings) -> list[StoreFacts]:
    found = []
    streams = [c.name for c, _ in stream_configs(settings.layout())]
    for name in (*streams, *(subjects.kv_stream(b) for b in BUCKETS)):
        try:
            found.append(facts_of(await patiently(lambda n=name: js.stream_info(n),
                                                  f"stream {name}")))
        except NotFoundError:  # a bucket not made yet is made with the checked replicas
            continue
    return found


def refusal(problems: list[str]) -> str:
    more = f"; and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    return ("INFERBUS_PRODUCTION=1 refuses to start: " + "; ".join(problems[:SHOWN]) + more +
            " (or unset INFERBUS_PRODUCTION for a single-node or test setup)")


async def refuse_unsafe_bus(settings: Settings, js: JetStreamContext) -> None:
    """Raise :class:`UnsafeDeployment` naming each problem; a no-op unless
    ``settings.production``."""
    if not settings.production:
        return
    problems = settings_problems(settings)
    stores = await _stores(js, settings)
    problems += store_problems(stores)
    if not settings.nats_monitor_url:
        problems.append("INFERBUS_NATS_MONITOR_URL is not set; a NATS client cannot see "
                        "whether servers fsync, so list every server's monitor, e.g. "
                        "http://nats-1:8222,http://nats-2:8222,http://nats-3:8222")
    else:
        urls = server_list(settings.nats_monitor_url)
        docs = await asyncio.gather(*(asyncio.to_thread(read_varz, u) for u in urls))
        holders = {server for s in stores for server in s.servers}
        problems += sync_problems(dict(zip(urls, docs)), holders)
    if problems:
        raise UnsafeDeployment(refusal(problems))


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Every stream of the settings' layout, each in its region, and (with
    regions) every bucket in the home region, so none lands where a first user
    happened to connect."""
    layout = settings.layout()
    await ensure_streams(js, settings.stream_replicas, layout, settings.content_retention_s)
    if layout.split:
        await ensure_buckets(js, layout, settings.job_timeout_s + settings.expiry_grace_s,
                             settings.stream_replicas)


async def connect_service(settings: Settings, name: str) -> Client:
    """A service's connection (API, projector, settlement): its streams made, and,
    in production, the guard passed (:class:`UnsafeDeployment` otherwise)."""
    nc = await connect(settings, name)
    try:
        js = nc.jetstream()
        await provision(js, settings)
        await refuse_unsafe_bus(settings, js)
    except BaseException:
        await nc.close()
        raise
    return nc


async def preflight(settings: Settings) -> None:
    """The same check on a connection of its own, before a server starts serving:
    the API's CLI runs it so a refusal is one line, not a web server's traceback."""
    if not settings.production:
        return
    await (await connect_service(settings, "inferbus-guard")).close()
