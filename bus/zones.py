"""Geo-zones and the country -> zone table.

Users edit the table by pointing ``INFERBUS_ZONES_FILE`` at a JSON object
``{"CC": "zone", ...}`` that overrides these defaults (``Settings.zone_table``).
"""
from __future__ import annotations

from bus.subjects import GLOBAL

ZONES = ("na", "sa", "eu", "me", "af", "sea", "ea", "sa_asia", "oc")

# Continent codes (MaxMind) -> zone, used when a country is not listed below.
CONTINENT_ZONE = {"NA": "na", "SA": "sa", "EU": "eu", "AF": "af", "AS": "ea", "OC": "oc", "AN": "oc"}

COUNTRY_ZONE = {
    # South-east Asia
    **dict.fromkeys(["PH", "SG", "MY", "ID", "TH", "VN", "KH", "LA", "MM", "BN", "TL"], "sea"),
    # Middle East
    **dict.fromkeys(["AE", "SA", "QA", "KW", "BH", "OM", "IL", "JO", "LB", "IQ", "IR", "SY", "YE",
                     "TR", "EG"], "me"),
    # South Asia
    **dict.fromkeys(["IN", "PK", "BD", "LK", "NP", "BT", "MV", "AF"], "sa_asia"),
    # Central America and the Caribbean route to North America
    **dict.fromkeys(["MX", "GT", "BZ", "HN", "SV", "NI", "CR", "PA", "CU", "DO", "JM", "PR"], "na"),
    # Russia and the Caucasus serve best from Europe
    **dict.fromkeys(["RU", "BY", "UA", "GE", "AM", "AZ"], "eu"),
}


def zone_for(country: str | None, continent: str | None,
             table: dict[str, str] | None = None) -> str:
    """The zone for a country (ISO code), falling back to its continent, then global."""
    table = COUNTRY_ZONE if table is None else table
    if country and country.upper() in table:
        return table[country.upper()]
    if continent and continent.upper() in CONTINENT_ZONE:
        return CONTINENT_ZONE[continent.upper()]
    return GLOBAL


def is_zone(name: str) -> bool:
    return name in ZONES or name == GLOBAL
