"""A JetStream supercluster on loopback for tests: one NATS cluster per region,
joined by gateways, configured by ``cli/supercluster.loopback`` (the shape
``inferbus deploy render`` writes for production).

Clients connect without credentials and land in the global account (or, with
``auth``, sign in as that file's nkey users). Every
server keeps its ports and store dir across :meth:`Supercluster.stop_region`
and :meth:`Supercluster.start_region`, so a restarted region rejoins as
itself. Server logs go to ``<root>/<server>.log``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from cli.natsserver import binary
from cli.supercluster import Server, loopback, region_urls
from tests.natsd import wait_for_port


class Supercluster:
    """``servers_per_region`` servers in each of ``regions`` under ``root``."""

    def __init__(self, root: Path, regions: list[str], servers_per_region: int = 1,
                 auth: Path | None = None) -> None:
        self.root = root
        self.regions = list(regions)
        # ``auth``: an nkey users file (bus/credentials.py) instead of open access.
        self.all = loopback(root, self.regions, servers_per_region, auth=auth)
        self.procs: dict[str, subprocess.Popen] = {}

    def url(self, region: str) -> str:
        """That region's client URLs, comma-separated (as ``INFERBUS_NATS_URL``)."""
        return region_urls(self.all, region)

    def servers(self, region: str) -> list[Server]:
        return [s for s in self.all if s.region == region]

    def store_dir(self, server: Server | str) -> Path:
        name = server if isinstance(server, str) else server.name
        return Path(next(s.store_dir for s in self.all if s.name == name))

    def running(self, server: Server) -> bool:
        proc = self.procs.get(server.name)
        return proc is not None and proc.poll() is None

    def start(self, timeout: float = 20.0) -> "Supercluster":
        """Start every server; return once the gateways are meshed and every
        server knows the JetStream meta leader."""
        for region in self.regions:
            self._launch(region)
        self.wait_ready(timeout)
        return self

    def start_region(self, region: str, timeout: float = 20.0) -> None:
        """Restart ``region``'s servers (same ports, same store dirs) and wait
        until the supercluster is whole again."""
        self._launch(region)
        self.wait_ready(timeout)

    def _launch(self, region: str) -> None:
        for s in self.servers(region):
            if self.running(s):
                continue
            log = open(self.root / f"{s.name}.log", "ab")
            self.procs[s.name] = subprocess.Popen(
                [binary(), "-c", str(s.config)], stdout=log, stderr=subprocess.STDOUT)
            log.close()  # the child holds its own copy
        for s in self.servers(region):
            try:
                wait_for_port(s.client_port)
            except TimeoutError:
                log = (self.root / f"{s.name}.log").read_text(errors="replace")
                raise RuntimeError(f"{s.name} did not start: {log[-500:]}") from None

    def stop_region(self, region: str, sig: int = signal.SIGKILL) -> None:
        """Stop every server of ``region``: SIGKILL by default, a lost region
        that says goodbye to nobody (SIGTERM for a clean shutdown)."""
        for s in self.servers(region):
            if self.running(s):
                self.procs[s.name].send_signal(sig)
        for s in self.servers(region):
            proc = self.procs.get(s.name)
            if proc is not None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def stop(self) -> None:
        for region in self.regions:
            self.stop_region(region, signal.SIGTERM)

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until every running server reports JetStream healthy (``/healthz``:
        it knows the meta leader and is current) and has an outbound gateway
        to every other region that has a running server."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"supercluster not ready in {timeout}s (logs in {self.root})")
            time.sleep(0.1)

    def _ready(self) -> bool:
        live = [s for s in self.all if self.running(s)]
        up = {s.region for s in live}
        for s in live:
            jsz, gatewayz = _get(s, "/jsz"), _get(s, "/gatewayz")
            if jsz is None or gatewayz is None or _get(s, "/healthz") is None:
                return False
            if not (jsz.get("meta_cluster") or {}).get("leader"):
                return False
            outbound = set(gatewayz.get("outbound_gateways") or {})
            if not up - {s.region} <= outbound:
                return False
        return True

    def find(self, marker: bytes) -> dict[str, list[Path]]:
        """Server name -> every file under its store dir (messages, raft logs,
        metadata, recursively) whose bytes contain ``marker``."""
        found: dict[str, list[Path]] = {}
        for s in self.all:
            hits = []
            for folder, _, files in os.walk(s.store_dir):
                for f in files:
                    path = Path(folder) / f
                    try:
                        if marker in path.read_bytes():
                            hits.append(path)
                    except OSError:  # a file the server removed while we walked
                        continue
            found[s.name] = sorted(hits)
        return found


def _get(server: Server, path: str) -> dict | None:
    """A monitor endpoint's JSON, or None when it is not 200 (yet)."""
    try:
        with urllib.request.urlopen(server.monitor_url + path, timeout=1) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None
