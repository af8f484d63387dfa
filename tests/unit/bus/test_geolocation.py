"""GeoIP places (bus.geolocation), and the tests' own .mmdb writer read back by the
``maxminddb`` package (its C extension and its pure-Python reader alike)."""
from __future__ import annotations

import maxminddb
import pytest

from bus.geolocation import GeoIP, Place
from tests.mmdb_writer import city, write

GB = city("GB", "EU", 51.5, -0.12, radius_km=50)


@pytest.fixture
def db(tmp_path):
    return write(tmp_path / "test.mmdb", {
        "127.0.0.0/8": city("US", "NA", 40.0, -100.0),
        "127.0.0.1/32": GB,  # narrower, listed after: wins for its address only
        "::1/128": {"country": {"iso_code": "SE"}, "continent": {"code": "EU"}},
        "10.0.0.0/8": {"list": [1, 70_000, 2**40, True, "x" * 300], "pi": 3.5}})


@pytest.mark.parametrize("mode", [maxminddb.MODE_AUTO, maxminddb.MODE_FILE])
def test_the_test_writer_makes_databases_maxminddb_reads(db, mode):
    reader = maxminddb.open_database(str(db), mode)
    assert reader.get("127.0.0.1") == GB
    assert reader.get("127.0.0.2")["country"] == {"iso_code": "US"}
    assert reader.get("::1")["country"] == {"iso_code": "SE"}
    assert reader.get("10.1.2.3") == {"list": [1, 70_000, 2**40, True, "x" * 300], "pi": 3.5}
    assert reader.get("8.8.8.8") is None and reader.get("2001:db8::1") is None
    assert reader.metadata().database_type == "GeoIP2-City"


def test_a_city_record_gives_country_continent_coordinates_and_radius(db):
    geo = GeoIP(db)
    assert geo.place("127.0.0.1") == Place("GB", "EU", 51.5, -0.12, 50.0)
    assert geo.place("::1") == Place("SE", "EU")
    assert geo.zone("127.0.0.1") == "eu" and geo.zone("127.0.0.9") == "na"


def test_unknown_or_unreadable_addresses_have_no_place(db):
    geo = GeoIP(db)
    assert geo.place("8.8.8.8") is None and geo.place("not an ip") is None
    assert geo.place(None) is None and geo.zone("8.8.8.8") == "global"
    assert not GeoIP(None).enabled and GeoIP(None).place("127.0.0.1") is None
