"""Webhook signatures: ``X-Inferbus-Signature: t=<unix>,v1=<hex>``, where ``v1``
is HMAC-SHA256 of ``"<t>.<body>"`` under the account's webhook secret.

Each account's secret is derived, not stored: HMAC-SHA256 of the account id
under the network's webhook secret (``INFERBUS_WEBHOOK_SECRET``, else a random
one made once in ``<data dir>/webhook.secret``). Every API instance and
dispatcher that shares the network secret derives the same account secret,
and nothing new is kept per account. ``GET /v1/webhooks/secret`` shows it to
the account's keys. A receiver checks ``v1`` and that ``t`` is recent
(:func:`verify`; ``docs/webhooks.md`` has the same in a few lines).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from bus.config import Settings

SECRET_FILE = "webhook.secret"
PREFIX = "whsec_"
TOLERANCE_S = 300


def network_secret(settings: Settings) -> bytes:
    """The network's webhook secret: the setting, else the data dir's file, made
    on first use (exclusively, so two processes starting together agree)."""
    if settings.webhook_secret:
        return settings.webhook_secret.encode()
    path: Path = settings.data_dir / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # its maker may not have written it yet
            if value := path.read_text().strip():
                return value.encode()
            time.sleep(0.02)
        raise RuntimeError(f"{path} is empty: remove it or set INFERBUS_WEBHOOK_SECRET") from None
    value = secrets.token_hex(32)
    with os.fdopen(fd, "w") as out:
        out.write(value + "\n")
    return value.encode()


def account_secret(network: bytes, account: str) -> str:
    """The secret an account's webhooks are signed with."""
    return PREFIX + hmac.new(network, f"webhook|{account}".encode(), hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: int | None = None) -> str:
    """The ``X-Inferbus-Signature`` value of ``body`` sent at ``at`` (default now)."""
    at = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def verify(secret: str, body: bytes, header: str, now: float | None = None,
           tolerance_s: int = TOLERANCE_S) -> bool:
    """Whether ``header`` signs ``body`` under ``secret`` within ``tolerance_s``
    of ``now`` (a receiver's check; an old signature is a replay)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        at = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - at) > tolerance_s:
        return False
    expected = sign(secret, body, at).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))
