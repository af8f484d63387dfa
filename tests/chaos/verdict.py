"""Judging a soak once it has settled: every request ended, nothing stays
held, and ``inferbus audit`` passes.

A :class:`Check` is one named yes/no with a short why; the soak fails when
any check fails. The log is read whole (``tests.eventlog``) from any server of
the bus, so the checks see what the audit sees.
"""
from __future__ import annotations

import asyncio
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import httpx
import nats

from bus.events import (CreditsRefunded, CreditsReserved, JobCancelled, JobCompleted,
                        JobExpired, JobFailed, JobSubmitted)
from tests.chaos.load import TERMINAL, Result
from tests.eventlog import read_log

OUTCOME_EVENTS = (JobCompleted, JobFailed, JobCancelled, JobExpired)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class LogState:
    """What the log says is still open: jobs without an outcome, reservations
    without their closing refund."""

    jobs: list[str]
    reservations: list[str]
    outcomes: dict[str, str]  # job id -> its first outcome event's type

    @property
    def settled(self) -> bool:
        return not self.jobs and not self.reservations


def open_on_log(log) -> LogState:
    submitted, outcomes, money = set(), {}, defaultdict(Counter)
    for _, e in log:
        if isinstance(e, JobSubmitted):
            submitted.add(e.job_id)
        elif isinstance(e, OUTCOME_EVENTS):
            outcomes.setdefault(e.job_id, type(e).__name__)
        elif isinstance(e, (CreditsReserved, CreditsRefunded)):
            money[e.job_id][type(e).__name__] += 1
    held = sorted(j for j, m in money.items() if m["CreditsReserved"] > m["CreditsRefunded"])
    return LogState(sorted(submitted - outcomes.keys()), held, outcomes)


def account_held(base_url: str, key: str) -> float | None:
    try:
        r = httpx.get(f"{base_url}/v1/account", headers={"Authorization": f"Bearer {key}"},
                      timeout=10)
        return float(r.json()["held"]) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def settle(url: str, base_url: str, key: str, within_s: float
           ) -> tuple[LogState, float | None, list]:
    """Wait until the log holds no open job or reservation and the ledger holds
    nothing for the soak's account, or ``within_s`` has passed; the last view
    (open state, the ledger's held amount, the whole log)."""
    async def poll() -> tuple[LogState, float | None, list]:
        nc = await nats.connect(url.split(","), connect_timeout=2)  # any server of the bus
        try:
            js, deadline = nc.jetstream(timeout=10), time.monotonic() + within_s
            while True:
                log = await read_log(js)
                state = open_on_log(log)
                held = await asyncio.to_thread(account_held, base_url, key)
                if (state.settled and held == 0) or time.monotonic() > deadline:
                    return state, held, log
                await asyncio.sleep(2.0)
        finally:
            await nc.close()
    return asyncio.run(poll())


def histories(log, job_ids, limit: int = 20) -> dict[str, list[str]]:
    """For the report: each job's events in log order, with the node (12 hex)
    and attempt where an event has them, so an odd ending can be read."""
    wanted = set(list(job_ids)[:limit])
    found: dict[str, list[str]] = defaultdict(list)
    for _, e in log:
        if getattr(e, "job_id", None) in wanted:
            node = getattr(e, "node_id", None)
            extra = [f"node={node[:12]}" if node else "",
                     f"attempt={e.attempt}" if hasattr(e, "attempt") else "",
                     f"code={e.code}" if hasattr(e, "code") else "",
                     f"to={e.to}" if hasattr(e, "to") else ""]
            found[e.job_id].append(" ".join([type(e).__name__, *filter(None, extra)]))
    return dict(found)


def job_view(base_url: str, key: str, job_id: str) -> dict:
    r = httpx.get(f"{base_url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"},
                  timeout=10)
    return r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}


def request_checks(results: list[Result], base_url: str, key: str) -> list[Check]:
    """Each request ended in a way a client understands, each accepted job is
    over in the job read model, and each completed stream delivered exactly the
    logged text (no text twice, none missing, across failovers)."""
    broken = [r for r in results if r.outcome == "broken"]
    checks = [Check("no request broken", not broken,
                    "; ".join(f"{r.mode} {r.status} {r.job_id} {r.detail}" for r in broken[:5])
                    or f"{len(results)} requests")]
    jobs = {r.job_id: r for r in results if r.job_id}
    views = {job: job_view(base_url, key, job) for job in jobs}
    unended = [f"{j} {v['status']}" for j, v in views.items() if v["status"] not in TERMINAL]
    checks.append(Check("every accepted job ended (jobs read model)", not unended,
                        "; ".join(unended[:5]) or f"{len(jobs)} jobs"))
    wrong = []
    for job, r in jobs.items():
        if r.mode == "stream" and r.outcome == "completed":
            result = views[job].get("result") or {}
            logged = (result.get("choices") or [{}])[0].get("message", {}).get("content")
            if logged != r.text:
                wrong.append(f"{job}: streamed {r.text!r} logged {logged!r}")
    streams = sum(r.mode == "stream" and r.outcome == "completed" for r in jobs.values())
    checks.append(Check("streams delivered the logged text exactly", not wrong,
                        "; ".join(wrong[:3]) or f"{streams} streams"))
    return checks


def audit_check(stack) -> tuple[Check, str]:
    """``inferbus audit`` exits 0 and reports no reservation still open."""
    out = stack.cli("audit", check=False)
    text = (out.stdout + out.stderr).strip()
    m = re.search(r"\((\d+) open\)", text)
    open_count = int(m.group(1)) if m else None
    ok = out.returncode == 0 and open_count == 0
    return Check("inferbus audit exits 0 with nothing open", ok,
                 f"exit {out.returncode}, {open_count} open"), text


def settle_checks(state: LogState, held: float | None) -> list[Check]:
    return [
        Check("every logged job has an outcome", not state.jobs,
              f"{len(state.jobs)} without: {state.jobs[:5]}"),
        Check("every reservation closed on the log", not state.reservations,
              f"{len(state.reservations)} open: {state.reservations[:5]}"),
        Check("ledger holds nothing for the account", held == 0, f"held {held}"),
    ]
