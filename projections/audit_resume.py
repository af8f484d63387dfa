"""The invariant checker's state as bytes and back: what an audit checkpoint
(:mod:`projections.audit_checkpoint`) carries so that the next audit folds only
the events after it into the same state a replay from the first event would
have reached.

:meth:`~projections.invariants.Checker.observe` is a fold over the log and
everything that depends on the clock or on the whole log happens in
:meth:`~projections.invariants.Checker.finish`, so the state taken *before*
``finish`` is all a later audit needs. It is taken only from an audit that
passed: no violation lines, no account flagged. Encoded as compressed JSON
(not pickle: loading it runs no code, and an operator can read it).

:func:`fingerprint` names the shapes and the code a checkpoint depends on: one
written by other code is not resumed from.
"""
from __future__ import annotations

import functools
import hashlib
import json
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

from bus.events import ReferralRewarded, parse_event
from projections import (account_checks, audit_state, invariants, layout, lifecycle,
                         projector, readmodels, residency)
from projections.audit_state import Balance, Job
from projections.invariants import Checker
from projections.readmodels import SCHEMA

FORMAT = "inferbus-audit-state-1"


def fingerprint() -> str:
    """What a checkpoint's state and rebuilt read model depend on: this format,
    the checker's per-job and per-account slots, the read models' schema, and
    the code that folds the one and applies the other. After an upgrade that
    changes any of them the next audit replays from the first event once."""
    parts = [FORMAT, *Job.__slots__, "|", *Balance.__slots__, "|", *SCHEMA, "|",
             *_code_digests()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@functools.cache
def _code_digests() -> tuple[str, ...]:
    modules = (invariants, account_checks, residency, audit_state, lifecycle, projector,
               layout, readmodels, *readmodels.PROJECTIONS)
    return tuple(hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()  # type: ignore
                 for m in modules)


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


# Per Job slot, how it is written and read back (None: as it is). A checkpoint
# holds every job ever audited: one loop over the slots, no branch per slot.
_SLOTS = Job.__slots__
_WRITE = {"deadline": _time, "closed_at": _time, "compensated_at": _time,
          "failed_checks": lambda d: {n: _time(at) for n, at in d.items()}}
_READ = {"deadline": _parse_time, "closed_at": _parse_time, "compensated_at": _parse_time,
         "failed_checks": lambda d: {n: _parse_time(at) for n, at in d.items()},
         "awards": lambda items: [tuple(i) for i in items],
         "later": lambda items: [tuple(i) for i in items]}
_WRITTEN = [(i, f) for i, f in ((_SLOTS.index(n), f) for n, f in _WRITE.items())]
_READ_AT = [(i, f) for i, f in ((_SLOTS.index(n), f) for n, f in _READ.items())]


def _job(job: Job) -> list[Any]:
    values = [getattr(job, name) for name in _SLOTS]
    for i, write in _WRITTEN:
        if values[i]:
            values[i] = write(values[i])
    return values


def _unjob(values: list[Any]) -> Job:
    if len(values) != len(_SLOTS):
        raise ValueError("a job of other slots")
    for i, read in _READ_AT:
        if values[i]:
            values[i] = read(values[i])
    job = Job.__new__(Job)
    for name, value in zip(_SLOTS, values):
        setattr(job, name, value)
    return job


def dump(checker: Checker) -> bytes:
    """The state of ``checker`` (fed, not finished, no violation) as bytes."""
    if checker.v.total or any(a.flagged for a in checker.accounts.values()):
        raise ValueError("only the state of an audit without violations is kept")
    checks = checker.account_checks
    state = {
        "format": FORMAT, "events": checker.events, "malformed": checker.malformed,
        "jobs": {job_id: _job(job) for job_id, job in checker.jobs.items()},
        "accounts": {name: [getattr(a, s) for s in Balance.__slots__]
                     for name, a in checker.accounts.items()},
        "subclouds": checker.residency.subclouds, "strict": checker.residency.strict,
        "referrer": checks.referrer, "revoked": checks.revoked,
        "rewards": {job_id: [r.model_dump(mode="json") for r in rewards]
                    for job_id, rewards in checks.rewards.items()},
        "renewed": sorted(checks.renewed), "lapsed": sorted(checks.lapsed),
    }
    return zlib.compress(json.dumps(state, separators=(",", ":")).encode(), 1)


def load(data: bytes) -> Checker:
    """A checker in the state :func:`dump` wrote; ValueError if it is not one."""
    try:
        state = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError) as exc:
        raise ValueError(f"unreadable checker state: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError("checker state of another format")
    checker = Checker()
    checker.events, checker.malformed = state["events"], state["malformed"]
    checker.jobs = {job_id: _unjob(values) for job_id, values in state["jobs"].items()}
    for name, values in state["accounts"].items():
        acct = checker.accounts[name] = Balance()
        for slot, value in zip(Balance.__slots__, values, strict=True):
            setattr(acct, slot, value)
    checker.residency.subclouds = {k: tuple(v) for k, v in state["subclouds"].items()}
    checker.residency.strict = {k: (name, tuple(zones))
                                for k, (name, zones) in state["strict"].items()}
    checks = checker.account_checks
    checks.referrer, checks.revoked = state["referrer"], state["revoked"]
    checks.rewards = {job_id: [_reward(r) for r in rewards]
                      for job_id, rewards in state["rewards"].items()}
    checks.renewed = {tuple(p) for p in state["renewed"]}
    checks.lapsed = {tuple(p) for p in state["lapsed"]}
    return checker


def _reward(fields: dict[str, Any]) -> ReferralRewarded:
    event = parse_event(json.dumps(fields))
    if not isinstance(event, ReferralRewarded):
        raise ValueError("checker state holds a referral reward of another type")
    return event
