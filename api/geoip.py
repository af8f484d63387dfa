"""Where a request comes from: a declared zone, else GeoIP of the client address
(the lookups themselves are ``bus.geolocation``'s, shared with the verifier).

``X-Forwarded-For`` is believed only when the peer is a trusted proxy; the
client is then the right-most address that is not itself a trusted proxy.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from api.errors import APIError
from bus.geolocation import GeoIP
from bus.zones import is_zone

ZONE_HEADER = "x-inferbus-zone"


class ZoneResolver:
    def __init__(self, geoip_db: Path | None, trusted_proxies: list[str],
                 table: dict[str, str] | None = None) -> None:
        self._geoip = GeoIP(geoip_db)
        self._trusted = [ipaddress.ip_network(c, strict=False) for c in trusted_proxies]
        self._table = table

    def _is_trusted(self, addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        if not peer or not forwarded_for or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def lookup(self, ip: str | None) -> str:
        return self._geoip.zone(ip, self._table)

    def locate(self, peer: str | None, forwarded_for: str | None) -> tuple[float, float] | None:
        """The client's coordinates when the GeoIP database has them (City databases)."""
        place = self._geoip.place(self.client_ip(peer, forwarded_for))
        return (place.lat, place.lon) if place is not None and place.located else None

    def resolve(self, declared: str | None, peer: str | None, forwarded_for: str | None) -> str:
        """The declared zone wins; an unknown declared zone is a 400."""
        if declared:
            zone = declared.strip().lower()
            if not is_zone(zone):
                raise APIError(400, f"unknown zone {declared!r}", "invalid_zone", ZONE_HEADER)
            return zone
        return self.lookup(self.client_ip(peer, forwarded_for))
