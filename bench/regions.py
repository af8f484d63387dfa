"""What a region of its own saves an EU caller: 1-token jobs from a client next
to the EU API, on a supercluster whose inter-region links are delayed by a
userspace proxy (this kernel has no netem), against the same jobs on one
central NATS server "in na" that the EU API and the EU worker reach through
the same EU-NA delay, measured in the same run.

    .venv/bin/python -m bench.regions [--requests 40] [--eu-na 40 --eu-ap 80 --na-ap 60]
                                      [--keep] [--trace]

One-way delays in ms. The supercluster (``bench.delayed_regions``): regions na
(home), eu and ap, one server each, every gateway connection through a proxy.
Its EU side: an API, a gate, a verifier and a worker on the eu server; in na
the projector, a gate, a verifier and a worker. The central baseline: one
server with the projector, gate, verifier and an na worker next to it, the
EU API and EU worker behind the proxy. The client (loopback) declares zone eu.
Cases, each on both setups: in-region (the EU worker serves it) and fallback
(the EU worker stopped: the global pool, the na worker). Per request one
streaming call (first content chunk, ``[DONE]``) and one plain call,
``max_tokens`` 1, echo model; before the stack, raw nats-py round trips over
each link. Prints p50/p95 and the ratios (supercluster / central); writes
bench/results/regions.json; ``--trace`` keeps every NATS operation the
proxies relayed. The ledger's database is shared with no delay: money's own
path across regions is not measured.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path

import httpx
from nats.js.api import Placement

from bench.delayed_regions import (HOST, DelayedSupercluster, Proxies, meta_leader, raw_links,
                                   stats, stream_homes)
from bench.report import save
from tests.natsd import NatsServer
from tests.stack import Stack
from workers.echo import write_echo_model

MODEL = "echo"
REGIONS = ["na", "eu", "ap"]  # na first: the home region
LAYOUT = "na=na,sa;eu=eu,me,af;ap=sea,ea,oc,sa_asia"
ZONE_OF = {"na": "na", "eu": "eu", "ap": "sea"}


def body(stream: bool) -> dict:
    return {"model": MODEL, "max_tokens": 1, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}]}


def one_stream(client: httpx.Client) -> tuple[float, float, dict]:
    """(time to first content chunk, time to ``[DONE]``, response headers), in s."""
    started = time.monotonic()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body(True)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"stream error: {chunk}")
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if first is None and delta.get("content"):
                first = time.monotonic() - started
        headers = dict(r.headers)
    total = time.monotonic() - started
    return (total if first is None else first), total, headers


def one_sync(client: httpx.Client) -> tuple[float, dict]:
    started = time.monotonic()
    r = client.post("/v1/chat/completions", json=body(False))
    took = time.monotonic() - started
    if r.status_code != 200:
        raise RuntimeError(f"sync: {r.status_code} {r.text[:300]}")
    return took, dict(r.headers)


def measure(base_url: str, key: str, requests: int, warmup: int) -> dict:
    """``requests`` streaming and ``requests`` plain 1-token calls, alternated,
    after ``warmup`` of each; where each plain call was served is counted."""
    ttft, stream_total, full, served = [], [], [], {}
    with httpx.Client(base_url=base_url, timeout=60, headers={
            "Authorization": f"Bearer {key}", "X-Inferbus-Zone": "eu"}) as client:
        for i in range(warmup + requests):
            first, total, _ = one_stream(client)
            took, headers = one_sync(client)
            if i < warmup:
                continue
            ttft.append(first * 1000)
            stream_total.append(total * 1000)
            full.append(took * 1000)
            where = f"{headers.get('x-inferbus-zone')}/{headers.get('x-inferbus-route')}"
            served[where] = served.get(where, 0) + 1
    return {"ttft": stats(ttft), "stream_done": stats(stream_total), "full": stats(full),
            "served": served}


def until_served_from(base_url: str, key: str, zone: str, timeout: float = 60) -> None:
    """Until plain calls are served in ``zone`` without waiting out an escalation."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=60, headers={
            "Authorization": f"Bearer {key}", "X-Inferbus-Zone": "eu"}) as client:
        good = 0
        while good < 3:
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not served from {zone} within {timeout}s")
            took, headers = one_sync(client)
            good = good + 1 if headers.get("x-inferbus-zone") == zone and took < 2 else 0
            time.sleep(0.1)


def cases(stack: Stack, key: str, requests: int, warmup: int) -> dict:
    """In-region, then with the EU worker stopped (fallback)."""
    until_served_from(stack.base_url, key, "eu")
    in_region = measure(stack.base_url, key, requests, warmup)
    stack.kill("worker-eu", signal.SIGTERM)
    until_served_from(stack.base_url, key, "na")
    fallback = measure(stack.base_url, key, requests, warmup)
    return {"in_region": in_region, "fallback": fallback}


def started_stack(root: Path, na_url: str, eu_url: str, extra: dict[str, str],
                  eu_extra: dict[str, str], gates: list[tuple[str, dict]]) -> tuple[Stack, str]:
    """The stack's processes; the EU API is the stack's ``base_url``."""
    write_echo_model(root / "models" / MODEL)
    stack = Stack(root, na_url, env_extra={"INFERBUS_SPOT_CHECK_SHARE": "0", **extra})
    eu = {"INFERBUS_NATS_URL": eu_url, **eu_extra}
    # Every stream in its region and every bucket in the home one before any
    # service starts: a gate or worker that came first would make a bucket
    # without a placement, in its own region (seen: all four in eu).
    stack.cli("status")
    stack.start("projector", "projector")
    for name, env in gates:
        stack.start(f"gate-{name}", "gate", env=env or None)
        stack.start(f"verifier-{name}", "verifier", env=env or None)
    stack.start("worker-na", "worker", "--zone", "na", "--model", MODEL, "--node-name", "worker-na")
    stack.start("worker-eu", "worker", "--zone", "eu", "--model", MODEL, "--node-name", "worker-eu",
                env=eu)
    stack.start("api-eu", "api", "--port", str(stack.port), env=eu)
    return stack, eu_url


def run_central(root: Path, delay_ms: float, requests: int, warmup: int,
                trace: bool = False) -> dict:
    (root / "nats").mkdir(parents=True)
    proxies = Proxies(root / "proxy.log", root / "proxy-trace.log" if trace else None)
    server = NatsServer(root / "nats" / "store").start()
    stack = None
    try:
        via = f"nats://{HOST}:{proxies.add(server.port, delay_ms)}"
        proxies.start()
        links = asyncio.run(raw_links([("eu -> na", via, server.url)], server.url, via, None))
        stack, _ = started_stack(root, server.url, via, {}, {}, [("na", {})])
        key = stack.new_key("bench", "1000000")
        stack.wait_for_model(key, MODEL, zones=2, timeout=120)
        return {"links": links, **cases(stack, key, requests, warmup)}
    finally:
        if stack is not None:
            stack.stop()
        server.stop()
        proxies.stop()


def run_supercluster(root: Path, delays: dict[frozenset, float], requests: int,
                     warmup: int, trace: bool = False) -> dict:
    (root / "nats").mkdir(parents=True)
    proxies = Proxies(root / "proxy.log", root / "proxy-trace.log" if trace else None)
    cluster = DelayedSupercluster(root / "nats", REGIONS, delays, proxies)
    stack = None
    try:
        proxies.start()
        cluster.start(timeout=90)
        gateways = cluster.gateways()
        bypass = [(s, r) for s, rows in gateways.items() for r, row in rows.items()
                  if "via_proxy" in row and not row["via_proxy"]]
        if bypass:
            raise RuntimeError(f"gateway connections not through the proxies: {bypass}")
        url = cluster.url
        pairs = [("eu -> na", url("eu"), url("na")), ("eu -> ap", url("eu"), url("ap")),
                 ("na -> ap", url("na"), url("ap")), ("eu -> eu", url("eu"), url("eu"))]
        links = asyncio.run(raw_links(pairs, url("na"), url("eu"),
                                      Placement(cluster="na", tags=["region:na"])))
        region = {"INFERBUS_REGIONS": LAYOUT, "INFERBUS_REGION": "na"}
        eu = {"INFERBUS_REGION": "eu"}
        stack, _ = started_stack(root, url("na"), url("eu"), region, eu,
                                 [("na", {}), ("eu", {"INFERBUS_NATS_URL": url("eu"), **eu})])
        key = stack.new_key("bench", "1000000")
        stack.wait_for_model(key, MODEL, zones=2, timeout=120)
        homes = asyncio.run(stream_homes(url("na")))
        result = {"links": links, **cases(stack, key, requests, warmup)}
        result["stream_leaders"] = homes
        result["gateways"] = cluster.gateways()  # RTTs the servers measured, after the run
        result["meta_leader"] = meta_leader(cluster)
        return result
    finally:
        if stack is not None:
            stack.stop()
        cluster.stop()
        proxies.stop()


def table(central: dict, sc: dict) -> list[str]:
    lines = [f"{'':34} {'central p50':>11} {'p95':>7} {'super p50':>10} {'p95':>7}"
             f" {'ratio p50':>9} {'p95':>6}"]
    for case in ("in_region", "fallback"):
        for metric, label in (("ttft", "first token"), ("stream_done", "stream [DONE]"),
                              ("full", "full (plain call)")):
            c, s = central[case][metric], sc[case][metric]
            lines.append(f"{case + ' ' + label:34} {c['p50_ms']:11.1f} {c['p95_ms']:7.1f} "
                         f"{s['p50_ms']:10.1f} {s['p95_ms']:7.1f} "
                         f"{s['p50_ms'] / c['p50_ms']:9.2f} {s['p95_ms'] / c['p95_ms']:6.2f}")
    return lines


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="per case, after warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--eu-na", type=float, default=40, help="one-way ms")
    parser.add_argument("--eu-ap", type=float, default=80, help="one-way ms")
    parser.add_argument("--na-ap", type=float, default=60, help="one-way ms")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs)")
    parser.add_argument("--trace", action="store_true",
                        help="log every NATS operation the proxies relay, with its time, to "
                             "<folder>/<setup>/proxy-trace.log (implies --keep)")
    args = parser.parse_args()
    args.keep = args.keep or args.trace
    delays = {frozenset(("eu", "na")): args.eu_na, frozenset(("eu", "ap")): args.eu_ap,
              frozenset(("na", "ap")): args.na_ap}
    # SIGTERM unwinds like Ctrl-C, so every process is stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="bench-regions-"))
    began = time.monotonic()
    try:
        print(f"central: one server in na, EU API + EU worker {args.eu_na:g} ms away ...",
              flush=True)
        central = run_central(root / "central", args.eu_na, args.requests, args.warmup,
                              args.trace)
        print(f"supercluster: na, eu, ap; one way eu-na {args.eu_na:g}, eu-ap {args.eu_ap:g}, "
              f"na-ap {args.na_ap:g} ms ...", flush=True)
        sc = run_supercluster(root / "supercluster", delays, args.requests, args.warmup,
                              args.trace)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs in {root}")
    print()
    print("raw links (ms, p50 / p95 of 10):")
    for where, res in (("central", central), ("supercluster", sc)):
        for name, s in res["links"].items():
            print(f"  {where:12} {name:38} {s['p50_ms']:7.1f} {s['p95_ms']:7.1f}")
    print("gateways (server -> region: via proxy, RTT the server measured):")
    for server, rows in sc["gateways"].items():
        print("  " + server + ": " + ", ".join(
            f"{r} {'proxy' if row.get('via_proxy') else 'DIRECT'} rtt {row.get('rtt')}"
            for r, row in rows.items()))
    print(f"JetStream meta leader: {sc['meta_leader']}")
    print("stream leaders:", ", ".join(f"{k} {v}" for k, v in sorted(sc["stream_leaders"].items())))
    print()
    print(f"1-token jobs, EU client -> EU API, {args.requests} per case (ms; ratio: "
          "supercluster / central):")
    for line in table(central, sc):
        print("  " + line)
    print("served (zone/route of the plain calls):",
          {f"{w} {c}": r[c]["served"] for w, r in (("central", central), ("super", sc))
           for c in ("in_region", "fallback")})
    ratios = {case: {m: sc[case][m]["p50_ms"] / central[case][m]["p50_ms"]
                     for m in ("ttft", "stream_done", "full")}
              for case in ("in_region", "fallback")}
    path = save("regions", {"delays_ms": {"eu-na": args.eu_na, "eu-ap": args.eu_ap,
                                          "na-ap": args.na_ap},
                            "requests": args.requests, "central": central, "supercluster": sc,
                            "ratios_p50": ratios, "took_s": time.monotonic() - began})
    print(f"took {time.monotonic() - began:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
