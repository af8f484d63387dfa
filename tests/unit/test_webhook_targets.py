"""Webhook URLs, signatures and backoff, without a network."""
from __future__ import annotations

import asyncio

import pytest

from api.errors import APIError
from api.webhook_dispatch import event_name
from api.webhook_signing import account_secret, sign, verify
from api.webhook_targets import HEADER, check_url, retry_delay


def check(url: str, allow_private: bool = False) -> str:
    return asyncio.run(check_url(url, allow_private))


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://localhost:8080/x",
                                 "http://10.1.2.3/", "http://192.168.0.1/", "http://[::1]/",
                                 "http://169.254.169.254/latest/meta-data",
                                 "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"])
def test_loopback_and_private_receivers_are_refused_naming_the_header(url):
    with pytest.raises(APIError) as caught:
        check(url)
    assert caught.value.status == 400 and caught.value.param == HEADER
    assert HEADER in caught.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/", "javascript:alert(1)", "//x/y", "",
                                 "http://user:secret@example.com/", "http://exa mple.com/",
                                 "http://example.com:99999/", "https://" + "a" * 3000 + ".com/"])
def test_urls_that_are_not_http_receivers_are_refused(url):
    with pytest.raises(APIError) as caught:
        check(url, allow_private=True)
    assert caught.value.param == HEADER


def test_an_operator_may_allow_private_receivers():
    assert check("http://127.0.0.1:9/hook", allow_private=True) == "http://127.0.0.1:9/hook"


def test_a_public_address_is_accepted():
    assert check("https://8.8.8.8/hook") == "https://8.8.8.8/hook"


def test_a_signature_verifies_only_for_its_body_secret_and_time():
    secret = account_secret(b"network", "alice")
    assert secret.startswith("whsec_") and secret != account_secret(b"network", "bob")
    header = sign(secret, b'{"id":"j"}', at=1_000_000)
    assert verify(secret, b'{"id":"j"}', header, now=1_000_010)
    assert not verify(secret, b'{"id":"k"}', header, now=1_000_010)
    assert not verify(account_secret(b"network", "bob"), b'{"id":"j"}', header, now=1_000_010)
    assert not verify(secret, b'{"id":"j"}', header, now=1_000_000 + 3600)  # a replay
    assert not verify(secret, b'{"id":"j"}', "garbage")


def test_retries_back_off_doubling_up_to_a_bound():
    assert [retry_delay(n, 1.0, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry_delay(10_000, 1.0, 3600.0) == 3600.0


def test_event_names_are_dotted():
    assert event_name("JobCompleted") == "job.completed"
    assert event_name("JobExpired") == "job.expired"


@pytest.mark.parametrize("url", ["http://" + "a" * 300 + ".example/", "http://ex\u00e4mple..com/",
                                 "http://.invalid./"])
def test_hosts_that_cannot_be_names_are_refused_not_crashed_on(url):
    with pytest.raises(APIError) as caught:
        check(url)
    assert caught.value.status == 400
