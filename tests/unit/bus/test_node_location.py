"""The location decision (bus.node_location): a node's connections, their places and its
declared coordinates against its granted zone and the distance and round-trip bounds."""
from __future__ import annotations

from pathlib import Path

import pytest

from bus.config import Settings
from bus.credentials import CredentialStore, WorkerGrant, public_key
from bus.geolocation import Place
from bus.grants import NodeGrant
from bus.node_location import Bounds, Connection, checks_on, judge, parse_rtt

LONDON, PARIS, NEW_YORK = (51.5074, -0.1278), (48.8566, 2.3522), (40.7128, -74.006)
GB = Place("GB", "EU", *LONDON, radius_km=20)
US = Place("US", "NA", *NEW_YORK, radius_km=20)
BOUNDS = Bounds(max_km=500, max_rtt_ms=150)


def conn(rtt_ms: float | None = 20.0, region: str | None = None, ip: str = "192.0.2.1"):
    return Connection(ip, rtt_ms, region)


def test_an_address_in_the_granted_zone_near_the_declared_place_is_verified():
    found = judge("eu", None, [(conn(), GB)], PARIS, BOUNDS)  # Paris-London ~340 km
    assert found.location == "verified"
    assert found.note == ("connects from GB, in its zone eu; declared coordinates within "
                          "500 km; round trip within 150 ms")


def test_an_address_outside_the_granted_zone_fails_naming_its_country():
    found = judge("na", None, [(conn(), GB)], None, BOUNDS)
    assert found.location == "failed"
    assert found.note == "connects from GB (zone eu), outside its granted zone na"


def test_the_zone_comes_from_the_networks_country_table():
    assert judge("na", None, [(conn(), GB)], None, BOUNDS, {"GB": "na"}).location == "verified"


def test_declared_coordinates_beyond_the_bound_plus_the_databases_radius_fail():
    assert judge("eu", None, [(conn(), GB)], PARIS, Bounds(max_km=330)).location == "verified"
    far = judge("eu", None, [(conn(), GB)], PARIS, Bounds(max_km=300))
    assert far.location == "failed"
    assert far.note == ("its declared coordinates are 344 km from where its address is "
                        "(bound 300 km)")


def test_a_round_trip_above_the_bound_fails_but_only_to_its_own_regions_servers():
    slow = [(conn(rtt_ms=212.0, region="eu"), GB)]
    assert judge("eu", "eu", slow, None, BOUNDS).note == \
        "round trip to its region's servers is 210 ms (bound 150 ms)"
    elsewhere = [(conn(rtt_ms=212.0, region="na"), GB)]  # another region's server: no evidence
    found = judge("eu", "eu", elsewhere, None, BOUNDS)
    assert found.location == "verified" and "no round trip" in found.note
    best = [(conn(rtt_ms=212.0), GB), (conn(rtt_ms=30.0), GB)]  # the best trip bounds distance
    assert judge("eu", None, best, None, BOUNDS).location == "verified"


def test_one_connection_from_elsewhere_fails_the_node_whatever_the_others_say():
    found = judge("eu", None, [(conn(), GB), (conn(ip="198.51.100.7"), US)], LONDON, BOUNDS)
    assert found.location == "failed"
    assert found.note.startswith("connects from US (zone na), outside its granted zone eu")


@pytest.mark.parametrize("seen,note", [
    ([], "not connected to the network's servers"),
    ([(conn(), None)], "its address is not in the GeoIP database"),
    ([(conn(), Place())], "its address is not in the GeoIP database"),
])
def test_missing_evidence_leaves_the_node_unchecked_saying_why(seen, note):
    assert (judge("eu", None, seen, LONDON, BOUNDS).location,
            judge("eu", None, seen, LONDON, BOUNDS).note) == ("unchecked", note)


def test_without_coordinates_on_either_side_only_the_zone_and_round_trip_count():
    country_only = Place("GB", "EU")
    assert "no coordinates to compare" in judge("eu", None, [(conn(), country_only)],
                                                LONDON, BOUNDS).note
    assert "no declared coordinates" in judge("eu", None, [(conn(None), GB)], None, BOUNDS).note


def test_notes_never_name_an_address():
    seen = [(conn(ip="192.0.2.44"), US)]
    assert "192.0.2.44" not in judge("eu", None, seen, LONDON, BOUNDS).note


@pytest.mark.parametrize("text,ms", [("921µs", 0.921), ("1.5ms", 1.5), ("1m2.5s", 62_500.0),
                                     ("0s", 0.0), ("2h", 7_200_000.0), ("", None),
                                     ("fast", None), ("12ms3", None)])
def test_round_trips_are_read_as_nats_server_writes_them(text, ms):
    assert parse_rtt(text) == (pytest.approx(ms) if ms is not None else None)


def test_checks_are_on_only_with_a_geoip_database_and_a_system_user(tmp_path):
    class WithSystemUser(Settings):
        nats_system_user: str | None = None
    db = tmp_path / "x.mmdb"
    assert not checks_on(Settings(geoip_db=db))
    assert not checks_on(WithSystemUser(nats_system_user="sys"))
    assert checks_on(WithSystemUser(geoip_db=db, nats_system_user="sys"))


@pytest.mark.parametrize("location,checking,believed", [
    ("verified", True, True), ("unchecked", True, False), ("failed", True, False),
    ("verified", False, True), ("unchecked", False, True), ("failed", False, False)])
def test_a_location_is_believed_when_verified_or_unchecked_by_a_network_that_does_not_check(
        location, checking, believed):
    grant = NodeGrant(node_id="a" * 64, node_name="n", operator="op", zone="eu",
                      models=("m",), location=location)
    assert grant.location_believed(checking) is believed


def test_a_workers_network_grant_names_its_nats_user(tmp_path: Path):
    store = CredentialStore(tmp_path)
    seed = store.grant_worker(WorkerGrant("eu-1", "eu", "m", "a" * 64))
    (granted,) = store.grants()
    assert granted.network_grant().nats_user == public_key(seed)
    assert public_key(seed).startswith("U")
    assert "nats_user" not in seed.with_suffix(".json").read_text()  # the seed says it
