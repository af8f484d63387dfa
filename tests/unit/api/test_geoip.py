"""Zone resolution: declared preference, GeoIP, and who may set X-Forwarded-For."""
import pytest

from api.errors import APIError
from api.geoip import ZoneResolver
from bus.zones import zone_for

GB, US, PH, SE = "81.2.69.142", "216.160.83.56", "202.196.224.1", "89.160.20.112"


@pytest.fixture
def resolver(geoip_db):
    return ZoneResolver(geoip_db, ["127.0.0.0/8", "10.0.0.0/8"])


@pytest.mark.parametrize("ip,zone", [(GB, "eu"), (US, "na"), (PH, "sea"), (SE, "eu"),
                                     ("2001:218::1", "ea"), ("1.2.3.4", "global")])
def test_client_address_maps_to_its_zone(resolver, ip, zone):
    assert resolver.resolve(None, ip, None) == zone


def test_declared_zone_wins_over_geoip(resolver):
    assert resolver.resolve("NA", GB, None) == "na"


def test_unknown_declared_zone_is_a_400(resolver):
    with pytest.raises(APIError) as err:
        resolver.resolve("mars", GB, None)
    assert err.value.status == 400


def test_forwarded_for_is_believed_only_from_trusted_proxies(resolver):
    assert resolver.resolve(None, "127.0.0.1", f"{PH}, 10.1.2.3") == "sea"
    assert resolver.resolve(None, US, PH) == "na"  # an untrusted peer cannot claim another IP


def test_without_a_geoip_db_everything_is_global():
    assert ZoneResolver(None, []).resolve(None, GB, None) == "global"


def test_zone_table_is_editable():
    assert zone_for("GB", "EU", {"GB": "na"}) == "na"
    assert zone_for("ZZ", None) == "global"


def test_zones_file_overrides_the_built_in_table(tmp_path, geoip_db):
    from bus.config import Settings
    edits = tmp_path / "zones.json"
    edits.write_text('{"gb": "na"}')
    table = Settings(zones_file=edits).zone_table()
    assert ZoneResolver(geoip_db, [], table).resolve(None, GB, None) == "na"
    assert table["PH"] == "sea"  # untouched entries stay


def test_zones_file_with_an_unknown_zone_is_refused(tmp_path):
    from bus.config import Settings
    edits = tmp_path / "zones.json"
    edits.write_text('{"GB": "atlantis"}')
    with pytest.raises(ValueError, match="unknown zones"):
        Settings(zones_file=edits).zone_table()
