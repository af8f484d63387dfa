"""The delayed supercluster of ``bench.regions``: a delay proxy in front of every
inter-region gateway connection (``bench/delay_proxy.py``), checked on each
server's ``/gatewayz``; raw nats-py round trips over each link; where streams
and the meta leader ended up.
"""
from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
from nats.js.api import Placement, StorageType, StreamConfig

from bench.report import pct
from cli.supercluster import Server, loopback
from tests.natsd import free_port
from tests.supercluster import Supercluster

HOST = "127.0.0.1"


def stats(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": statistics.median(ms), "p95_ms": pct(ms, 0.95),
            "min_ms": min(ms), "max_ms": max(ms)}


class Proxies:
    """One ``bench.delay_proxy`` process serving every route (listen port ->
    target port, one-way delay)."""

    def __init__(self, log: Path, trace: Path | None = None) -> None:
        self.routes: list[tuple[int, int, float]] = []
        self.log, self.trace = log, trace
        self.proc: subprocess.Popen | None = None

    def add(self, target_port: int, delay_ms: float) -> int:
        port = free_port()
        self.routes.append((port, target_port, delay_ms))
        return port

    def start(self) -> None:
        specs = [f"{HOST}:{p}={HOST}:{t}@{d:g}" for p, t, d in self.routes]
        out = open(self.log, "ab")
        trace = ["--trace", str(self.trace)] if self.trace else []
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.delay_proxy", *trace, *specs],
                                     stdout=subprocess.PIPE, stderr=out)
        out.close()
        line = self.proc.stdout.readline()
        if not line.startswith(b"ready"):
            raise RuntimeError(f"delay proxy did not start: {self.log.read_text()[-1000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DelayedSupercluster(Supercluster):
    """tests/supercluster.py's harness with every inter-region gateway URL a
    proxy's: server ``a`` dials ``b`` through a route of its own, delayed by the
    pair's one-way delay (a reply comes back over ``b``'s own outbound
    connection, through ``b``'s route to ``a``)."""

    def __init__(self, root: Path, regions: list[str], delays: dict[frozenset, float],
                 proxies: Proxies) -> None:
        self.root, self.regions, self.procs = root, list(regions), {}
        self.via_port: dict[tuple[str, str], int] = {}  # (server, remote server) -> proxy

        def via(server: Server, remote: Server) -> str:
            key = (server.name, remote.name)
            if key not in self.via_port:
                delay = delays[frozenset((server.region, remote.region))]
                self.via_port[key] = proxies.add(remote.gateway_port, delay)
            return f"nats://{HOST}:{self.via_port[key]}"

        # Gossip nothing reachable: a server that heard of a region's real
        # gateway address before dialling it went around its proxy (seen).
        self.all = loopback(root, self.regions, 1, via=via, advertise=f"{HOST}:1")

    def gateways(self) -> dict[str, dict[str, dict]]:
        """Server -> remote region -> its outbound gateway: the port it dialled,
        whether that is the proxy meant for it, and the server's RTT to it."""
        out = {}
        for s in self.all:
            with urllib.request.urlopen(s.monitor_url + "/gatewayz", timeout=5) as r:
                gatewayz = json.loads(r.read())
            rows = {}
            for region, gw in (gatewayz.get("outbound_gateways") or {}).items():
                conn = gw.get("connection") or {}
                remote = next(x for x in self.all if x.region == region)
                meant = self.via_port[(s.name, remote.name)]
                rows[region] = {"port": conn.get("port"), "rtt": conn.get("rtt"),
                                "via_proxy": conn.get("port") == meant}
            inbound = gatewayz.get("inbound_gateways") or {}
            for region, conns in inbound.items():
                rows.setdefault(region, {})["inbound_rtt"] = [
                    (c.get("connection") or {}).get("rtt") for c in conns]
            out[s.name] = rows
        return out


# -- raw links ---------------------------------------------------------------

async def raw_links(pairs: list[tuple[str, str, str]], js_url: str | None, js_from: str | None,
                    placement: Placement | None, n: int = 10) -> dict:
    """Core request round trips ``src -> dst`` (a responder on dst's URL), and
    JetStream publish acks from ``js_from`` to a stream created via ``js_url``."""
    out: dict = {}
    for name, src, dst in pairs:
        responder = await nats.connect(dst)
        caller = await nats.connect(src)
        async def pong(msg) -> None:
            await msg.respond(b"ok")

        sub = await responder.subscribe("bench.rtt", cb=pong)
        await responder.flush()
        await asyncio.sleep(0.5)  # let the interest cross the gateways
        await caller.request("bench.rtt", b"x", timeout=10)  # warm
        ms = []
        for _ in range(n):
            started = time.monotonic()
            await caller.request("bench.rtt", b"x", timeout=10)
            ms.append((time.monotonic() - started) * 1000)
        out[f"core request {name}"] = stats(ms)
        await sub.unsubscribe()
        await caller.close()
        await responder.close()
    if js_url and js_from:
        admin = await nats.connect(js_url)
        js = admin.jetstream()
        cfg = StreamConfig(name="BENCHRTT", subjects=["benchrtt.>"], storage=StorageType.FILE,
                           placement=placement)
        for _ in range(60):  # a new meta leader answers 503 for a few seconds
            try:
                await js.add_stream(cfg)
                break
            except Exception:  # noqa: BLE001 - retried, then raised below
                await asyncio.sleep(0.5)
        else:
            await js.add_stream(cfg)
        pub = await nats.connect(js_from)
        pjs = pub.jetstream(timeout=10)
        for _ in range(100):  # the stream's interest reaches eu's gateway a bit later
            try:
                await pjs.publish("benchrtt.x", b"x")
                break
            except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
                await asyncio.sleep(0.1)
        ms = []
        for _ in range(n):
            started = time.monotonic()
            await pjs.publish("benchrtt.x", b"x" * 300)
            ms.append((time.monotonic() - started) * 1000)
        out["JetStream publish eu -> stream in na"] = stats(ms)
        await js.delete_stream("BENCHRTT")
        await pub.close()
        await admin.close()
    return out


# -- the stack's jobs ----------------------------------------------------------

async def stream_homes(url: str) -> dict[str, str]:
    """Every stream (KV buckets as ``KV_<bucket>``) -> the server leading it."""
    nc = await nats.connect(url)
    try:
        infos = await nc.jetstream().streams_info()
        return {i.config.name: (i.cluster.leader if i.cluster else None) for i in infos}
    finally:
        await nc.close()


def meta_leader(cluster: Supercluster) -> str | None:
    try:
        with urllib.request.urlopen(cluster.all[0].monitor_url + "/jsz", timeout=5) as r:
            return (json.loads(r.read()).get("meta_cluster") or {}).get("leader")
    except OSError:
        return None


# -- report --------------------------------------------------------------------
