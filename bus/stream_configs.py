"""The stream layout: every inferbus stream's configuration, per region.

One region (the default) has one ``JOBS``, ``EVENTS``, ``CHECKS``, ``CONTENT``
and ``DEADLETTER`` stream. With several (``bus.regions``) each region has its
own jobs, log, checks and content streams holding its zones' subjects, placed
in its cluster by tag; the global pool, the global log (which sources every
region's) and the dead letters live in the home region. ``bus.streams``
creates them.
"""
from __future__ import annotations

from nats.js.api import (DiscardPolicy, Placement, RetentionPolicy, StorageType, StreamConfig,
                         StreamSource)

from bus import subjects
from bus.regions import Layout

DUPLICATE_WINDOW_S = 120.0
DEFAULT_RETENTION_S = 7 * 24 * 3600.0  # INFERBUS_CONTENT_RETENTION_S


def jobs_stream_config(replicas: int = 1, name: str = subjects.JOBS_STREAM,
                       filters: list[str] | None = None,
                       placement: Placement | None = None) -> StreamConfig:
    """Jobs wait here until one worker acks them (work-queue retention)."""
    return StreamConfig(
        name=name, subjects=filters or [subjects.all_jobs()],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.NEW, allow_direct=True, placement=placement,
    )


def events_stream_config(replicas: int = 1, name: str = subjects.EVENTS_STREAM,
                         filters: list[str] | None = None, placement: Placement | None = None,
                         sources: list[str] | None = None) -> StreamConfig:
    """The immutable log: nothing is ever deleted or purged from it. With regions,
    the global one holds the global events and every region's log, sourced."""
    return StreamConfig(
        name=name, subjects=filters or [subjects.all_events()],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
        num_replicas=replicas, duplicate_window=DUPLICATE_WINDOW_S,
        deny_delete=True, deny_purge=True, allow_direct=True, placement=placement,
        sources=[StreamSource(name=n) for n in sources] if sources else None,
        # The relay appends the ledger's events in all-or-nothing batches.
        allow_atomic=True,
    )


def content_stream_config(retention_s: float, replicas: int = 1,
                          name: str = subjects.CONTENT_STREAM, filters: list[str] | None = None,
                          placement: Placement | None = None) -> StreamConfig:
    """Prompts and outputs: kept ``retention_s``, erasable (an account forgotten,
    a job's content deleted by its owner); the last part per subject is kept."""
    return StreamConfig(
        name=name, subjects=filters or [subjects.all_content()],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=replicas,
        max_age=retention_s, max_msgs_per_subject=1,
        duplicate_window=min(DUPLICATE_WINDOW_S, retention_s),  # NATS: at most the max age
        allow_direct=True, placement=placement)


def dead_letter_stream_config(replicas: int = 1,
                              placement: Placement | None = None) -> StreamConfig:
    """What consumers could not read, kept 30 days for someone to look at."""
    return StreamConfig(
        name=subjects.DEAD_LETTER_STREAM, subjects=[subjects.all_dead_letters()],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=replicas,
        max_age=30 * 24 * 3600.0, duplicate_window=DUPLICATE_WINDOW_S, placement=placement)


def checks_stream_config(replicas: int = 1, name: str = subjects.CHECKS_STREAM,
                         filters: list[str] | None = None,
                         placement: Placement | None = None) -> StreamConfig:
    """Completions waiting for their spot check: each judged once, by one verifier.
    A check not taken within a day is dropped (the work is paid as unchecked)."""
    return StreamConfig(
        name=name, subjects=filters or [subjects.all_checks()],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE, num_replicas=replicas,
        max_age=24 * 3600.0, duplicate_window=DUPLICATE_WINDOW_S, placement=placement)


def kv_stream_config(bucket: str, ttl_s: float, replicas: int,
                     placement: Placement | None) -> StreamConfig:
    """A KV bucket's stream as nats-py's ``create_key_value`` makes it (history 1),
    plus the placement it leaves out."""
    return StreamConfig(
        name=subjects.kv_stream(bucket), subjects=[f"$KV.{bucket}.>"], allow_direct=True,
        allow_rollup_hdrs=True, deny_delete=True, discard=DiscardPolicy.NEW,
        duplicate_window=min(DUPLICATE_WINDOW_S, ttl_s) if ttl_s else DUPLICATE_WINDOW_S,
        max_age=ttl_s, max_consumers=-1, max_msgs=-1, max_msgs_per_subject=1,
        num_replicas=replicas, storage=StorageType.FILE, placement=placement)


def object_store_config(bucket: str, replicas: int,
                        placement: Placement | None) -> StreamConfig:
    """An object store's stream as nats-py's ``create_object_store`` makes it, plus
    the placement (given by us, so it can never be left out)."""
    return StreamConfig(
        name=subjects.object_stream(bucket), subjects=subjects.object_store_subjects(bucket),
        discard=DiscardPolicy.NEW, allow_rollup_hdrs=True, allow_direct=True, max_consumers=-1,
        max_msgs=-1, max_bytes=-1, num_replicas=replicas, storage=StorageType.FILE,
        placement=placement)


def stream_configs(layout: Layout, replicas: int = 1,
                   retention_s: float = DEFAULT_RETENTION_S) -> list[tuple[StreamConfig, str]]:
    """Every stream of ``layout`` with the region it must live in."""
    home, at = layout.home, layout.placement
    if not layout.split:
        return [(c, home) for c in (
            jobs_stream_config(replicas), events_stream_config(replicas),
            dead_letter_stream_config(replicas), checks_stream_config(replicas),
            content_stream_config(retention_s, replicas))]
    out: list[tuple[StreamConfig, str]] = []
    for region in layout.regions:
        zones = layout.zones(region)
        # A job of no zone (``global``: its client's zone unknown) keeps its checks and
        # content in the home region, where the global pool is.
        kept = (*zones, subjects.GLOBAL) if region == home else zones
        out += [(c, region) for c in (
            jobs_stream_config(replicas, layout.jobs_stream(region),
                               [subjects.zone_jobs(z) for z in zones], at(region)),
            events_stream_config(replicas, layout.events_stream(region),
                                 [subjects.zone_events(z) for z in zones], at(region)),
            checks_stream_config(replicas, layout.checks_stream(region),
                                 [subjects.check(z) for z in kept], at(region)),
            content_stream_config(retention_s, replicas, layout.content_stream(region),
                                  [subjects.zone_content(z) for z in kept], at(region)))]
    regional_logs = [layout.events_stream(r) for r in layout.regions]
    out += [(c, home) for c in (
        jobs_stream_config(replicas, filters=[subjects.zone_jobs(subjects.GLOBAL)],
                           placement=at(home)),
        events_stream_config(replicas, filters=[subjects.zone_events(subjects.GLOBAL)],
                             placement=at(home), sources=regional_logs),
        dead_letter_stream_config(replicas, at(home)))]
    return out


