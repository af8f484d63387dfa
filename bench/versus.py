"""This checkout beside an earlier commit, on bench.bus's stack, in one run.

    .venv/bin/python -m bench.versus <commit> [--rounds 3] [--n 500] [--seconds 6]

Checks ``<commit>`` out into a temporary git worktree and starts bench.bus's
echo stack (API, gate, verifier, projector with settlement, an echo worker;
billing on) from it and from this checkout in alternating rounds (the earlier
commit first), so whatever else the shared machine does hits both alike. Each
round times ``--n`` sync 1-token chats at 1 in flight (p50, p99, and every
process's CPU per job from ``/proc``), then 64 clients back to back for
``--seconds`` (requests/s, CPU per job). Prints each round, then the medians
over rounds and this checkout's ratio to the commit's. The client is this
checkout's (``bench.httpload``); only the services run the earlier code.
Prints only: it says what a change did, and is not a target.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench import httpload
from bench.bus import BODY, PATH, echo_network, serve_echo
from bench.report import cpu_s, pct

HERE = Path(__file__).resolve().parent.parent
INFLIGHT = 64
WARM = 50
COLUMNS = (("p50 ms, 1 in flight", "p50"), ("p99 ms, 1 in flight", "p99"),
           ("CPU ms per job, 1 in flight", "cpu_1"), ("requests/s, 64 in flight", "rps"),
           ("CPU ms per job, 64 in flight", "cpu_64"))


def cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_s(pid) for name, pid in pids.items()}


def one_round(code: Path, n: int, seconds: float) -> dict:
    """Start the stack from ``code`` (its services import from there: they run as
    ``python -m cli`` in the current directory) and measure it once."""
    os.chdir(code)
    try:
        with echo_network(INFLIGHT) as (server, stack):
            key = serve_echo(stack)
            headers = {"Authorization": f"Bearer {key}"}
            pids = {name: proc.pid for name, proc in stack.procs.items()}
            pids["nats-server"] = server.proc.pid
            asyncio.run(httpload.latencies(stack.base_url, PATH, BODY, headers, WARM, WARM))
            before = cpu(pids)
            samples = asyncio.run(httpload.latencies(stack.base_url, PATH, BODY, headers, n, 0))
            time.sleep(0.5)  # the trailing settlement of the last jobs
            middle = cpu(pids)
            load = asyncio.run(httpload.closed_loop(stack.base_url, PATH, BODY, headers,
                                                    INFLIGHT, seconds))
            time.sleep(1.0)
            after = cpu(pids)
    finally:
        os.chdir(HERE)
    jobs = max(load["jobs"], 1)
    return {"p50": 1000 * pct(samples, 0.5), "p99": 1000 * pct(samples, 0.99),
            "cpu_1": 1000 * sum(middle[p] - before[p] for p in pids) / n,
            "by_process": {p: 1000 * (middle[p] - before[p]) / n for p in pids},
            "rps": load["jobs_per_s"], "cpu_64": 1000 * sum(after[p] - middle[p] for p in pids) / jobs,
            "failed": load["failed"]}


def run(commit: str, rounds: int, n: int, seconds: float) -> dict[str, list[dict]]:
    with tempfile.TemporaryDirectory(prefix="inferbus-versus-") as tmp:
        base = Path(tmp) / "code"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(base),
                        commit], check=True)
        try:
            results: dict[str, list[dict]] = {commit: [], "this checkout": []}
            for r in range(rounds):
                for label, code in ((commit, base), ("this checkout", HERE)):
                    row = one_round(code, n, seconds)
                    results[label].append(row)
                    print(f"round {r + 1}/{rounds} {label}: " + ", ".join(
                        f"{key} {row[key]:.2f}" for _, key in COLUMNS) +
                        f"; failed {row['failed'] or 'none'}", flush=True)
                    print("    CPU ms per job at 1 in flight: " + ", ".join(
                        f"{p} {v:.2f}" for p, v in row["by_process"].items()), flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)],
                           check=False)
    return results


def table(commit: str, results: dict[str, list[dict]]) -> None:
    print(f"\nmedians of {len(results[commit])} rounds each")
    print(f"{'':32s}{commit[:12]:>14s}{'this checkout':>16s}{'ratio':>9s}")
    for title, key in COLUMNS:
        old = statistics.median(r[key] for r in results[commit])
        new = statistics.median(r[key] for r in results["this checkout"])
        print(f"{title:32s}{old:14.2f}{new:16.2f}{new / old:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commit", help="the earlier commit (or branch, tag) to run beside")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=500, help="requests at 1 in flight per round")
    parser.add_argument("--seconds", type=float, default=6.0, help="of 64 in flight per round")
    args = parser.parse_args()
    table(args.commit, run(args.commit, args.rounds, args.n, args.seconds))


if __name__ == "__main__":
    main()
