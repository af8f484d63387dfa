"""Requests land in their client's zone, and go global where the zone has no node."""
import httpx
import pytest

from tests.conftest import TINY_MODEL

GB, US, PH = "81.2.69.142", "216.160.83.56", "202.196.224.1"


@pytest.mark.parametrize("ip,zone,route", [(GB, "eu", "zone"), (US, "na", "zone"),
                                           (PH, None, "global")])
def test_client_address_picks_zone_through_trusted_proxy(stack, key, ip, zone, route):
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=30,
                   json={"model": TINY_MODEL, "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {key}", "X-Forwarded-For": ip})
    assert r.status_code == 200, r.text
    assert r.headers["x-inferbus-route"] == route
    if zone:
        assert r.headers["x-inferbus-zone"] == zone
    else:  # sea has no worker: served from the global pool by some zone's worker
        assert r.headers["x-inferbus-zone"] in ("eu", "na")


def test_declared_zone_preference_is_honoured(stack, key):
    r = httpx.post(f"{stack.base_url}/v1/chat/completions", timeout=30,
                   json={"model": TINY_MODEL, "max_tokens": 2,
                         "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {key}", "X-Inferbus-Zone": "na",
                            "X-Forwarded-For": GB})
    assert (r.headers["x-inferbus-zone"], r.headers["x-inferbus-route"]) == ("na", "zone")
