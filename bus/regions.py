"""Regions: which NATS cluster of the supercluster stores each zone's data.

A region is one NATS cluster (its name is the cluster name, its servers carry
the tag ``region:<name>``) hosting some zones. A region's job queues, event
log, spot checks and content live in streams of its own placed there by tag
(:meth:`Layout.placement`), never overflow-placed into another cluster: a
strict subcloud's prompt is written only to its region's disks. What is
global (the global job pool, the audit log every region's log is sourced into,
keys, grants, money) lives in the home region, the first one listed.

``INFERBUS_REGIONS`` names them, ``region=zone,zone;region=...`` (for example
``eu=eu,me,af;na=na,sa;ap=sea,ea,oc,sa_asia``), or just region names
(``eu,na,ap``) for :data:`DEFAULT_HOSTS`' zones. Unset, the network is one
region that hosts every zone, stored as it always was: one ``JOBS`` and one
``EVENTS`` stream, no placement (a single server or cluster has no tags).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from nats.js.api import Placement

from bus import subjects
from bus.zones import ZONES

SINGLE = "main"  # the one region of a network without INFERBUS_REGIONS
DEFAULT_HOSTS = {"eu": ("eu", "me", "af"), "na": ("na", "sa"),
                 "ap": ("sea", "ea", "oc", "sa_asia")}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class RegionError(ValueError):
    """``INFERBUS_REGIONS`` (or ``--regions``) does not describe a network."""


@dataclass(frozen=True)
class Layout:
    """Regions, the zones each hosts, and where every stream lives."""

    hosts: tuple[tuple[str, tuple[str, ...]], ...]  # (region, its zones), home first

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(r for r, _ in self.hosts)

    @property
    def home(self) -> str:
        return self.hosts[0][0]

    @property
    def split(self) -> bool:
        """Whether the network has several regions (streams per region, placed)."""
        return len(self.hosts) > 1

    def zones(self, region: str) -> tuple[str, ...]:
        for r, zones in self.hosts:
            if r == region:
                return zones
        raise RegionError(f"no region {region!r} (regions: {', '.join(self.regions)})")

    def region_of(self, zone: str) -> str:
        """The region hosting ``zone``; ``global`` and unknown zones: the home region."""
        for region, zones in self.hosts:
            if zone in zones:
                return region
        return self.home

    def placement(self, region: str) -> Placement | None:
        """Where a region's streams are created: its cluster, by its tag (both, so
        a full cluster refuses a stream instead of NATS moving it elsewhere)."""
        if not self.split:
            return None
        return Placement(cluster=region, tags=[f"region:{region}"])

    # Stream names: one set per region, and the global ones (home region).

    def jobs_stream(self, region: str | None) -> str:
        """The queue stream of ``region``; None: the global pool."""
        return subjects.JOBS_STREAM if region is None or not self.split \
            else subjects.regional(subjects.JOBS_STREAM, region)

    def events_stream(self, region: str | None) -> str:
        return subjects.EVENTS_STREAM if region is None or not self.split \
            else subjects.regional(subjects.EVENTS_STREAM, region)

    def checks_stream(self, region: str) -> str:
        return subjects.regional(subjects.CHECKS_STREAM, region) if self.split \
            else subjects.CHECKS_STREAM

    def content_stream(self, region: str) -> str:
        return subjects.regional(subjects.CONTENT_STREAM, region) if self.split \
            else subjects.CONTENT_STREAM

    def model_store(self, region: str) -> str:
        """The object store bucket keeping ``region``'s copies of model chunks."""
        return subjects.regional(subjects.MODEL_CHUNKS, region) if self.split \
            else subjects.MODEL_CHUNKS

    def queue_stream(self, queue: str) -> str:
        """The stream a queue token's jobs are stored in (``subjects.queue_home``)."""
        home = subjects.queue_home(queue)
        return self.jobs_stream(None if home == subjects.GLOBAL else self.region_of(home))

    def job_streams(self) -> tuple[str, ...]:
        regional = tuple(self.jobs_stream(r) for r in self.regions) if self.split else ()
        return (subjects.JOBS_STREAM, *regional)


def single() -> Layout:
    return Layout(((SINGLE, ZONES),))


def parse(text: str | None) -> Layout:
    """``eu=eu,me;na=na,sa`` or ``eu,na,ap`` -> a layout; None or blank -> :func:`single`.
    Every zone must be hosted by exactly one region (unlisted zones go to the
    home region, the first)."""
    if not text or not text.strip():
        return single()
    hosts: list[tuple[str, list[str]]] = []
    for part in text.split(";" if "=" in text else ","):
        name, equals, zones = part.strip().partition("=")
        name = name.strip()
        if not _NAME.match(name):
            raise RegionError(f"region name {name!r}: use a-z, digits and _ (at most 32)")
        listed = [z.strip() for z in zones.split(",") if z.strip()] if equals else \
            list(DEFAULT_HOSTS.get(name, ()))
        if not listed and (equals or hosts):  # the first region may take just the rest
            raise RegionError(f"region {name!r} hosts no zone: name its zones, "
                              f"e.g. {name}=na,sa")
        hosts.append((name, listed))
    names = [n for n, _ in hosts]
    if len(set(names)) != len(names):
        raise RegionError(f"a region is named twice in {text!r}")
    seen: dict[str, str] = {}
    for name, zones in hosts:
        for zone in zones:
            if zone not in ZONES:
                raise RegionError(f"region {name!r} names unknown zone {zone!r} "
                                  f"(zones: {', '.join(ZONES)})")
            if zone in seen:
                raise RegionError(f"zone {zone!r} is hosted by both {seen[zone]!r} and {name!r}")
            seen[zone] = name
    hosts[0][1].extend(z for z in ZONES if z not in seen)  # the home region hosts the rest
    return Layout(tuple((n, tuple(z)) for n, z in hosts))
