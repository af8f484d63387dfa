"""A seeded simulation of discovery and dispatch over a churning network, using the
real ``LiveNodes`` liveness rule and the real ``plan``/``candidates``.

    .venv/bin/python -m bench.simulation [--seconds 300] [--nodes 1000] [--rate 40]

About ``--nodes`` nodes live at any time across every zone, placed around real
cities, tiers 1-6 skewed low; every simulated second some die (crash: their
heartbeats stop, so the view keeps them for up to ``LIVE_S``) and others join.
Clients anywhere send a mix of jobs (10% heavy). Measured: in-zone hits,
fallbacks (global queue or a node of another zone), dispatches whose first
choice was already dead (stale view), queue jobs stranded in a zone whose last
node died, and ``plan()`` latency over exactly 1,000 live nodes beside a plain
list-comprehension filter timed in the same run. Prints a table and writes
bench/results/simulation.json.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from dataclasses import dataclass, field

from api.discovery import Constraints, Policy, plan
from api.live_nodes import LiveNodes
from bench.report import pct, save
from bus.node_record import ModelInfo, NodeRecord

TICK_S = 0.1  # heartbeats land on one of ten phases per second
CITIES = {  # zone -> (lat, lon) of places where nodes and clients gather
    "na": [(40.7, -74.0), (41.9, -87.6), (32.8, -96.8), (34.1, -118.2), (47.6, -122.3),
           (43.7, -79.4), (19.4, -99.1), (33.7, -84.4)],
    "sa": [(-23.5, -46.6), (-34.6, -58.4), (4.7, -74.1), (-12.0, -77.0), (-33.4, -70.7)],
    "eu": [(51.5, -0.1), (50.1, 8.7), (48.9, 2.4), (52.4, 4.9), (59.3, 18.1), (40.4, -3.7),
           (52.2, 21.0), (55.8, 37.6)],
    "me": [(25.2, 55.3), (24.7, 46.7), (32.1, 34.8), (41.0, 29.0), (30.0, 31.2)],
    "af": [(6.5, 3.4), (-1.3, 36.8), (-26.2, 28.0), (5.6, -0.2), (33.6, -7.6)],
    "sea": [(1.35, 103.8), (-6.2, 106.8), (14.6, 121.0), (13.8, 100.5), (10.8, 106.7)],
    "ea": [(35.7, 139.7), (37.6, 127.0), (31.2, 121.5), (39.9, 116.4), (22.3, 114.2),
           (25.0, 121.5)],
    "sa_asia": [(19.1, 72.9), (28.6, 77.2), (12.97, 77.6), (24.9, 67.0), (23.8, 90.4)],
    "oc": [(-33.9, 151.2), (-37.8, 145.0), (-36.8, 174.8), (-31.95, 115.9)],
}
NODE_SHARE = {"na": 24, "eu": 26, "ea": 15, "sea": 8, "sa_asia": 7, "sa": 7, "me": 6, "oc": 4,
              "af": 3}
CLIENT_SHARE = {"na": 22, "eu": 22, "ea": 14, "sea": 10, "sa_asia": 10, "sa": 8, "me": 6,
                "oc": 4, "af": 4}
TIER_WEIGHTS = [35, 25, 18, 11, 7, 4]  # tiers 1..6: most nodes are small
# model -> (lowest tier that can hold it, share of eligible nodes serving it, request share)
MODELS = {"llama-3.1-8b": (1, 0.60, 0.55), "smollm2-1.7b": (1, 0.30, 0.25),
          "qwen2.5-32b": (3, 0.50, 0.13), "llama-3.1-70b": (5, 0.80, 0.05),
          "mixtral-8x22b": (6, 0.50, 0.02)}  # rare: small zones often have none live


class SimLiveNodes(LiveNodes):
    """The real LiveNodes (liveness and forgetting crashed nodes), on the simulated clock."""

    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(clock=lambda: self.now)


@dataclass
class SimNode:
    record: NodeRecord
    phase: int  # the tick within each second when it heartbeats
    dies_at: float
    finish: list[float] = field(default_factory=list)  # queued jobs' finish times, FIFO

    def beat(self, now: float) -> NodeRecord:
        self.finish = [f for f in self.finish if f > now]
        return self.record.model_copy(update={"busy": min(1, len(self.finish)),
                                              "queue_depth": max(0, len(self.finish) - 1)})

    def take(self, now: float, seconds: float) -> None:
        self.finish.append(max([now, *self.finish]) + seconds)


def new_node(rng: random.Random, i: int, now: float, lifetime: float) -> SimNode:
    zone = rng.choices(list(NODE_SHARE), list(NODE_SHARE.values()))[0]
    lat, lon = rng.choice(CITIES[zone])
    tier = rng.choices(range(1, 7), TIER_WEIGHTS)[0]
    models = [m for m, (lo, share, _) in MODELS.items() if tier >= lo and rng.random() < share]
    models = models or ["smollm2-1.7b"]
    vram = [0, 8, 16, 24, 48, 80][tier - 1]
    rec = NodeRecord(node_id=f"n{i:06d}", zone=zone, operator=f"op{i % 97}", tier=tier,
                     lat=lat + rng.gauss(0, 0.4), lon=lon + rng.gauss(0, 0.4),
                     gpu="cpu" if tier == 1 else f"gpu-t{tier}", vram_total_gb=vram,
                     vram_free_gb=vram * rng.uniform(0.2, 0.9),
                     models=tuple(ModelInfo(name=m, context_length=8192) for m in models))
    return SimNode(rec, rng.randrange(10), now + rng.expovariate(1 / lifetime))


@dataclass
class Request:
    zone: str
    where: tuple[float, float] | None
    model: str
    prompt: int
    max_tokens: int
    constraints: Constraints | None


def new_request(rng: random.Random, located: float) -> Request:
    zone = rng.choices(list(CLIENT_SHARE), list(CLIENT_SHARE.values()))[0]
    lat, lon = rng.choice(CITIES[zone])
    where = (lat + rng.gauss(0, 1), lon + rng.gauss(0, 1)) if rng.random() < located else None
    model = rng.choices(list(MODELS), [v[2] for v in MODELS.values()])[0]
    heavy = rng.random() < 0.10
    prompt, max_tokens = ((rng.randint(2048, 8000), rng.randint(256, 2048)) if heavy
                          else (rng.randint(20, 1500), rng.randint(16, 512)))
    asked = Constraints(model, near=where, within_km=300) if where and rng.random() < 0.03 else None
    return Request(zone, where, model, prompt, max_tokens, asked)


def simulate(args: argparse.Namespace) -> dict:
    rng, policy, view = random.Random(args.seed), Policy(), SimLiveNodes()
    alive: dict[str, SimNode] = {}
    counts = dict.fromkeys(["requests", "in_zone", "fallback", "global", "out_of_zone",
                            "stale_first_choice", "stale_all", "stranded", "rejected_503",
                            "heavy", "heavy_on_strong", "out_of_zone_heavy"], 0)
    reasons: dict[str, int] = {}
    live_sizes, next_id, joins_per_tick = [], 0, args.nodes / args.lifetime * TICK_S
    for _ in range(args.nodes):
        alive[f"n{next_id:06d}"] = new_node(rng, next_id, 0.0, args.lifetime)
        next_id += 1
    for tick in range(int(args.seconds / TICK_S)):
        now = view.now = tick * TICK_S
        for node_id in [n for n, s in alive.items() if s.dies_at <= now]:
            del alive[node_id]  # a crash: no withdrawal, the view ages it out after LIVE_S
        for _ in range(poisson(rng, joins_per_tick)):
            alive[f"n{next_id:06d}"] = new_node(rng, next_id, now, args.lifetime)
            next_id += 1
        for sim in alive.values():
            if sim.phase == tick % 10:
                view.update(sim.beat(now), at=now)
        if now < args.warmup:
            continue
        live = view.live()
        live_sizes.append(len(live))
        for _ in range(poisson(rng, args.rate * TICK_S)):
            req = new_request(rng, args.located)
            p = plan(policy, live, req.model, req.zone, req.where, req.prompt, req.max_tokens,
                     req.constraints)
            reasons[p.reason] = reasons.get(p.reason, 0) + 1
            counts["requests"] += 1
            heavy = policy.is_heavy(req.prompt, req.max_tokens)
            served = dispatch(rng, p, req, alive, counts, now, heavy)
            if served is None:
                continue
            counts["heavy"] += heavy
            counts["heavy_on_strong"] += heavy and served.record.tier >= policy.heavy_min_tier
            if p.route == "global" or served.record.zone != req.zone:
                counts["fallback"] += 1
                counts["global" if p.route == "global" else "out_of_zone"] += 1
                counts["out_of_zone_heavy"] += heavy and p.route != "global"
            else:
                counts["in_zone"] += 1
    return {"counts": counts, "reasons": reasons, "nodes_joined_total": next_id,
            "live_nodes": {"min": min(live_sizes), "mean": statistics.fmean(live_sizes),
                           "max": max(live_sizes)},
            "entries_held_by_live_nodes_view": len(view._nodes), "view": view}


def poisson(rng: random.Random, lam: float) -> int:
    n, p, limit = 0, 1.0, math.exp(-lam)
    while (p := p * rng.random()) > limit:
        n += 1
    return n


def dispatch(rng, p, req: Request, alive: dict[str, SimNode], counts: dict, now: float,
             heavy: bool) -> SimNode | None:
    """Who actually runs the job: the first planned node still alive, or the
    queue's least-loaded living worker (who would pull it first)."""
    seconds = rng.uniform(10, 30) if heavy else rng.uniform(0.5, 4)
    if p.route == "nodes":
        if not p.nodes:
            counts["rejected_503"] += 1
            return None
        if p.nodes[0] not in alive:
            counts["stale_first_choice"] += 1
        for node_id in p.nodes:
            if node_id in alive:
                alive[node_id].take(now, seconds)
                return alive[node_id]
        counts["stale_all"] += 1  # the API would fall back to the zone's queue
    pool = [s for s in alive.values() if (p.route == "global" or s.record.zone == req.zone)
            and any(m.name == req.model for m in s.record.models)]
    if not pool:
        counts["stranded"] += 1  # every worker of the zone died since the view saw one
        return None
    low = min(len(s.finish) for s in pool)
    chosen = rng.choice([s for s in pool if len(s.finish) == low])
    chosen.take(now, seconds)
    return chosen


def latency(args: argparse.Namespace, view: SimLiveNodes) -> dict:
    """``plan()`` over exactly 1,000 live nodes, interleaved with a raw filter over the
    same list (zone + model, what plain zone routing needs) so both see the same machine."""
    rng, policy = random.Random(args.seed + 1), Policy()
    live = view.live()[:1000]
    assert len(live) == 1000, f"only {len(live)} live nodes: raise --nodes"
    plans, raw, live_calls = [], [], []
    for _ in range(args.latency_n):
        req = new_request(rng, args.located)
        t0 = time.perf_counter_ns()
        plan(policy, live, req.model, req.zone, req.where, req.prompt, req.max_tokens,
             req.constraints)
        t1 = time.perf_counter_ns()
        [r for r in live if r.zone == req.zone and any(m.name == req.model for m in r.models)]
        t2 = time.perf_counter_ns()
        view.live()
        t3 = time.perf_counter_ns()
        plans.append((t1 - t0) / 1000)
        raw.append((t2 - t1) / 1000)
        live_calls.append((t3 - t2) / 1000)
    return {name: {"n": len(s), "p50_us": pct(s, 0.5), "p99_us": pct(s, 0.99)}
            for name, s in (("plan", plans), ("raw_filter", raw), ("live_view", live_calls))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--nodes", type=int, default=1100, help="live nodes at steady state")
    parser.add_argument("--lifetime", type=float, default=300, help="mean node life, s")
    parser.add_argument("--rate", type=float, default=40, help="requests per simulated s")
    parser.add_argument("--located", type=float, default=0.7,
                        help="share of clients whose location is known")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--latency-n", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    sim = simulate(args)
    lat = latency(args, sim.pop("view"))
    c, served = sim["counts"], sim["counts"]["requests"] - sim["counts"]["rejected_503"] \
        - sim["counts"]["stranded"]
    dispatched = sum(v for k, v in sim["reasons"].items() if k != "zone" and k != "global") \
        - c["rejected_503"]
    rates = {"in_zone_hit_rate": c["in_zone"] / served, "fallback_rate": c["fallback"] / served,
             "global_rate": c["global"] / served, "out_of_zone_rate": c["out_of_zone"] / served,
             "out_of_zone_heavy_rate": c["out_of_zone_heavy"] / served,
             "stale_first_choice_share_of_node_dispatches": c["stale_first_choice"] / dispatched,
             "stale_first_choice_share_of_requests": c["stale_first_choice"] / c["requests"],
             "stranded_share": c["stranded"] / c["requests"],
             "rejected_503_share": c["rejected_503"] / c["requests"],
             "heavy_on_tier_ge_4": c["heavy_on_strong"] / max(1, c["heavy"])}
    result = {"config": vars(args), **sim, "rates": rates, "latency": lat,
              "plan_over_raw_p50": lat["plan"]["p50_us"] / lat["raw_filter"]["p50_us"]}
    ln = sim["live_nodes"]
    print(f"{args.seconds:.0f} simulated s, {sim['nodes_joined_total']} nodes in all, live "
          f"{ln['min']}-{ln['max']} (mean {ln['mean']:.0f}), {c['requests']} requests; "
          f"plans: {sim['reasons']}")
    print(f"{'metric':<44}{'value':>10}")
    for name, value in rates.items():
        print(f"{name:<44}{value * 100:>9.2f}%")
    print(f"{'decision latency (1,000 live nodes)':<34}{'p50 us':>10}{'p99 us':>10}")
    for name, row in lat.items():
        print(f"{name:<34}{row['p50_us']:>10.1f}{row['p99_us']:>10.1f}")
    print(f"plan/raw p50: {result['plan_over_raw_p50']:.1f}x; the view holds "
          f"{sim['entries_held_by_live_nodes_view']} entries for {ln['max']} live nodes")
    save("simulation", result)


if __name__ == "__main__":
    main()
