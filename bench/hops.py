"""Where one request's milliseconds go: every NATS message of a sync 1-token
chat, in the order the server carried them, timed from the HTTP send.

    .venv/bin/python -m bench.hops [--n 200] [--show 1] [--inflight 64] [--seconds 10]
                                   [--settle-apart]

Starts the stack ``bench.bus`` runs (echo worker, gate, verifier, projector,
billing on), sends ``--n`` requests one at a time while a wiretap subscribes
to ``>`` on the same server, and prints, for the request
nearest the median, each message's subject (ids masked) and the milliseconds
since the request was sent; then, over all ``--n``, the median gap between
consecutive hops of the chain. The wiretap sees a message when the server
forwards it, so a gap is the time the sender took to produce the next message
(its CPU and its wait for an earlier answer), plus loopback. A JetStream
delivery carries its message's own subject, so a job or an event shows twice:
when it is published, and when a consumer (a worker's pull, the projector)
receives it.

The tap costs the server one more delivery per message; the gaps, not the
total, are what it is for. Then, with the tap gone, ``--inflight`` clients for
``--seconds``: each process's CPU time per completed job (user + system, from
``/proc``), which is what a bigger machine's jobs/s follows. Prints only: it
is a profile, not a target.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from collections import defaultdict

import nats

from bench import httpload
from bench.bus import BODY, PATH, echo_network, serve_echo
from bench.report import cpu_s

_ID = re.compile(r"[0-9a-f]{32}|[0-9A-Za-z]{22,}")
_NOISE = ("$JS.EVENT.", "$SYS.", "_INBOX.", "ib.status.", "$JS.API.CONSUMER.INFO",
          "$JS.API.STREAM.INFO")


def masked(subject: str) -> str:
    return _ID.sub("*", subject)


async def traced(base_url: str, key: str, nats_url: str, n: int
                 ) -> list[list[tuple[float, str]]]:
    """For each of ``n`` requests: (ms since its send, masked subject) per message."""
    nc = await nats.connect(nats_url)
    seen: list[tuple[float, str]] = []

    async def tap(msg) -> None:
        seen.append((time.perf_counter(), msg.subject))
    await nc.subscribe(">", cb=tap)  # every subject, the JetStream API's included
    await nc.flush()
    conn = httpload.Connection(base_url, PATH, BODY, {"Authorization": f"Bearer {key}"})
    traces = []
    for _ in range(n + 20):
        await asyncio.sleep(0.05)  # the last request's tail (settlement, relay) goes by
        seen.clear()
        start = time.perf_counter()
        status, _ = await conn.post()
        end = time.perf_counter()
        assert status == 200, status
        await asyncio.sleep(0.02)
        trace = [((t - start) * 1000, masked(s)) for t, s in seen
                 if not s.startswith(_NOISE)]
        trace.append(((end - start) * 1000, "<- HTTP answer"))
        traces.append(sorted(trace))
    conn.close()
    await nc.close()
    return traces[20:]


def report(traces: list[list[tuple[float, str]]], show: int) -> None:
    by_total = sorted(traces, key=lambda tr: next(t for t, s in tr if s == "<- HTTP answer"))
    totals = [next(t for t, s in tr if s == "<- HTTP answer") for tr in by_total]
    print(f"{len(traces)} requests: p50 {statistics.median(totals):.2f} ms, "
          f"min {totals[0]:.2f}, max {totals[-1]:.2f}")
    for trace in by_total[len(by_total) // 2:len(by_total) // 2 + show]:
        print("\nthe median request, message by message (ms since the HTTP send):")
        last = 0.0
        for t, subject in trace:
            print(f"{t:8.2f}  +{t - last:5.2f}  {subject}")
            last = t
    gaps: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        answer = next(t for t, s in trace if s == "<- HTTP answer")
        last = 0.0
        for t, subject in trace:
            if t <= answer:
                gaps[subject].append(t - last)
                last = t
    print("\nmedian gap before each hop, up to the answer, over all requests:")
    for subject, values in sorted(gaps.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{statistics.median(values):8.2f} ms  x{len(values):<5} {subject}")


def cpu_per_job(stack, server, key: str, inflight: int, seconds: float) -> None:
    """Each process's CPU milliseconds per job while ``inflight`` clients load it."""
    pids = {name: proc.pid for name, proc in stack.procs.items()} | {"nats-server":
                                                                    server.proc.pid}
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    load = asyncio.run(httpload.closed_loop(stack.base_url, PATH, BODY,
                                            {"Authorization": f"Bearer {key}"}, inflight,
                                            seconds))
    used = {name: cpu_s(pid) - before[name] for name, pid in pids.items()}
    jobs = load["jobs"]
    print(f"\n{inflight} in flight for {seconds:.0f} s: {jobs} jobs, "
          f"{load['jobs_per_s']:.0f} jobs/s; CPU per job by process:")
    for name, spent in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"{1000 * spent / max(jobs, 1):8.2f} ms  {name}")
    print(f"{1000 * sum(used.values()) / max(jobs, 1):8.2f} ms  in all "
          f"(the settling after the load not included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--show", type=int, default=1)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--settle-apart", action="store_true",
                        help="the money service as its own process (`inferbus settle`) beside "
                             "`inferbus projector --no-settle`, so each one's CPU shows")
    args = parser.parse_args()
    with echo_network(args.inflight) as (server, stack):
        key = serve_echo(stack, args.settle_apart)
        report(asyncio.run(traced(stack.base_url, key, server.url, args.n)), args.show)
        cpu_per_job(stack, server, key, args.inflight, args.seconds)


if __name__ == "__main__":
    main()
