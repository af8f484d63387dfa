"""GeoIP lookups (a MaxMind ``.mmdb``, ``INFERBUS_GEOIP_DB``) and great-circle distance.

Shared by the API (a client's zone and place) and the verifier (where a node's
connection comes from, ``verifier/location.py``). Country databases give a
country and continent; City databases add coordinates and their accuracy radius.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import maxminddb

from bus.subjects import GLOBAL
from bus.zones import zone_for

EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class Place:
    """Where the database puts an address; any part may be unknown."""

    country: str | None = None  # ISO 3166-1 alpha-2
    continent: str | None = None  # MaxMind continent code (EU, NA, ...)
    lat: float | None = None
    lon: float | None = None
    radius_km: float | None = None  # the database's own uncertainty about (lat, lon)

    def zone(self, table: dict[str, str] | None = None) -> str:
        return zone_for(self.country, self.continent, table)

    @property
    def located(self) -> bool:
        return self.lat is not None and self.lon is not None


class GeoIP:
    """One open database, or none (every lookup answers None)."""

    def __init__(self, path: Path | str | None) -> None:
        self._reader = maxminddb.open_database(str(path)) if path else None

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    def place(self, ip: str | None) -> Place | None:
        """The address's place; None without a database, an address or an entry."""
        if self._reader is None or not ip:
            return None
        try:
            record = self._reader.get(ip)
        except ValueError:  # not an IP address, or IPv6 in an IPv4-only database
            return None
        if not record:
            return None
        where = record.get("location") or {}
        located = "latitude" in where and "longitude" in where
        radius = where.get("accuracy_radius")
        return Place(country=(record.get("country") or {}).get("iso_code"),
                     continent=(record.get("continent") or {}).get("code"),
                     lat=where["latitude"] if located else None,
                     lon=where["longitude"] if located else None,
                     radius_km=float(radius) if located and radius is not None else None)

    def zone(self, ip: str | None, table: dict[str, str] | None = None) -> str:
        """The address's zone; ``global`` when the database does not know it."""
        place = self.place(ip)
        return place.zone(table) if place is not None else GLOBAL
