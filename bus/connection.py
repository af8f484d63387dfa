"""One way to connect to NATS, for every process.

``INFERBUS_NATS_URL`` may list several servers of a cluster, comma-separated;
the client fails over between them. ``INFERBUS_NATS_NKEY_SEED`` names the
seed file of this process's own nkey user, where the server asks for one.
"""
from __future__ import annotations

import nats
from nats.aio.client import Client

from bus.config import Settings


def server_list(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> each server URL, in order."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


async def connect(settings: Settings, name: str, *, retry: bool = True,
                  connect_timeout: float = 2.0) -> Client:
    """A client of ``settings``' servers. ``retry=False`` fails fast (CLI commands);
    services reconnect forever, so a restarted server is picked up again."""
    options: dict = {"name": name, "connect_timeout": connect_timeout}
    if retry:
        options["max_reconnect_attempts"] = -1
    else:
        options.update(max_reconnect_attempts=0, allow_reconnect=False)
    if settings.nats_nkey_seed:
        options["nkeys_seed"] = str(settings.nats_nkey_seed)
    return await nats.connect(server_list(settings.resolved_nats_url()), **options)
