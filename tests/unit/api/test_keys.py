"""Keys as accounts manage them: what a key request may say, expiry, a revoked
key forgotten at once, and wrong keys limited per client address."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError

from api.account_requests import KeyRequest, group_of
from api.auth_failures import AuthFailures
from api.errors import APIError
from api.keys import KeyRing, Principal, hash_key, key_id_of, new_key, principal_of
from bus.events import ApiKeyIssued, parse_event

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


def test_a_key_request_refuses_unknown_fields_and_bad_limits():
    for body in ({"colour": "red"}, {"spend_limit": 0}, {"spend_limit": "0.0000001"},
                 {"expires_in_days": 0}, {"name": ""}, {"name": "tab\there"},
                 {"expires_in_days": 3, "expires_at": "2027-01-01T00:00:00Z"}):
        with pytest.raises(ValidationError):
            KeyRequest.model_validate(body)


def test_a_key_request_turns_credits_into_micro_and_days_into_a_moment():
    req = KeyRequest.model_validate({"spend_limit": 2.5, "expires_in_days": 2})
    assert req.spend_limit == Decimal("2.5") and req.spend_limit_micro() == 2_500_000
    assert req.expiry(NOW) == NOW + timedelta(days=2)
    assert KeyRequest().expiry(NOW) is None and KeyRequest().spend_limit_micro() is None


def test_an_expiry_in_the_past_is_a_400_naming_it():
    with pytest.raises(APIError) as err:
        KeyRequest.model_validate({"expires_at": "2001-01-01T00:00:00Z"}).expiry(NOW)
    assert err.value.status == 400 and err.value.param == "expires_at"


def test_usage_groups_are_day_model_key_or_a_mix():
    assert group_of("day") == ("day",) and group_of("model, key") == ("model", "key")
    with pytest.raises(APIError):
        group_of("colour")


def test_older_key_events_still_parse_as_plain_unlimited_keys():
    old = '{"type": "ApiKeyIssued", "key_hash": "ab", "account": "acme", "event_id": "e1", ' \
          '"occurred_at": "2026-01-01T00:00:00Z"}'
    who = principal_of(parse_event(old))
    assert who == Principal("acme", "ab", None) and not who.admin and who.spend_limit is None


def test_a_key_expires_at_its_moment():
    digest = hash_key(new_key())
    who = principal_of(ApiKeyIssued(key_hash=digest, account="a", expires_at=NOW))
    assert who.key_id == key_id_of(digest) and len(who.key_id) == 16
    assert not who.expired(NOW - timedelta(seconds=1)) and who.expired(NOW)


def test_a_revoked_key_is_forgotten_and_never_cached_again():
    ring = KeyRing(js=None)
    key = new_key()
    digest = hash_key(key)
    who = principal_of(ApiKeyIssued(key_hash=digest, account="a"))
    ring._cache[digest] = (1e18, who)  # a hit that would otherwise last
    ring._by_id[who.key_id] = who
    ring._watching = object()  # no bus here: the watch is what calls forget
    ring.forget(digest)
    assert ring.resolved(who.key_id) is None

    async def lookup():
        return await ring.lookup(key)
    assert asyncio.run(lookup()) is None


def test_wrong_keys_from_one_address_block_it_for_the_window():
    limit = AuthFailures(max_failures=3, window_s=60)
    for t in range(3):
        limit.check("203.0.113.1", now=100.0 + t)
        limit.failed("203.0.113.1", now=100.0 + t)
    with pytest.raises(APIError) as err:
        limit.check("203.0.113.1", now=110.0)
    assert err.value.status == 429 and err.value.headers["Retry-After"] == "50"
    limit.check("203.0.113.2", now=110.0)  # another address is not touched
    limit.check("203.0.113.1", now=160.5)  # the first failure left the window


def test_no_address_is_never_blocked():
    limit = AuthFailures(max_failures=1, window_s=60)
    limit.failed(None)
    limit.check(None)


def test_a_limited_admin_key_makes_keys_no_freer_than_itself():
    from api.account_serving import _within
    capped = Principal("a", "k", None, admin=True, spend_limit=5_000_000,
                       expires_at=NOW + timedelta(days=1))
    _within(capped, 5_000_000, NOW)
    for limit, expires in ((None, NOW), (6_000_000, NOW), (1, None),
                           (1, NOW + timedelta(days=2))):
        with pytest.raises(APIError) as err:
            _within(capped, limit, expires)
        assert err.value.status == 403
    _within(Principal("a", "k", None, admin=True), None, None)


def test_concurrent_first_lookups_subscribe_to_revocations_once():
    from nats.js.errors import NotFoundError

    class Bus:  # the two calls a key ring makes, counted
        subscribed = 0

        async def subscribe(self, subject: str, cb):
            Bus.subscribed += 1
            await asyncio.sleep(0.01)
            return subject

        async def get_last_msg(self, *args, **kwargs):
            raise NotFoundError()

    bus = Bus()
    bus._nc = bus
    ring = KeyRing(bus)

    async def many():
        return await asyncio.gather(*(ring.lookup(new_key()) for _ in range(5)))
    assert asyncio.run(many()) == [None] * 5
    assert Bus.subscribed == 1 and ring._watching == "events.global.ApiKeyRevoked.>"
