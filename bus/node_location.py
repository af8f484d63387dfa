"""Whether a node is where its grant says: the decision of the location checks.

The evidence for one node (gathered by ``verifier/location.py``): every
connection its NATS user has open (the address the server sees, the round trip
the server measured, the cluster, i.e. region, of that server), the GeoIP
database's place for each address, and the coordinates the node declares in its
heartbeat. The verdict:

- ``failed`` when a connection comes from outside the granted zone (country ->
  zone by the network's table), when the declared coordinates are farther than
  ``max_km`` (plus the database's own accuracy radius) from where an address is,
  or when even the best round trip to a server of the node's region is above
  ``max_rtt_ms`` (a round trip bounds the distance from below; a server of
  another region says nothing about that);
- ``unchecked`` when there is nothing to judge: not connected, or no address the
  database places;
- ``verified`` otherwise.

Notes are shown on the public status page: they name countries and bounds, never
an address or exact coordinates.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from bus.geolocation import Place, haversine_km
from bus.grants import Location
from bus.subjects import GLOBAL

MAX_NOTE = 500
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|us|µs|μs|ns|m|s)")
_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0,
       "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ns": 1e-6}


@dataclass(frozen=True)
class Connection:
    """One open connection of a node's NATS user, as a server reports it."""

    ip: str
    rtt_ms: float | None  # None: not measured yet
    region: str | None  # the cluster of the server it is connected to; None: unclustered


@dataclass(frozen=True)
class Bounds:
    max_km: float = 500.0
    max_rtt_ms: float = 150.0


@dataclass(frozen=True)
class Finding:
    location: Location
    note: str


def parse_rtt(text: str | None) -> float | None:
    """A Go duration as nats-server writes it ("921µs", "1.5ms", "1m2.5s") in ms."""
    if not text:
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _MS[u] for n, u in parts)


def checks_on(settings) -> bool:
    """Whether the network checks locations: it has a GeoIP database and the system
    account user that reads the servers' connection lists. (Read with ``getattr``:
    the system user settings are optional in ``bus.config``.)"""
    return bool(getattr(settings, "geoip_db", None)
                and getattr(settings, "nats_system_user", None))


def bounds_of(settings) -> Bounds:
    return Bounds(max_km=float(getattr(settings, "location_max_km", Bounds.max_km)),
                  max_rtt_ms=float(getattr(settings, "location_max_rtt_ms", Bounds.max_rtt_ms)))


def _where(place: Place) -> str:
    return place.country or place.continent or "an unknown country"


def judge(zone: str, region: str | None, seen: Sequence[tuple[Connection, Place | None]],
          declared: tuple[float, float] | None, bounds: Bounds,
          table: dict[str, str] | None = None) -> Finding:
    """The verdict on a node granted ``zone`` (hosted by ``region``; None: any
    server's round trip counts) from its connections and their places."""
    if not seen:
        return Finding("unchecked", "not connected to the network's servers")
    placed = [(c, p) for c, p in seen if p is not None and p.zone(table) != GLOBAL]
    if not placed:
        return Finding("unchecked", "its address is not in the GeoIP database")
    failures: dict[str, None] = {}  # ordered, each reason once
    for _, place in placed:
        if (found := place.zone(table)) != zone:
            failures[f"connects from {_where(place)} (zone {found}), outside its granted "
                     f"zone {zone}"] = None
    compared = [(p, haversine_km(declared[0], declared[1], p.lat, p.lon))
                for _, p in placed if declared is not None and p.located]
    for place, km in compared:
        if km > bounds.max_km + (place.radius_km or 0.0):
            failures[f"its declared coordinates are {km:,.0f} km from where its address "
                     f"is (bound {bounds.max_km:g} km)"] = None
    rtts = [c.rtt_ms for c, _ in seen if c.rtt_ms is not None
            and (region is None or c.region is None or c.region == region)]
    if rtts and min(rtts) > bounds.max_rtt_ms:
        # Coarse, so a failing node's note does not change with every measurement.
        failures[f"round trip to its region's servers is {round(min(rtts), -1):.0f} ms "
                 f"(bound {bounds.max_rtt_ms:g} ms)"] = None
    if failures:
        return Finding("failed", "; ".join(failures)[:MAX_NOTE])
    countries = sorted({_where(p) for _, p in placed})
    parts = [f"connects from {', '.join(countries)}, in its zone {zone}",
             f"declared coordinates within {bounds.max_km:g} km" if compared else
             "no declared coordinates to compare" if declared is None else
             "the GeoIP database has no coordinates to compare",
             f"round trip within {bounds.max_rtt_ms:g} ms" if rtts else
             "no round trip to its region's servers measured"]
    return Finding("verified", "; ".join(parts)[:MAX_NOTE])
