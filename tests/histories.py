"""Consistent, randomized event histories of a credit network (seeded).

What the ledger, the API, the workers and settlement would log together:
deposits, then jobs that reserve their worst case, run on some operator's
node, end completed (signed; debit the cost, refund the rest, award RCP unless
the operator is the job's own account), cancelled (the produced tokens
charged), failed or expired (refunded in full), or stay in flight. Several
jobs run at once, so their events interleave, and a job's reservation is
logged after its submission now and then (the ledger relay lags). A job whose
account cannot cover its worst case is declined and logs nothing, as the API
answers 402. :func:`signed_job` builds one job by hand, to break a rule.
Used by the audit tests and ``bench/audit.py``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator

from nacl.signing import SigningKey

from bus.credits import MICRO
from bus.account_events import ReferralLinked, ReferralRewarded, ReferralRewardRevoked
from bus.events import (CREDIT_EVENTS, ChatMessage, CreditsDebited, CreditsDeposited, CreditsRefunded,
                        CreditsReserved, Event, JobCancelled, JobCompleted, JobExpired, JobFailed,
                        JobStarted, JobSubmitted, RCPAwarded, RCPRevoked, Sampling, Usage,
                        output_hash)
from bus.partitions import shard_of_account, stamp
from bus.signing import node_id, sign_output, sign_result
from ledger import AccountView

MODEL = "tiny"
ZONES = ("eu", "na", "sea", "global")
PROMPT_PRICE, COMPLETION_PRICE = 1_000, 2_000  # micro-credits per token
USAGE = Usage(prompt_tokens=10, completion_tokens=20)
OUTCOMES = ("completed",) * 14 + ("cancelled", "cancelled", "failed", "expired", "pending")


@dataclass
class History:
    events: list[tuple[str, Event]]  # (zone to log on, event), in log order
    ledger: dict[str, AccountView]  # what the ledger holds after these events
    operators: dict[str, str]  # node id -> operator account


class _Books:
    def __init__(self) -> None:
        self.acct: dict[str, dict[str, int]] = {}

    def __getitem__(self, name: str) -> dict[str, int]:
        return self.acct.setdefault(name, dict(deposited=0, held=0, spent=0, rcp=0))

    def balance(self, name: str) -> int:
        a = self[name]
        return a["deposited"] - a["held"] - a["spent"]


def _job(rng: random.Random, books: _Books, i: int, account: str, node: SigningKey,
         operator: str, now: datetime, signed_as: str,
         stamped: bool) -> Iterator[tuple[str, Event]]:
    job_id, zone = f"job-{i:06d}", rng.choice(ZONES)
    if stamped:  # as the API mints it: the account's slot as the last hex digit
        job_id = stamp(f"{job_id}-0", account)
    max_tokens = rng.randint(4, 64)
    prompt = " ".join(rng.choice(("why", "sky", "blue", "tell", "me")) for _ in range(8))
    worst = (64 + len(prompt)) * PROMPT_PRICE + max_tokens * COMPLETION_PRICE
    if books.balance(account) < worst:
        return  # declined (402): nothing logged
    outcome = rng.choice(OUTCOMES)
    deadline = now + (timedelta(hours=1) if outcome == "pending" else timedelta(minutes=-10))
    books[account]["held"] += worst
    reserved = CreditsReserved(account=account, job_id=job_id, key_id=f"key-{account}",
                               amount=worst, zone=zone, deadline=deadline)
    submitted = JobSubmitted(
        job_id=job_id, account=account, key_id=f"key-{account}", model=MODEL, kind="chat",
        messages=(ChatMessage(role="user", content=prompt),), zone=zone, route="zone",
        sampling=Sampling(max_tokens=max_tokens), deadline=deadline)
    first, second = (reserved, submitted) if rng.random() < 0.8 else (submitted, reserved)
    yield zone, first
    yield zone, second
    nid = node_id(node)
    yield zone, JobStarted(job_id=job_id, node_id=nid, zone=zone, attempt=1)
    usage = Usage(prompt_tokens=rng.randint(5, 40), completion_tokens=rng.randint(1, max_tokens))
    cost = usage.prompt_tokens * PROMPT_PRICE + usage.completion_tokens * COMPLETION_PRICE
    if outcome == "pending":
        return
    if outcome == "completed":
        text, tier = f"answer {i}", rng.randint(1, 3)
        sig = sign_output(node, job_id, 1, MODEL, submitted.input_hash(), output_hash(text)) \
            if signed_as == "output" else sign_result(node, job_id, operator, tier, 1,
                                                      submitted.input_hash(), output_hash(text),
                                                      usage)
        yield zone, JobCompleted(
            job_id=job_id, model=MODEL, node_id=nid, operator=operator, tier=tier, zone=zone,
            attempt=1, text=text, finish_reason="stop", usage=usage,
            input_hash=submitted.input_hash(), output_hash=output_hash(text), signature=sig)
    elif outcome == "cancelled":
        yield zone, JobCancelled(job_id=job_id, zone=zone, reason="client went away",
                                 model=MODEL, node_id=nid, usage=usage)
    elif outcome == "failed":
        yield zone, JobFailed(job_id=job_id, node_id=nid, zone=zone, code="model_error",
                              message="boom")
    else:
        yield zone, JobExpired(job_id=job_id, zone=zone)
    # The books change as each money event is logged, never earlier: a later
    # job's reservation must fit the balance the log shows at that point.
    a = books[account]
    debit = cost if outcome in ("completed", "cancelled") else None
    if debit is not None:
        a["held"] -= debit
        a["spent"] += debit
        yield zone, CreditsDebited(account=account, job_id=job_id, amount=debit, zone=zone)
    a["held"] -= worst - (debit or 0)
    yield zone, CreditsRefunded(account=account, job_id=job_id, amount=worst - (debit or 0),
                                zone=zone, reason="settled" if debit is not None else outcome)
    if outcome == "completed" and operator != account:
        points = usage.completion_tokens * tier
        books[operator]["rcp"] += points
        yield zone, RCPAwarded(operator=operator, job_id=job_id, node_id=nid, points=points,
                               zone=zone)


def credit_history(seed: int, *, jobs: int, accounts: int = 20, nodes: list[SigningKey],
                   concurrency: int = 8, now: datetime | None = None,
                   signed_as: str = "output", stamped: bool = False) -> History:
    """A consistent history of about ``jobs`` jobs (those declined log nothing).
    The last node is run by an operator that is also a consumer account, so
    some jobs are self-jobs (no RCP). Completions are signed as nodes sign them
    now (``bus.signing.sign_output``), or in the earlier form (``signed_as=
    "result"``, which a reader verifies after trying today's form first).
    ``stamped``: job ids carry their account's slot, as the API mints them
    (``bus.partitions``)."""
    rng, books = random.Random(seed), _Books()
    now = now or datetime.now(timezone.utc)
    names = [f"acct-{i:03d}" for i in range(accounts)]
    operators = {node_id(k): f"op-{n}" for n, k in enumerate(nodes)}
    operators[node_id(nodes[-1])] = names[0]
    events: list[tuple[str, Event]] = []

    def deposit(name: str) -> None:
        amount = rng.randint(5, 50) * MICRO
        books[name]["deposited"] += amount
        events.append(("global", CreditsDeposited(account=name, amount=amount)))

    for name in names:
        deposit(name)
    running: list[Iterator[tuple[str, Event]]] = []
    started = 0
    while started < jobs or running:
        while started < jobs and len(running) < concurrency:
            node = rng.choice(nodes)
            running.append(_job(rng, books, started, rng.choice(names), node,
                                operators[node_id(node)], now, signed_as, stamped))
            started += 1
        stream = rng.choice(running)
        step = next(stream, None)
        if step is None:
            running.remove(stream)
        else:
            events.append(step)
        if rng.random() < 0.002:  # a top-up now and then
            deposit(rng.choice(names))
    ledger = {name: AccountView(name, books.balance(name), a["held"], a["spent"],
                                  a["deposited"], a["rcp"]) for name, a in books.acct.items()}
    return History(events, ledger, operators)


def signed_job(key: SigningKey, job: str, account: str, operator: str, *, debit: int = 250_000,
               award_to: tuple[str, str] | None = None, forged: bool = False,
               reserve: int = MICRO) -> list[tuple[str, Event]]:
    """One job run on ``key``'s node, settled by the rules unless told otherwise:
    ``award_to`` = (operator, node) of its RCP award, ``forged`` a bad signature."""
    nid, deadline = node_id(key), datetime.now(timezone.utc) + timedelta(minutes=5)
    sub = JobSubmitted(job_id=job, account=account, key_id=f"key-{account}", model="m",
                       kind="chat", messages=(ChatMessage(role="user", content="hi"),),
                       sampling=Sampling(max_tokens=32), zone="eu", route="zone",
                       deadline=deadline)
    sig = sign_result(key, job, operator, 1, 1, sub.input_hash(), output_hash("ok"), USAGE)
    if forged:  # the node signed other token counts than the event claims
        sig = sign_result(key, job, operator, 1, 1, sub.input_hash(), output_hash("ok"),
                          Usage(prompt_tokens=1, completion_tokens=1))
    events: list[tuple[str, Event]] = [
        ("global", CreditsDeposited(account=account, amount=2 * reserve)),
        ("eu", CreditsReserved(account=account, job_id=job, key_id=f"key-{account}",
                               amount=reserve, zone="eu", deadline=deadline)),
        ("eu", sub),
        ("eu", JobCompleted(job_id=job, model="m", node_id=nid, operator=operator, zone="eu",
                            attempt=1, text="ok", finish_reason="stop", usage=USAGE,
                            input_hash=sub.input_hash(), output_hash=output_hash("ok"),
                            signature=sig))]
    if debit:
        events.append(("eu", CreditsDebited(account=account, job_id=job, amount=debit, zone="eu")))
    events.append(("eu", CreditsRefunded(account=account, job_id=job, amount=reserve - debit,
                                         zone="eu", reason="settled")))
    if award_to is not None:
        events.append(("eu", RCPAwarded(operator=award_to[0], job_id=job, node_id=award_to[1],
                                        points=20, zone="eu")))
    return events


def relayed_shard(event: Event, n: int) -> int | None:
    """The ledger shard (of ``n``) whose relay logs ``event``: the account it
    credits or debits, the operator of an award, the referrer of a reward; None
    for what the ledger does not log (a job's own events: their slot routes them)."""
    if n == 1:
        return None
    if isinstance(event, (RCPAwarded, RCPRevoked)):
        return shard_of_account(event.operator, n)
    if isinstance(event, (ReferralRewarded, ReferralRewardRevoked)):
        return shard_of_account(event.referrer, n)
    if isinstance(event, (*CREDIT_EVENTS, ReferralLinked)):
        return shard_of_account(event.account, n)
    return None
