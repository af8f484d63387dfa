"""Every benchmark of the performance targets, one after another, then one table.

    .venv/bin/python -m bench.all [--quick] [--only bus,ledger,worker,audit,peers,partitions,
                                                 readmodels]

Each benchmark runs as its own process (``python -m bench.<name>``), prints its
own table with its raw baseline measured in the same run, and writes
bench/results/<name>.json; this command then reads those files back and prints
each target beside what was measured. ``--quick`` shortens every run (for a
smoke check, not for numbers to report). A benchmark that fails is reported
and the others still run; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.report import save

RESULTS = Path(__file__).parent / "results"
# name -> (arguments, arguments with --quick)
BENCHES = {
    "bus": ([], ["--n", "100", "--seconds", "5"]),
    "ledger": ([], ["--seconds", "1"]),
    "worker": ([], ["--tokens", "8", "--rounds", "1", "--streams", "1,8", "--ttft", "3"]),
    "audit": ([], ["--repeat", "1"]),  # it needs 100,000 events: --jobs stays
    "peers": ([], ["--rounds", "1", "--n", "50", "--seconds", "3"]),
    "clients": ([], ["--seconds", "15", "--streams", "1,8", "--rounds", "1"]),
    "partitions": ([], ["--quick"]),
    "readmodels": ([], ["--quick"]),
}


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target a result speaks to."""
    rows = []

    def row(name: str, value: float | None, goal: float, fmt: str, at_least: bool) -> None:
        if value is None:
            return
        met = value >= goal if at_least else value <= goal
        rows.append((name, fmt.format(value), "met" if met else "missed"))

    if bus := results.get("bus"):
        row("1 in flight p50 <= 2 ms", bus["stack_1"]["p50_ms"], 2, "{:.2f} ms", False)
        row("1 in flight p99 <= 8 ms", bus["stack_1"]["p99_ms"], 8, "{:.2f} ms", False)
        row("p50 <= 3x raw round trip", bus["ratio_p50"], 3, "{:.1f}x", False)
        row(">= 1,500 jobs/s, billed, 64 in flight", bus["stack_n"]["jobs_per_s"], 1500,
            "{:.0f} jobs/s", True)
    if worker := results.get("worker"):
        for r in worker.get("rows", []):
            if r.get("streams") == 1:
                row("worker 1 stream >= 0.95x generate", r.get("ratio"), 0.95, "{:.2f}x", True)
        row("worker 32 streams >= 8x 1 stream",
            worker.get("scaling", {}).get("worker_32_vs_worker_1"), 8, "{:.1f}x", True)
        rows.append(("time to first token - prefill", f"{worker['ttft']['overhead_ms']:.1f} ms",
                     "(no target)"))
    if audit := results.get("audit"):
        row("audit replay >= 20,000 events/s", audit.get("audit", {}).get("events_per_s"),
            20000, "{:,.0f} events/s", True)
    if peers := results.get("peers"):
        row("p50 <= 0.5x LiteLLM proxy", peers["ratio_p50"], 0.5, "{:.2f}x", False)
        row("p99 <= 1.0x LiteLLM proxy", peers["ratio_p99"], 1.0, "{:.2f}x", False)
        row("req/s >= 2x LiteLLM proxy, 64 in flight", peers["ratio_throughput"], 2.0,
            "{:.2f}x", True)
    for name, what in (("partitions", "billing at {} ledger shards vs 1"),
                       ("readmodels", "read models at {} partitions vs 1")):
        found = results.get(name, {}).get("rows", [])
        widest = max(found, key=lambda r: r["partitions"], default=None)
        if widest and widest.get("ratio"):
            rows.append((what.format(widest["partitions"]), f"{widest['ratio']:.2f}x",
                         "(no target)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke check")
    parser.add_argument("--only", help=f"comma-separated, of {', '.join(BENCHES)}")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHES)
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        sys.exit(f"bench.all: unknown benchmark {', '.join(unknown)}; "
                 f"choose from {', '.join(BENCHES)}")
    failed, results = [], {}
    for name in chosen:
        full, quick = BENCHES[name]
        print(f"\n=== bench.{name} {' '.join(quick if args.quick else full)}", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}",
                                *(quick if args.quick else full)])
        print(f"=== bench.{name}: exit {code} after {time.monotonic() - started:.0f} s")
        if code != 0:
            failed.append(name)
            continue
        results[name] = json.loads((RESULTS / f"{name}.json").read_text())
    rows = targets(results)
    print(f"\n{'target':<42}{'measured':>18}  verdict")
    for name, measured, verdict in rows:
        print(f"{name:<42}{measured:>18}  {verdict}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    save("all", {"quick": args.quick, "failed": failed,
                 "targets": [dict(zip(("target", "measured", "verdict"), r)) for r in rows]})
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
