"""The audit's checks of referrals (I8) and subscriptions (I9), replayed from the
log beside the money invariants (:mod:`projections.invariants`).

- I8 an account is linked to a referrer at most once, never to itself; a
  referral reward (``ReferralRewarded``) goes to the referrer the job's account
  is linked to, at most once per job, only for a completed job that was
  debited; a reward is revoked only after it was paid, at most what was paid.
  Referral rewards are RCP on the referrer's account (they count in its
  replayed ``rcp``), and are not node awards: I4 never sees them.
- I9 a subscription's period renews at most once (one ``SubscriptionRenewed``
  per account, term and period), and no term renews after it lapsed.
"""
from __future__ import annotations

from typing import Callable

from bus.events import (Event, ReferralLinked, ReferralRewarded, ReferralRewardRevoked,
                        SubscriptionLapsed, SubscriptionRenewed)
from projections.audit_state import Balance, Job, Violations
from projections.lifecycle import COMPLETED


class AccountChecks:
    """Feed :meth:`observe` every event in stream order, then :meth:`finish` once."""

    def __init__(self, v: Violations, account: Callable[[str], Balance]) -> None:
        self.v, self.account = v, account
        self.referrer: dict[str, str] = {}  # referred account -> its referrer
        self.rewards: dict[str, list[ReferralRewarded]] = {}  # job -> its rewards
        self.revoked: dict[str, int] = {}  # job -> referral points revoked
        self.renewed: set[tuple[str, int, int]] = set()
        self.lapsed: set[tuple[str, int]] = set()

    def observe(self, seq: int, event: Event) -> None:
        if isinstance(event, ReferralLinked):
            self._linked(seq, event)
        elif isinstance(event, ReferralRewarded):
            self._rewarded(seq, event)
        elif isinstance(event, ReferralRewardRevoked):
            self.account(event.referrer).rcp -= event.points
            self.revoked[event.job_id] = self.revoked.get(event.job_id, 0) + event.points
        elif isinstance(event, SubscriptionRenewed):
            period = (event.account, event.term, event.period)
            if period in self.renewed:
                self.v.add("I9", f"account {event.account}: period {event.period} of term "
                                 f"{event.term} renewed again at seq {seq}")
            if (event.account, event.term) in self.lapsed:
                self.v.add("I9", f"account {event.account}: term {event.term} renewed at seq "
                                 f"{seq} after it lapsed")
            self.renewed.add(period)
        elif isinstance(event, SubscriptionLapsed):
            self.lapsed.add((event.account, event.term))

    def _linked(self, seq: int, e: ReferralLinked) -> None:
        if e.referrer == e.account:
            self.v.add("I8", f"account {e.account} linked to itself as referrer at seq {seq}")
        if e.account in self.referrer:
            self.v.add("I8", f"account {e.account} linked again (to {e.referrer}) at seq {seq}, "
                             f"already referred by {self.referrer[e.account]}")
            return
        self.referrer[e.account] = e.referrer

    def _rewarded(self, seq: int, e: ReferralRewarded) -> None:
        self.account(e.referrer).rcp += e.points
        self.rewards.setdefault(e.job_id, []).append(e)
        linked = self.referrer.get(e.account)
        if linked != e.referrer or e.referrer == e.account:
            self.v.add("I8", f"job {e.job_id}: referral reward to {e.referrer} at seq {seq}, but "
                             f"account {e.account} was referred by {linked or 'no one'}")

    def finish(self, jobs: dict[str, Job]) -> None:
        """Judge each job's referral rewards against its outcome and debit."""
        for job_id, rewards in self.rewards.items():
            job = jobs.get(job_id)
            if len(rewards) > 1:
                self.v.add("I8", f"job {job_id}: referral reward paid {len(rewards)} times")
            e = rewards[0]
            if job is None or job.outcome != COMPLETED or job.debited <= 0:
                self.v.add("I8", f"job {job_id}: referral reward to {e.referrer}, but the job "
                                 "was not completed and paid")
            elif job.account != e.account:
                self.v.add("I8", f"job {job_id}: referral reward names account {e.account}, "
                                 f"the job was paid by {job.account}")
        for job_id, points in self.revoked.items():
            paid = sum(r.points for r in self.rewards.get(job_id, ()))
            if points > paid:
                self.v.add("I8", f"job {job_id}: {points} referral RCP revoked, {paid} paid")
