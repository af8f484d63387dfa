"""One way to connect to NATS, for every process.

``INFERBUS_NATS_URL`` may list several servers of a cluster, comma-separated;
the client fails over between them. ``INFERBUS_NATS_NKEY_SEED`` names the
seed file of this process's own nkey user, where the server asks for one; when
it is unset, the data dir's service seed (``nats-auth/service.seed``, made by
``inferbus up`` or ``inferbus nodes add``) is used if there is one.
"""
from __future__ import annotations

import asyncio

from pathlib import Path

import nats
from nats.aio.client import Client

from bus import subjects
from bus.config import Settings
from bus.credentials import CredentialStore, public_key


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> each server URL, in order."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


def nkey_seed(settings: Settings) -> Path | None:
    """This process's nkey seed file: the configured one, else the data dir's
    service seed when present, else none (a server without auth)."""
    if settings.nats_nkey_seed:
        return settings.nats_nkey_seed
    service = CredentialStore(settings.data_dir).service_seed
    return service if service.exists() else None


async def connect(settings: Settings, name: str, *, retry: bool = True,
                  connect_timeout: float = 2.0, error_cb=None) -> Client:
    """A client of ``settings``' servers. ``retry=False`` fails fast (CLI commands);
    services reconnect forever, so a restarted server is picked up again.
    ``error_cb`` hears asynchronous server errors, e.g. a permissions violation."""
    options: dict = {"name": name, "connect_timeout": connect_timeout}
    if error_cb is not None:
        options["error_cb"] = error_cb
    if retry:
        options["max_reconnect_attempts"] = -1
    else:
        options.update(max_reconnect_attempts=0, allow_reconnect=False)
    if (seed := nkey_seed(settings)) is not None:
        options["nkeys_seed"] = str(seed)
        # Replies come to an inbox of this user's own, the only one a worker may read.
        options["inbox_prefix"] = subjects.inbox_prefix(public_key(seed))
    servers = server_list(settings.resolved_nats_url())
    if retry:
        return await nats.connect(servers, **options)
    # nats-py goes on trying a refused first connect whatever it is told: bound it.
    try:
        return await asyncio.wait_for(nats.connect(servers, **options),
                                      connect_timeout * (len(servers) + 1))
    except asyncio.TimeoutError:
        raise ConnectionError(f"no NATS server answered at {', '.join(servers)}") from None
