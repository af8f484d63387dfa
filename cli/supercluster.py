"""nats-server configuration for a multi-region supercluster.

One NATS cluster per region (the cluster name is the region name), the regions
joined by gateways (gateway name = cluster name; every server lists every
region's gateway URLs, its own included). Each server is ``<region>-<i>``
tagged ``region:<r>`` (streams are placed by it, bus/regions.py) and
``az:<r>-<i>``, and JetStream's ``unique_tag: "az:"`` spreads a stream's R3
replicas over three availability zones. A one-server region still lists its
own route: without one JetStream refuses to start ("requires configured
routes or solicited leafnode for the system account").

Accounts, as measured with nats-server 2.15.1: app traffic lives in the global
account ``$G`` (the ``authorization`` users of bus/credentials.py land there),
and an explicit system account ``SYS`` with one password user (``sys``) serves
``$SYS`` requests (gatewayz, connz with RTTs) and the meta leader stepdown with
a placement, which only the system account may send. Production reads that
password from the servers' environment (``NATS_SYS_PASSWORD``). On loopback,
without an auth file, the servers also declare::

    authorization { users = [{user: app}] }
    no_auth_user: app

so a client without credentials lands in ``$G``, the account the tests use
(2.15.1 does the same implicitly when only the system account has users, but
the explicit form does not rest on that). A changed ``gateway`` block is not
reloadable (SIGHUP fails the whole reload): restart to add a region. A rendered
loopback server::

    # eu-1: a server of region eu (NATS cluster eu).
    # Supercluster: eu, na. Rendered by cli/supercluster.py.
    server_name: eu-1
    server_tags: ["region:eu", "az:eu-1"]
    listen: 127.0.0.1:41001
    http: 127.0.0.1:41004
    jetstream {
      store_dir: "/tmp/sc/eu-1"
      sync_interval: always
      # R3 replicas on three different az: tags, i.e. three different servers.
      unique_tag: "az:"
    }
    cluster {
      name: eu
      listen: 127.0.0.1:41002
      routes: [
        nats-route://127.0.0.1:41002
      ]
    }
    gateway {
      name: eu
      listen: 127.0.0.1:41003
      gateways: [
        {name: eu, urls: ["nats://127.0.0.1:41003"]}
        {name: na, urls: ["nats://127.0.0.1:42003"]}
      ]
    }
    system_account: SYS
    accounts { SYS { users = [{user: sys, password: "sys"}] } }
    authorization { users = [{user: app}] }
    no_auth_user: app
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

REGION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")  # as bus/regions.py accepts
SYS_PASSWORD_ENV = "NATS_SYS_PASSWORD"  # production: the SYS user's password


@dataclass(frozen=True)
class Server:
    """One nats-server of the supercluster: where it listens and stores."""

    region: str
    index: int  # 1-based within its region
    host: str  # how the other servers and the clients reach it
    client_port: int
    cluster_port: int
    gateway_port: int
    http_port: int
    store_dir: str
    config: Path | None = None  # the written config file (loopback)

    @property
    def name(self) -> str:
        return f"{self.region}-{self.index}"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


def check_regions(regions: list[str], servers_per_region: int) -> None:
    """Raise ValueError (one line) unless ``regions`` can name NATS clusters."""
    if not regions:
        raise ValueError("no region given, e.g. --regions eu,na,ap")
    for r in regions:
        if not REGION_NAME.match(r):
            raise ValueError(f"bad region name {r!r}: lower-case letters, digits and _, "
                             "starting with a letter, at most 32")
    if len(set(regions)) != len(regions):
        raise ValueError(f"a region is listed twice: {','.join(regions)}")
    if servers_per_region < 1:
        raise ValueError(f"--servers must be at least 1, not {servers_per_region}")


def render(server: Server, every: list[Server], bind: str, auth: str,
           via: Callable[[Server, Server], str] | None = None,
           advertise: str | None = None) -> str:
    """The config text of ``server`` in the supercluster of ``every`` server:
    it listens on ``bind`` and ends with ``auth`` (the client users). ``via``
    (``server``, a server of another region) -> the gateway URL ``server``
    dials to reach it (a delaying proxy's, say); default its gateway port.
    ``advertise``: the ``host:port`` a server tells the other regions to dial
    it at (gateways gossip it: a server that learns a region's real address
    before it dials may use it instead of ``via``'s URL)."""
    by_region: dict[str, list[Server]] = {}
    for s in every:
        by_region.setdefault(s.region, []).append(s)
    routes = "\n".join(f"    nats-route://{s.host}:{s.cluster_port}"
                       for s in by_region[server.region])

    def url(s: Server) -> str:
        if via is not None and s.region != server.region:
            return via(server, s)
        return f"nats://{s.host}:{s.gateway_port}"

    def urls(ss: list[Server]) -> str:
        return ", ".join(json.dumps(url(s)) for s in ss)
    gateways = "\n".join(f"    {{name: {r}, urls: [{urls(ss)}]}}" for r, ss in by_region.items())
    advertised = f"\n  advertise: {json.dumps(advertise)}" if advertise else ""
    return f"""# {server.name}: a server of region {server.region} (NATS cluster {server.region}).
# Supercluster: {', '.join(by_region)}. Rendered by cli/supercluster.py.
server_name: {server.name}
server_tags: ["region:{server.region}", "az:{server.name}"]
listen: {bind}:{server.client_port}
http: {bind}:{server.http_port}
jetstream {{
  store_dir: {json.dumps(server.store_dir)}
  sync_interval: always
  # R3 replicas on three different az: tags, i.e. three different servers.
  unique_tag: "az:"
}}
cluster {{
  name: {server.region}
  listen: {bind}:{server.cluster_port}
  routes: [
{routes}
  ]
}}
gateway {{
  name: {server.region}
  listen: {bind}:{server.gateway_port}{advertised}
  gateways: [
{gateways}
  ]
}}
{auth}"""


def production(regions: list[str], servers_per_region: int = 3) -> dict[str, str]:
    """File name (``nats-<region>-<i>.conf``) -> config text of every server of a
    production supercluster: hosts ``nats-<region>-<i>``, ports 4222 (clients),
    6222 (routes), 7222 (gateways), 8222 (monitor), store ``/data``. Each
    includes ``auth.conf`` (bus/credentials.py) next to it and reads the SYS
    password from ``$NATS_SYS_PASSWORD``."""
    check_regions(regions, servers_per_region)
    every = [Server(r, i, f"nats-{r}-{i}", 4222, 6222, 7222, 8222, "/data")
             for r in regions for i in range(1, servers_per_region + 1)]
    auth = ("system_account: SYS\n"
            # Unquoted: nats-server substitutes the environment variable, and
            # refuses to start when it is unset rather than run with no password.
            f"accounts {{ SYS {{ users = [{{user: sys, password: ${SYS_PASSWORD_ENV}}}] }} }}\n"
            "# Clients sign in as nkey users of the global account (deploy/auth.conf.example).\n"
            "include auth.conf\n")
    return {f"nats-{s.name}.conf": render(s, every, "0.0.0.0", auth) for s in every}


def _free_ports(n: int) -> list[int]:
    # Hold every socket until all are bound, so no port is handed out twice.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def loopback(root: Path, regions: list[str], servers_per_region: int = 1,
             ports: Mapping[str, tuple[int, int, int, int]] | None = None,
             auth: Path | None = None, sys_password: str = "sys",
             via: Callable[[Server, Server], str] | None = None,
             advertise: str | None = None) -> list[Server]:
    """Write ``<root>/<name>.conf`` for every server of a supercluster on 127.0.0.1
    and return the servers, each storing under ``<root>/<name>``.

    ``ports`` maps a server name to its (client, cluster, gateway, http) ports,
    so a re-rendered server keeps them; the others get free ports. ``auth`` is
    an ``authorization`` file to include (nkey users); without one a client
    needs no credentials and lands in the global account. ``via`` and
    ``advertise``: the gateway URL a server dials for a server of another
    region and the address it gossips, as :func:`render` takes them
    (bench/regions.py puts delaying proxies there, and gossips an address
    nothing listens on so that no gateway goes around them)."""
    check_regions(regions, servers_per_region)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"{r}-{i}" for r in regions for i in range(1, servers_per_region + 1)]
    given = dict(ports or {})
    fresh = iter(_free_ports(4 * sum(n not in given for n in names)))
    every = []
    for name in names:
        region, index = name.rsplit("-", 1)
        c, r, g, h = given.get(name) or (next(fresh), next(fresh), next(fresh), next(fresh))
        every.append(Server(region, int(index), "127.0.0.1", c, r, g, h, str(root / name),
                            root / f"{name}.conf"))
    # nats-server resolves an include against the config's folder, even an absolute path.
    users = (f"include {json.dumps(os.path.relpath(auth, root))}\n" if auth else
             "authorization { users = [{user: app}] }\nno_auth_user: app\n")
    sys_user = json.dumps(sys_password)
    text = (f"system_account: SYS\n"
            f"accounts {{ SYS {{ users = [{{user: sys, password: {sys_user}}}] }} }}\n{users}")
    for s in every:
        s.config.write_text(render(s, every, "127.0.0.1", text, via, advertise))
    return every


def region_urls(servers: list[Server], region: str) -> str:
    """The client URLs of ``region``'s servers, comma-separated (``INFERBUS_NATS_URL``)."""
    urls = [s.url for s in servers if s.region == region]
    if not urls:
        raise ValueError(f"no server in region {region!r}")
    return ",".join(urls)


def command(regions: str, servers: int, out: str) -> int:
    """``inferbus deploy render``: write the production configs into ``out``."""
    names = [r.strip() for r in regions.split(",")]
    if any(not r for r in names):
        raise ValueError(f"empty region name in {regions!r}")
    files = production(names, servers)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
        print(folder / name)
    return 0
