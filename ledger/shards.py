"""A ledger in shards: each account's money in one shard, chosen by its slot.

``open_ledger(settings)`` gives the plain :class:`~ledger.application.Ledger`
for one shard (``INFERBUS_LEDGER_PARTITIONS`` unset or 1), and :class:`Shards`
for several: the same calls, each routed to the shard that holds its account
(a deposit, a hold, an account view) or its job (a resolution, a reservation
view: the job id carries its account's slot, ``bus.partitions``). A group of
commands is split by shard, each part saved in its own shard, and the outcomes
come back in order.

What crosses shards is points, never credits: a resolution in its job's shard
owes the node operator's RCP and the referrer's reward to accounts that may
live elsewhere, and :meth:`Shards.resolve_many` has those shards receive them
(:mod:`ledger.transfers`, at most once each) before it returns. Plans are
kept in the first shard, which every shard asks when a subscription starts.

Every process of a deployment must run the same shard count. A ledger opened
with another count than it was written with is refused: its accounts would be
looked for in the wrong shards.
"""
from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar, Union

import psycopg

from bus.config import Settings
from bus.partitions import check_partitions, shard_of_account, shard_of_job
from ledger.application import Ledger, Reserved, Resolved, returned_or_raised
from ledger.commands import Refund, Reserve, Resolve, Revoke, Settle
from ledger.outcomes import AccountView, Resolution
from ledger.persistence import PROBE_TIMEOUT_S, ledger_env, shard_name
from ledger.referrals import ReferralError
from ledger.transfers import Transfer

C = TypeVar("C")
Books = Union[Ledger, "Shards"]  # what a ledger user holds: one shard or several


def open_ledger(settings: Settings) -> Books:
    """The ledger ``settings`` name: one shard, or :class:`Shards`."""
    if check_partitions(settings.ledger_partitions) > 1:
        return Shards.open(settings)
    if _second_shard_exists(settings):
        raise ValueError("this ledger was written in several shards: set "
                         "INFERBUS_LEDGER_PARTITIONS to their count")
    return Ledger.open(settings)


def _second_shard_exists(settings: Settings) -> bool:
    """Whether shard 1's file or schema is there (a ledger of one shard has none)."""
    if not settings.database_url:
        return settings.sqlite_path(shard_name("ledger", 1)).exists()
    schema = ledger_env(settings, 1)["POSTGRES_SCHEMA"]
    with psycopg.connect(settings.database_url, connect_timeout=PROBE_TIMEOUT_S) as conn:
        return conn.execute("SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
                            "LIMIT 1", (schema,)).fetchone() is not None


class Shards:
    """Every shard of one ledger, behind the calls of one :class:`Ledger`."""

    def __init__(self, ledgers: Sequence[Ledger]) -> None:
        self.ledgers, self.n = list(ledgers), len(ledgers)
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="ledger-shard")
        for ledger in self.ledgers:
            ledger.directory = self  # referral codes and links are looked up across shards

    @classmethod
    def open(cls, settings: Settings) -> Shards:
        ledgers: list[Ledger] = []
        try:
            for k in range(check_partitions(settings.ledger_partitions)):
                ledgers.append(Ledger.open(settings, k))
            for ledger in ledgers:
                _check_holds_own(ledger)
        except BaseException:
            for ledger in ledgers:
                ledger.close()
            raise
        return cls(ledgers)

    def of_account(self, account: str) -> Ledger:
        return self.ledgers[shard_of_account(account, self.n)]

    def of_job(self, job_id: str) -> Ledger:
        return self.ledgers[shard_of_job(job_id, self.n)]

    # Money
    def deposit(self, account: str, amount: int, deposit_id: str | None = None) -> AccountView:
        return self.of_account(account).deposit(amount=amount, account=account,
                                                deposit_id=deposit_id)

    def reserve(self, account: str, job_id: str, amount: int, **kwargs: Any):
        return returned_or_raised(self.reserve_many([Reserve(account, job_id, amount, **kwargs)])[0])

    def reserve_many(self, requests: Sequence[Reserve]) -> list[Reserved]:
        """As :meth:`Ledger.reserve_many`, each hold in its account's shard. A job id
        without its account's slot (the API stamps every one) would never settle:
        that request alone is refused (ValueError)."""
        out: list = [None] * len(requests)
        stamped = []
        for i, r in enumerate(requests):
            if shard_of_job(r.job_id, self.n) != shard_of_account(r.account, self.n):
                out[i] = ValueError(f"job {r.job_id} does not carry account {r.account}'s slot")
            else:
                stamped.append(i)
        held = self._by_shard([requests[i] for i in stamped],
                              lambda r: shard_of_account(r.account, self.n),
                              lambda k, part: self.ledgers[k].reserve_many(part))
        for i, outcome in zip(stamped, held, strict=True):
            out[i] = outcome
        return out

    def resolve_many(self, commands: Sequence[Resolve]) -> list[Resolved]:
        """Each command in its job's shard; then every shard owed points receives
        them (at most once each, all shards at once). A resolution counts only with
        what it owes received: where a shard could not receive, each command that
        owed it gets the exception, and its retry finds the same transfers again."""
        outcomes = self._by_shard(commands, lambda c: shard_of_job(c.job_id, self.n),
                                  lambda k, part: self.ledgers[k].resolve_many(part))
        owed: dict[int, list[Transfer]] = defaultdict(list)
        for outcome in outcomes:
            for t in getattr(outcome, "transfers", ()):
                owed[shard_of_account(t.account, self.n)].append(t)

        def receive(k: int) -> Exception | None:
            try:
                self.ledgers[k].receive(owed[k])
            except Exception as exc:  # noqa: BLE001 - only what owed this shard waits
                return exc
            return None
        shards = list(owed)  # one shard owed (the usual case): no thread hop
        answers = [receive(shards[0])] if len(shards) == 1 else self._pool.map(receive, shards)
        failed = {k: exc for k, exc in zip(shards, answers) if exc is not None}
        for i, outcome in enumerate(outcomes):
            for t in getattr(outcome, "transfers", ()):
                if (k := shard_of_account(t.account, self.n)) in failed:
                    outcomes[i] = failed[k]
                    break
        return outcomes

    def settle(self, job_id: str, actual: int, *, operator: str | None = None,
               node_id: str | None = None, points: int = 0) -> Resolution:
        return returned_or_raised(self.resolve_many(
            [Settle(job_id, actual, operator, node_id, points)])[0])

    def refund(self, job_id: str, reason: str) -> Resolution:
        return returned_or_raised(self.resolve_many([Refund(job_id, reason)])[0])

    def revoke(self, job_id: str, node_id: str, reason: str) -> Resolution:
        return returned_or_raised(self.resolve_many([Revoke(job_id, node_id, reason)])[0])

    def account(self, account: str) -> AccountView:
        return self.of_account(account).account(account)

    def reservation(self, job_id: str):
        return self.of_job(job_id).reservation(job_id)

    def accounts(self) -> list[AccountView]:
        return sorted((a for ledger in self.ledgers for a in ledger.accounts()),
                      key=lambda a: a.account)

    # Referrals
    def referral_code(self, account: str) -> str:
        return self.of_account(account).referral_code(account)

    def referrer_of(self, account: str) -> str | None:
        return self.of_account(account).referrer_of(account)

    def code_owner(self, code: str) -> str:
        for ledger in self.ledgers:
            try:
                return ledger.code_owner(code)
            except ReferralError:
                continue
        raise ReferralError(f"unknown referral code {code!r}")

    def sign_up(self, account: str, code: str | None = None) -> AccountView:
        return self.of_account(account).sign_up(account, code)

    # Subscriptions: plans live in the first shard (each logged once), a subscription
    # in its account's shard.
    def define_plan(self, name: str, credits: int, period_s: float):
        return self.ledgers[0].define_plan(name, credits, period_s)

    def plan(self, name: str):
        return self.ledgers[0].plan(name)

    def start_subscription(self, account: str, plan_name: str, now=None):
        return self.of_account(account).start_subscription(account, plan_name, now)

    def cancel_subscription(self, account: str):
        return self.of_account(account).cancel_subscription(account)

    def subscription(self, account: str):
        return self.of_account(account).subscription(account)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for ledger in self.ledgers:
            ledger.close()

    def _by_shard(self, items: Sequence[C], shard: Callable[[C], int],
                  run: Callable[[int, list[C]], list]) -> list:
        """``run`` each shard's part of ``items``, the parts at once (each shard
        commits on its own database: one shard's fsync need not wait for another's),
        and the outcomes in ``items``' order. A part that fails as a whole (its
        database is down) fails its own commands only: each gets the exception."""
        parts: dict[int, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            parts[shard(item)].append(i)
        out: list = [None] * len(items)

        def part(k: int) -> list:
            try:
                return run(k, [items[i] for i in parts[k]])
            except Exception as exc:  # noqa: BLE001 - the other shards' commands stand
                return [exc] * len(parts[k])
        if len(parts) == 1:
            (k,) = parts
            answers = {k: part(k)}
        else:
            answers = dict(zip(parts, self._pool.map(part, parts)))
        for k, indices in parts.items():
            for i, outcome in zip(indices, answers[k], strict=True):
                out[i] = outcome
        return out


def _check_holds_own(ledger: Ledger, sample: int = 500) -> None:
    """Refuse a shard whose first accounts belong to other shards: the ledger was
    written with another shard count."""
    for view in ledger.account_names(sample):
        if ledger.foreign(view):
            raise ValueError(
                f"ledger shard {ledger.shard} holds account {view!r} of shard "
                f"{shard_of_account(view, ledger.shards)}: it was written with another "
                f"INFERBUS_LEDGER_PARTITIONS than {ledger.shards}")
