"""Billing follows the outcome: each job's charge, judged from its own events.

The audit proves money is conserved (I1, I2), not that the right amount moved:
a job whose outcome was never settled and was later swept as expired is
refunded in full and every invariant still holds. So the soak checks, per
job, that its debit is what its first outcome asks for:

- ``JobCompleted``: the cost of its usage (capped at the reservation);
- ``JobCancelled`` by a node, with usage: the cost of what was produced;
- ``JobFailed``, ``JobExpired``, a cancel before any node ran it: nothing.

Outcomes from a node are only ever logged under its sealed lease
(``workers/runner.py`` seals before it publishes), so the first node outcome is
the one settlement admits. One race is legitimate: an outcome logged so close
to the job's deadline + grace that the expiry sweep refunded it before
settlement got to it (the projector, which runs both, was down). Those are
counted as ``late``, not failed.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from bus.events import (CreditsDebited, CreditsReserved, JobCancelled, JobCompleted,
                        JobExpired, JobFailed)
from bus.pricing import Pricing

# A projector outage (the soak holds one at most 6 s) plus its restart: an outcome
# this close to deadline + grace may lose the race with the expiry sweep.
SWEEP_RACE_S = 16.0


@dataclass
class Billing:
    checked: int = 0
    late: list[str] = field(default_factory=list)  # swept before settlement saw the outcome
    wrong: list[str] = field(default_factory=list)  # "job: charged X, outcome asks Y"


def judge(log, grace_s: float, pricing: Pricing | None = None) -> Billing:
    pricing = pricing or Pricing()
    reserved: dict[str, int] = {}
    debited: Counter[str] = Counter()
    deadline, asked, outcome_at = {}, {}, {}
    for _, e in log:
        job = getattr(e, "job_id", None)
        if isinstance(e, CreditsReserved):
            reserved[job], deadline[job] = e.amount, e.deadline
        elif isinstance(e, CreditsDebited):
            debited[job] += e.amount
        elif isinstance(e, (JobCompleted, JobCancelled, JobFailed, JobExpired)) \
                and job not in asked:
            asked[job], outcome_at[job] = charge(e, pricing), e.occurred_at
    result = Billing()
    for job, amount in reserved.items():
        if job not in asked:
            continue  # no outcome at all: the settle checks report it
        want = min(asked[job], amount)
        result.checked += 1
        if debited[job] == want:
            continue
        race_from = deadline[job] + timedelta(seconds=grace_s - SWEEP_RACE_S)
        if debited[job] == 0 and outcome_at[job] >= race_from:
            result.late.append(job)
        else:
            result.wrong.append(f"{job}: charged {debited[job]}, its outcome asks {want}")
    return result


def charge(outcome, pricing: Pricing) -> int:
    """What an outcome, admitted, is charged (micro-credits, before the cap)."""
    if isinstance(outcome, JobCompleted):
        return pricing.cost(outcome.model, outcome.usage)
    if isinstance(outcome, JobCancelled) and outcome.usage and outcome.model:  # as settlement
        return pricing.cost(outcome.model, outcome.usage)
    return 0
