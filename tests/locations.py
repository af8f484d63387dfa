"""Where location checks can run in a test: a real nats-server with a system
account (user ``sys``) beside the nkey users of a data dir (bus/credentials.py),
a GeoIP database of the test's own that places loopback in London, and the
settings that switch the checks on.

Nodes ``eu-1`` (zone eu) and ``na-1`` (zone na) are granted; each connects
under its own nkey user, so the server's connection list names it.
"""
from __future__ import annotations

import subprocess
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import nats

from bus import signing
from bus.config import Settings
from bus.credentials import AUTH_DIR, CONFIG_FILE, WorkerGrant
from bus.grants import GrantBook, file_grant
from bus.node_record import ModelInfo, NodeRecord
from bus.streams import (cancels_bucket, claims_bucket, ensure_streams, grants_bucket,
                         nodes_bucket)
from cli.natsserver import binary
from tests.mmdb_writer import city, write
from tests.natsauth import AuthNatsServer, connect_as
from tests.natsd import wait_for_port

SYS_USER = SYS_PASSWORD = "sys"
LONDON, NEW_YORK = (51.5074, -0.1278), (40.7128, -74.006)
MODEL = "m"


class LocatingSettings(Settings):
    """Settings with the location fields ``bus.config.Settings`` is to have."""

    nats_system_user: str | None = None
    nats_system_password: str | None = None
    location_max_km: float = 500.0
    location_max_rtt_ms: float = 150.0
    location_check_every_s: float = 10.0


class SystemNatsServer(AuthNatsServer):
    """JetStream on a free loopback port; the data dir's nkey users land in ``$G``,
    and ``sys``/``sys`` in the system account ``SYS``."""

    def start(self) -> "SystemNatsServer":
        self.store.write_config()
        config = self.data_dir / "nats-with-sys.conf"
        # An include is resolved against the including file's folder.
        sys_user = f'{{user: "{SYS_USER}", password: "{SYS_PASSWORD}"}}'
        config.write_text(f"system_account: SYS\naccounts {{ SYS {{ users = [{sys_user}] }} }}\n"
                          f'include "{AUTH_DIR}/{CONFIG_FILE}"\n')
        log = open(self.data_dir / f"nats-sys-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store_dir), "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port)
        return self


def loopback_geoip(path: Path, country: str = "GB", continent: str = "EU",
                   at: tuple[float, float] = LONDON) -> Path:
    """A City-shaped database placing every loopback address at ``at`` in ``country``."""
    record = city(country, continent, *at, radius_km=20)
    return write(path, {"127.0.0.0/8": record, "::1/128": record})


def heartbeat(node_id: str, zone: str, at: tuple[float, float] | None) -> bytes:
    lat, lon = at or (None, None)
    return NodeRecord(node_id=node_id, zone=zone, operator="op", lat=lat, lon=lon,
                      models=(ModelInfo(name=MODEL, context_length=512),)
                      ).model_dump_json().encode()


@asynccontextmanager
async def located_network(data_dir: Path, **settings):
    """The server, its streams and buckets, the two nodes' grants filed, the service
    connection, and settings (``settings`` override) with the checks on."""
    keys = {n: signing.load_or_create_key(data_dir / "node" / f"{n}.key")
            for n in ("eu-1", "na-1")}
    server = SystemNatsServer(data_dir)
    server.store.ensure_service()
    for name, zone in (("eu-1", "eu"), ("na-1", "na")):
        server.store.grant_worker(WorkerGrant(name, zone, MODEL, signing.node_id(keys[name])))
    server.start()
    service, _ = await connect_as(server.url, data_dir, server.store.service_seed)
    js = service.jetstream()
    await ensure_streams(js)
    await claims_bucket(js, 600)
    await cancels_bucket(js, 600)
    grants, nodes = await grants_bucket(js), await nodes_bucket(js)
    for granted in server.store.grants():
        await file_grant(grants, granted.network_grant())
    book = await GrantBook().follow(grants)
    config = LocatingSettings(**{
        "nats_url": server.url, "data_dir": data_dir,
        "nats_nkey_seed": server.store.service_seed,
        "geoip_db": loopback_geoip(data_dir / "loopback.mmdb"),
        "nats_system_user": SYS_USER, "nats_system_password": SYS_PASSWORD, **settings})
    sys_nc = await nats.connect(server.url, user=SYS_USER, password=SYS_PASSWORD)
    try:
        yield SimpleNamespace(
            server=server, service=service, js=js, grants=grants, nodes=nodes, book=book,
            settings=config, sys=sys_nc, ids={n: signing.node_id(k) for n, k in keys.items()},
            seed=server.store.worker_seed)
    finally:
        await sys_nc.close()
        await book.close()
        await service.close()
        server.stop()
