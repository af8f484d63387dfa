"""Ledger aggregates: an ``Account`` per account, a ``Reservation`` per job and
a ``Deposit`` receipt per idempotent deposit.

Every change of money is an ``Account`` event (``Deposited``, ``Reserved``,
``Debited``, ``Refunded``, ``RCPAwarded``), so one account's history alone
explains its balance. ``Reservation`` and ``Deposit`` events are internal: they
exist so that the store's unique ``(originator_id, version)`` key makes a job
hold at most once, resolve at most once, and a deposit id count at most once.

Command methods check first and then trigger an event; the ``@event`` bodies
only apply state, because they also run when history is replayed.
"""
from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.utils import register_topic

from bus.credits import available, credits

# Fixed namespace: aggregate ids must never change, or stored history is lost.
LEDGER_NAMESPACE = uuid5(NAMESPACE_URL, "inferbus:ledger")
# Stored events and snapshots name these classes by topic (module:qualname). They
# were first defined in the module below; their topics stay its, so every stored
# history stays readable and new events are stored under the same names.
STORED_MODULE = "bus.ledger.domain"


@lru_cache(maxsize=65536)  # uuid5 costs ~15 us; hot accounts repeat
def account_id(account: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"account:{account}")


def reservation_id(job_id: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"reservation:{job_id}")


def deposit_receipt_id(deposit_id: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"deposit:{deposit_id}")


def replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """Apply stored events in order (``None`` and no events -> ``None``).

    eventsourcing's ``project_aggregate`` asserts a runtime-checkable Protocol
    on every event (~30 us each); ours are all known aggregate events."""
    for e in events:
        aggregate = e.mutate(aggregate)
    return aggregate


class InsufficientCredits(Exception):
    """A reservation larger than what the account can still reserve."""

    def __init__(self, account: str, needed: int, left: int) -> None:
        self.account, self.needed, self.available = account, needed, left
        super().__init__(f"account {account!r} needs {credits(needed):f} credits, "
                         f"{credits(left):f} available")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return InsufficientCredits, (self.account, self.needed, self.available)


class LedgerConflict(Exception):
    """A command was decided on state that is no longer current (for example a
    reservation read just before another thread or process resolved it): the
    application re-reads and retries, as for a version conflict."""


class Account(Aggregate):
    """Balances in micro-credits. ``balance`` = what can still be reserved.
    ``referrer``: the account whose code it signed up with (``ledger.referrals``)."""

    referrer: str | None = None  # a class default: snapshots from before referrals lack it

    @staticmethod
    def create_id(name: str) -> UUID:
        return account_id(name)

    @event("Opened")
    def __init__(self, name: str) -> None:
        self.name = name
        self.deposited = 0
        self.held = 0
        self.spent = 0
        self.rcp = 0

    @property
    def balance(self) -> int:
        return available(self.deposited, self.held, self.spent)

    def __deepcopy__(self, memo: dict[int, Any]) -> Account:
        # The repository deep-copies every cached account it hands out. All
        # attributes are immutable values (ints, str, UUID, datetimes, frozen
        # events), so copying the dict and the pending list is a full copy, at
        # a fraction of copy.deepcopy's generic cost.
        copied = object.__new__(Account)
        copied.__dict__.update(self.__dict__)
        copied.__dict__["_pending_events"] = list(self.__dict__["_pending_events"])
        return copied

    def deposit(self, amount: int, deposit_id: str | None = None) -> None:
        if amount <= 0:
            raise ValueError(f"a deposit must be positive, got {amount}")
        self._deposited(account=self.name, amount=amount, deposit_id=deposit_id)

    @event("Deposited")
    def _deposited(self, account: str, amount: int, deposit_id: str | None) -> None:
        self.deposited += amount

    def reserve(self, job_id: str, key_id: str, amount: int, zone: str, deadline: datetime,
                request_hash: str) -> None:
        if amount < 0:
            raise ValueError(f"a reservation cannot be negative, got {amount}")
        if amount > self.balance:
            raise InsufficientCredits(self.name, amount, self.balance)
        self._reserved(account=self.name, job_id=job_id, key_id=key_id, amount=amount,
                       zone=zone, deadline=deadline, request_hash=request_hash)

    @event("Reserved")
    def _reserved(self, account: str, job_id: str, key_id: str, amount: int, zone: str,
                  deadline: datetime, request_hash: str) -> None:
        self.held += amount

    def debit(self, job_id: str, amount: int, zone: str) -> None:
        if not 0 <= amount <= self.held:
            raise LedgerConflict(f"cannot debit {amount} with {self.held} held")
        self._debited(account=self.name, job_id=job_id, amount=amount, zone=zone)

    @event("Debited")
    def _debited(self, account: str, job_id: str, amount: int, zone: str) -> None:
        self.held -= amount
        self.spent += amount

    def release(self, job_id: str, amount: int, zone: str, reason: str) -> None:
        if not 0 <= amount <= self.held:
            raise LedgerConflict(f"cannot refund {amount} with {self.held} held")
        self._refunded(account=self.name, job_id=job_id, amount=amount, zone=zone,
                       reason=reason)

    @event("Refunded")
    def _refunded(self, account: str, job_id: str, amount: int, zone: str,
                  reason: str) -> None:
        self.held -= amount

    def award_rcp(self, job_id: str, node_id: str, points: int, zone: str) -> None:
        if points <= 0:
            raise ValueError(f"RCP points must be positive, got {points}")
        self._rcp_awarded(account=self.name, job_id=job_id, node_id=node_id, points=points,
                          zone=zone)

    @event("RCPAwarded")
    def _rcp_awarded(self, account: str, job_id: str, node_id: str, points: int,
                     zone: str) -> None:
        self.rcp += points

    def reimburse(self, job_id: str, amount: int, zone: str, reason: str) -> None:
        """Give back a debit (compensation for work that failed its check)."""
        if not 0 < amount <= self.spent:
            raise LedgerConflict(f"cannot reimburse {amount} with {self.spent} spent")
        self._reimbursed(account=self.name, job_id=job_id, amount=amount, zone=zone,
                         reason=reason)

    @event("Reimbursed")
    def _reimbursed(self, account: str, job_id: str, amount: int, zone: str,
                    reason: str) -> None:
        self.spent -= amount

    def revoke_rcp(self, job_id: str, node_id: str, points: int, zone: str, reason: str) -> None:
        if points <= 0:
            raise ValueError(f"revoked RCP must be positive, got {points}")
        self._rcp_revoked(account=self.name, job_id=job_id, node_id=node_id, points=points,
                          zone=zone, reason=reason)

    @event("RCPRevoked")
    def _rcp_revoked(self, account: str, job_id: str, node_id: str, points: int, zone: str,
                     reason: str) -> None:
        self.rcp -= points

    # Referrals: the checks (self, second link, cycle) are ledger.referrals'.
    @event("ReferralLinked")
    def link_referrer(self, account: str, referrer: str, code: str) -> None:
        self.referrer = referrer

    @event("ReferralRewarded")
    def reward_referral(self, account: str, referred: str, job_id: str, points: int,
                        zone: str) -> None:
        self.rcp += points

    @event("ReferralRewardRevoked")
    def revoke_referral_reward(self, account: str, referred: str, job_id: str, points: int,
                               zone: str, reason: str) -> None:
        self.rcp -= points


class Reservation(Aggregate):
    """One job's hold: ``pending`` until settled or refunded, exactly once."""

    # Who earned a referral reward on its debit, and how much (``note_referral``).
    # Class defaults: reservations stored before referrals have neither.
    referrer: str | None = None
    referral_points = 0
    revoke_reason = ""  # why a settlement was revoked (reservations revoked before: none)

    @staticmethod
    def create_id(job_id: str) -> UUID:
        return reservation_id(job_id)

    @event("Opened")
    def __init__(self, job_id: str, account: str, key_id: str, amount: int, zone: str,
                 deadline: datetime, request_hash: str) -> None:
        self.job_id = job_id
        self.account = account
        self.key_id = key_id
        self.amount = amount
        self.zone = zone
        self.deadline = deadline
        self.request_hash = request_hash
        self.status = "pending"
        self.debited = 0
        self.refunded = 0
        self.rcp = 0

    def settle(self, debited: int, operator: str | None, node_id: str | None,
               rcp: int) -> None:
        self._check_pending()
        self._settled(debited=debited, refunded=self.amount - debited, operator=operator,
                      node_id=node_id, rcp=rcp)

    @event("Settled")
    def _settled(self, debited: int, refunded: int, operator: str | None,
                 node_id: str | None, rcp: int) -> None:
        self.status = "settled"
        self.debited, self.refunded, self.rcp = debited, refunded, rcp
        self.operator, self.node_id = operator, node_id

    def revoke(self, reason: str) -> None:
        """Undo a settlement whose work failed its check: the debit goes back to the
        job's account and the RCP leaves the operator's (the caller moves both)."""
        if self.status != "settled":
            raise LedgerConflict(f"reservation for job {self.job_id} is {self.status}, "
                                 "not settled")
        self._revoked(reason=reason)

    @event("Revoked")
    def _revoked(self, reason: str) -> None:
        self.status = "revoked"
        self.revoke_reason = reason

    @event("Referred")
    def note_referral(self, referrer: str, points: int) -> None:
        self.referrer, self.referral_points = referrer, points

    def refund(self, reason: str) -> None:
        self._check_pending()
        self._refunded(refunded=self.amount, reason=reason)

    @event("Refunded")
    def _refunded(self, refunded: int, reason: str) -> None:
        self.status = "refunded"
        self.refunded = refunded

    def _check_pending(self) -> None:
        if self.status != "pending":
            raise LedgerConflict(f"reservation for job {self.job_id} is already {self.status}")


class Deposit(Aggregate):
    """Receipt of an idempotent deposit: a second one with the same id conflicts."""

    @staticmethod
    def create_id(deposit_id: str) -> UUID:
        return deposit_receipt_id(deposit_id)

    @event("Recorded")
    def __init__(self, deposit_id: str, account: str, amount: int) -> None:
        self.deposit_id = deposit_id
        self.account = account
        self.amount = amount


def _keep_stored_topics(*aggregates: type[Aggregate]) -> None:
    """Pin the topics of ``aggregates`` and their event classes to ``STORED_MODULE``."""
    for cls in aggregates:
        nested = [v for v in vars(cls).values() if isinstance(v, type)]
        for named in (cls, *nested):
            named.TOPIC = f"{STORED_MODULE}:{named.__qualname__}"  # type: ignore[attr-defined]
            register_topic(named.TOPIC, named)  # resolvable before anything is stored


_keep_stored_topics(Account, Reservation, Deposit)
