"""Location checks on a real nats-server with a system account: a node's own nkey
user finds its connection in the server's connection list, and its address (a
test GeoIP database places loopback in London, GB) and round trip are held
against its granted zone and declared coordinates."""
from __future__ import annotations

import asyncio
import time

import pytest

from bus.geolocation import GeoIP
from bus.grants import change_grant
from bus.node_location import bounds_of
from tests.locations import LONDON, NEW_YORK, heartbeat, located_network
from tests.natsauth import connect_as
from verifier import spot_checks
from verifier.judges import Judges
from verifier.location import OPEN_NETWORK, LocationChecker, connections, follow_locations

pytestmark = pytest.mark.asyncio


def checker(net) -> LocationChecker:
    s = net.settings
    return LocationChecker(net.grants, net.nodes, GeoIP(s.geoip_db), s.layout(), bounds_of(s),
                           s.zone_table())


async def connected(net, name: str, zone: str, at):
    """The node ``name`` on its own user, its heartbeat (declaring ``at``) put."""
    nc, refusals = await connect_as(net.server.url, net.settings.data_dir, net.seed(name))
    nodes = await nc.jetstream().key_value("nodes")
    await nodes.put(net.ids[name], heartbeat(net.ids[name], zone, at))
    assert refusals.seen == []
    return nc


async def filed(net, name: str):
    return await change_grant(net.grants, net.ids[name], lambda g: None)


async def test_connz_names_each_node_by_its_nkey_with_address_and_round_trip(tmp_path):
    async with located_network(tmp_path) as net:
        eu = await connected(net, "eu-1", "eu", LONDON)
        try:
            grant = await filed(net, "eu-1")
            seen = await connections(net.sys)
            (conn,) = seen[grant.nats_user]
            assert conn.ip == "127.0.0.1" and conn.region is None  # a lone server: no cluster
            assert conn.rtt_ms is not None and 0 < conn.rtt_ms < 1000
        finally:
            await eu.close()


async def test_a_node_in_its_zone_is_verified_and_one_granted_elsewhere_fails_naming_the_country(
        tmp_path):
    async with located_network(tmp_path, location_check_every_s=0.2) as net:
        eu = await connected(net, "eu-1", "eu", LONDON)
        na = await connected(net, "na-1", "na", NEW_YORK)
        stop = asyncio.Event()
        running = asyncio.create_task(spot_checks.serve(  # the verifier service checks them
            net.settings, net.service, stop, Judges(tmp_path / "models")))
        try:
            deadline = time.monotonic() + 10
            while {net.book.get(i).location for i in net.ids.values()} & {"unchecked"}:
                assert time.monotonic() < deadline, [g.location_note for g in net.book.all()]
                await asyncio.sleep(0.1)
            good, bad = net.book.get(net.ids["eu-1"]), net.book.get(net.ids["na-1"])
            assert good.location == "verified", good.location_note
            assert "GB" in good.location_note and "eu" in good.location_note
            assert bad.location == "failed"
            assert "connects from GB (zone eu), outside its granted zone na" in bad.location_note
            assert "km from where its address is" in bad.location_note  # New York vs London
            assert "127.0.0.1" not in good.location_note + bad.location_note  # public notes
            assert bad.status == good.status == "probation"  # the spot-check standing apart
        finally:
            stop.set()
            await running
            await eu.close()
            await na.close()


async def test_a_round_trip_above_the_regions_bound_fails(tmp_path):
    async with located_network(tmp_path, location_max_rtt_ms=0.001) as net:
        eu = await connected(net, "eu-1", "eu", LONDON)
        try:
            changed = await checker(net).check(net.sys, [await filed(net, "eu-1")])
            finding = changed[net.ids["eu-1"]]
            assert finding.location == "failed" and "round trip" in finding.note
        finally:
            await eu.close()


async def test_unconnected_and_open_network_nodes_stay_unchecked_saying_why(tmp_path):
    async with located_network(tmp_path) as net:
        check = checker(net)
        absent = await filed(net, "na-1")  # never connected
        opened = absent.model_copy(update={"node_id": "f" * 64, "nats_user": None})
        await change_grant(net.grants, opened.node_id, lambda _: opened)
        changed = await check.check(net.sys, [absent, opened])
        assert changed[absent.node_id].note == "not connected to the network's servers"
        assert changed[opened.node_id].note == OPEN_NETWORK
        assert {f.location for f in changed.values()} == {"unchecked"}
        assert await check.check(net.sys, [await filed(net, "na-1")]) == {}  # written once


async def test_a_verified_node_keeps_its_verdict_while_it_is_away(tmp_path):
    async with located_network(tmp_path) as net:
        check = checker(net)
        eu = await connected(net, "eu-1", "eu", LONDON)
        await check.check(net.sys, [await filed(net, "eu-1")])
        await eu.close()
        assert await check.check(net.sys, [await filed(net, "eu-1")]) == {}
        assert (await filed(net, "eu-1")).location == "verified"


async def test_a_wrong_system_password_fails_each_round_and_still_stops(tmp_path, caplog):
    async with located_network(tmp_path, nats_system_password="wrong",
                               location_check_every_s=0.1) as net:
        stop = asyncio.Event()
        running = asyncio.create_task(
            follow_locations(net.settings, net.js, net.grants, net.book, stop))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(running, 5)
        assert "location check round failed" in caplog.text
        assert {g.location for g in net.book.all()} == {"unchecked"}
