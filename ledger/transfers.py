"""Points that cross ledger shards: an operator's RCP, a referrer's reward.

A job's reservation and its account live in one shard (``bus.partitions``),
but the node operator it pays and the referrer of its account may live in
another. A resolution changes only its own shard's accounts; what it owes an
account of another shard is read off the resolved reservation itself
(:func:`owed`), which records the operator, node, points, referrer and reward.
So whatever settles a job again (a redelivered outcome answered
``already=True``) finds the same transfers, and the receiving shard applies
each at most once, by a receipt keyed by the job and the kind of transfer
(:class:`Transfers.receive`). A crash between the two saves is healed by the
outcome's redelivery: settlement acks only after both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from ledger.bulk_load import select_many
from ledger.domain import LEDGER_NAMESPACE, Account, Reservation
from ledger.persistence import guarded

Kind = Literal["rcp", "rcp-revoked", "referral", "referral-revoked"]


@dataclass(frozen=True)
class Transfer:
    """Points owed to ``account`` (of another shard) for ``job_id``'s resolution."""

    kind: Kind
    account: str
    job_id: str
    points: int
    zone: str
    node_id: str = ""
    referred: str = ""  # the paying account, for a referral reward
    reason: str = ""


def transfer_id(kind: str, job_id: str) -> UUID:
    return uuid5(LEDGER_NAMESPACE, f"transfer:{kind}:{job_id}")


class TransferReceipt(Aggregate):
    """A transfer received: a second one for the same job and kind conflicts."""

    @staticmethod
    def create_id(kind: str, job_id: str) -> UUID:
        return transfer_id(kind, job_id)

    @event("Received")
    def __init__(self, kind: str, job_id: str, account: str, points: int) -> None:
        self.kind, self.job_id, self.account, self.points = kind, job_id, account, points


def owed(res: Reservation, foreign: Callable[[str], bool]) -> tuple[Transfer, ...]:
    """What resolved ``res`` owes accounts for which ``foreign`` is true, in the order
    the receiving shard applies them (an award before its revocation)."""
    if res.status not in ("settled", "revoked"):
        return ()
    out: list[Transfer] = []
    operator, referrer = getattr(res, "operator", None), res.referrer
    revoked = res.status == "revoked"
    reason = getattr(res, "revoke_reason", "")
    if operator and res.rcp > 0 and foreign(operator):
        out.append(Transfer("rcp", operator, res.job_id, res.rcp, res.zone, res.node_id or ""))
        if revoked:
            out.append(Transfer("rcp-revoked", operator, res.job_id, res.rcp, res.zone,
                                res.node_id or "", reason=reason))
    if referrer and res.referral_points > 0 and foreign(referrer):
        out.append(Transfer("referral", referrer, res.job_id, res.referral_points, res.zone,
                            referred=res.account))
        if revoked:
            out.append(Transfer("referral-revoked", referrer, res.job_id, res.referral_points,
                                res.zone, referred=res.account, reason=reason))
    return tuple(out)


def _apply(t: Transfer, acct: Account) -> None:
    if t.kind == "rcp":
        acct.award_rcp(t.job_id, t.node_id, t.points, t.zone)
    elif t.kind == "rcp-revoked":
        acct.revoke_rcp(t.job_id, t.node_id, t.points, t.zone, t.reason)
    elif t.kind == "referral":
        acct.reward_referral(account=t.account, referred=t.referred, job_id=t.job_id,
                             points=t.points, zone=t.zone)
    else:
        acct.revoke_referral_reward(account=t.account, referred=t.referred, job_id=t.job_id,
                                    points=t.points, zone=t.zone, reason=t.reason)


class Transfers:
    """The receiving side (a mixin of :class:`ledger.application.Ledger`: it uses
    ``load_account``, ``serialized``, ``save``, ``retry``, ``recorder``, ``mapper``)."""

    @guarded
    def receive(self, transfers: Sequence[Transfer]) -> int:
        """Apply each transfer to its account here at most once, all in one save;
        returns how many were new (a repeat changes nothing)."""
        if not transfers:
            return 0

        def attempt(_: int) -> int:
            with self.serialized(*{t.account for t in transfers}):
                seen = self._received([(t.kind, t.job_id) for t in transfers])
                accounts: dict[str, Account] = {}
                receipts = []
                for t in transfers:
                    if (t.kind, t.job_id) in seen:
                        continue
                    seen.add((t.kind, t.job_id))
                    if t.account not in accounts:
                        accounts[t.account] = (self.load_account(t.account)
                                               or Account(name=t.account))
                    _apply(t, accounts[t.account])
                    receipts.append(TransferReceipt(t.kind, t.job_id, t.account, t.points))
                if receipts:
                    self.save(*accounts.values(), *receipts)
                return len(receipts)
        return self.retry(attempt)

    def _received(self, keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
        ids = {transfer_id(*k): k for k in keys}
        stored = select_many(self.recorder, list(ids))
        if stored is None:  # in memory
            return {k for i, k in ids.items() if self.load(i) is not None}
        return {ids[i] for i in stored}
