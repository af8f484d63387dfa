"""Subjects of accounts run by their owners: key revocations as every API
instance hears them, and the per-account request counters of the ``RATES``
stream. Part of :mod:`bus.subjects` (key events themselves are spelled there,
beside the rest of the log)."""
from __future__ import annotations

from bus.subjects import GLOBAL, below, event
from bus.subjects.tokens import check_token

RATES_STREAM = "RATES"  # one message per admitted request, kept for the rate window


def all_key_revocations() -> str:
    """Every key revocation (``events.global.ApiKeyRevoked.<hash>``): each API
    instance subscribes, to drop a revoked key from its cache at once (a
    JetStream publish is also a plain message on its subject)."""
    return below(event(GLOBAL, "ApiKeyRevoked"))


def account_rate(account_digest: str) -> str:
    """An account's admitted requests of the last window (the ``RATES`` stream caps
    messages per subject: the server admits at most the limit, whichever API asks).
    ``account_digest``: a hash of the account, so any account name is one token."""
    return f"rates.{check_token(account_digest, 'account digest')}"


def all_account_rates() -> str:
    return "rates.>"
