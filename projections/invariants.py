"""The money invariants, checked from the events themselves in stream order.

One pass, O(events) time and O(jobs + accounts) memory: :meth:`Checker.observe`
folds each event into per-job and per-account state and reports what can be
judged at once; :meth:`Checker.finish` judges what needs the whole log.

- I1 every reservation is closed by exactly one refund (possibly 0), has at
  most one debit, and debit + refund == reserved; no debit or refund without
  a reservation, none after the refund that closed it.
- I2 per account, replayed: the balance (:func:`bus.credits.available`) never
  below 0 and ``held`` never below 0 at any point; at the end ``held`` equals
  what the open reservations still hold.
- I4 one RCP award per completed and paid job, to the operator and node of
  its ``JobCompleted``; none on a self-job (operator == the job's account),
  none for a job that did not complete.
- I5 a paid ``JobCompleted`` (debit > 0 or an RCP award) carries a valid
  node signature (:func:`bus.signing.verify_result`); a completion of a node
  on probation earns no RCP.
- I7 a strict subcloud's job runs only in its zones and its content stays off
  the log (:mod:`projections.residency`).
- I8 referrals and I9 subscriptions: :mod:`projections.account_checks`
  (referral rewards count in the referrer's replayed ``rcp``; they are not node
  awards, so I4 never sees them).
- I6 no job whose paid work failed its spot check stays paid or rewarded: its
  debit is reimbursed and its RCP revoked (``CreditsReimbursed``,
  ``RCPRevoked``) within ``grace_s`` of the failed check; and nothing is
  reimbursed or revoked without a failed check of the node that was paid.

A job's outcome is its first terminal event, as in the jobs read model and
as settlement resolves it. Checks that an in-flight job could fail wait for
``grace_s``: a reservation may stay open until its deadline + grace; a paid
completion may lack its award until its refund is ``grace_s`` old.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReimbursed,
                        CreditsReserved, Event, JobCancelled, JobCompleted, JobExpired, JobFailed,
                        JobSubmitted, RCPAwarded, RCPRevoked, SpotChecked, parse_event)
from bus.signing import verify_result
from projections.audit_state import Balance, Job, Violations
from projections.account_checks import AccountChecks
from projections.residency import Residency
from projections.lifecycle import COMPLETED, ending
from projections.replay import Delivery
from projections.store import utc

class Checker:
    """Replayed accounts (``accounts``), per-job facts and the violations found.
    Feed it every delivery in stream order, then call :meth:`finish` once."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.accounts: dict[str, Balance] = {}
        self.v = Violations()
        self.residency = Residency(self.v)
        self.account_checks = AccountChecks(self.v, self._account)
        self.events = self.malformed = self.open_reservations = 0
        self._handlers = {
            CreditsDeposited: self._deposited, CreditsReserved: self._reserved,
            CreditsDebited: self._debited, CreditsRefunded: self._refunded,
            RCPAwarded: self._rcp, JobSubmitted: self._submitted, JobCompleted: self._completed,
            JobFailed: self._ended, JobCancelled: self._ended, JobExpired: self._ended,
            SpotChecked: self._checked, CreditsReimbursed: self._reimbursed,
            RCPRevoked: self._revoked}

    def observe(self, d: Delivery, event: Event | None) -> None:
        """Fold one delivery (``event`` None when malformed) into the state."""
        self.events += 1
        if event is None:
            self.malformed += 1
            return
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(d.seq, event)
        self.residency.observe(event)
        self.account_checks.observe(d.seq, event)

    def observe_raw(self, deliveries: list[Delivery]) -> None:
        for d in deliveries:
            try:
                event = parse_event(d.data)
            except ValueError:
                event = None
            self.observe(d, event)

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            job = self.jobs[job_id] = Job()
        return job

    def _account(self, account: str) -> Balance:
        acct = self.accounts.get(account)
        if acct is None:
            acct = self.accounts[account] = Balance()
        return acct

    def _check_account(self, name: str, acct: Balance, seq: int, what: str) -> None:
        if (acct.balance < 0 or acct.held < 0) and not acct.flagged:
            acct.flagged = True
            self.v.add("I2", f"account {name}: balance {acct.balance}, held {acct.held} "
                             f"after {what} at seq {seq} (neither may go below 0)")

    def _deposited(self, seq: int, e: CreditsDeposited) -> None:
        self._account(e.account).deposited += e.amount

    def _reserved(self, seq: int, e: CreditsReserved) -> None:
        job = self._job(e.job_id)
        if job.reserves:
            self.v.add("I1", f"job {e.job_id}: reserved again at seq {seq}")
        job.reserves += 1
        job.reserved += e.amount
        job.account, job.deadline = e.account, utc(e.deadline)
        acct = self._account(e.account)
        acct.held += e.amount
        self._check_account(e.account, acct, seq, f"reserving {e.amount} for job {e.job_id}")

    def _money_on_job(self, seq: int, e: CreditsDebited | CreditsRefunded, what: str) -> Job:
        job = self._job(e.job_id)
        said = f"job {e.job_id}: {what} of {e.amount} at seq {seq}"
        if not job.reserves:
            self.v.add("I1", f"{said} without a reservation")
        elif job.refunds:  # the refund is what closes a reservation
            self.v.add("I1", f"{said} after its refund closed the reservation")
        if job.account is not None and e.account != job.account:
            self.v.add("I1", f"{said} on account {e.account}, reserved on {job.account}")
        return job

    def _debited(self, seq: int, e: CreditsDebited) -> None:
        job = self._money_on_job(seq, e, "debit")
        if job.debits:
            self.v.add("I1", f"job {e.job_id}: debited twice (again {e.amount} at seq {seq}, "
                             f"after {job.debited})")
        job.debits += 1
        job.debited += e.amount
        acct = self._account(e.account)
        acct.held -= e.amount
        acct.spent += e.amount
        self._check_account(e.account, acct, seq, f"debiting {e.amount} for job {e.job_id}")

    def _refunded(self, seq: int, e: CreditsRefunded) -> None:
        job = self._money_on_job(seq, e, "refund")
        job.refunds += 1
        job.refunded += e.amount
        job.closed_at = job.closed_at or utc(e.occurred_at)
        acct = self._account(e.account)
        acct.held -= e.amount
        acct.refunded += e.amount
        self._check_account(e.account, acct, seq, f"refunding {e.amount} for job {e.job_id}")

    def _rcp(self, seq: int, e: RCPAwarded) -> None:
        self._account(e.operator).rcp += e.points
        self._job(e.job_id).awards.append((e.operator, e.node_id, seq))

    def _checked(self, seq: int, e: SpotChecked) -> None:
        if not e.passed:
            self._job(e.job_id).failed_checks.setdefault(e.node_id, utc(e.occurred_at))

    def _reimbursed(self, seq: int, e: CreditsReimbursed) -> None:
        job = self._job(e.job_id)
        if not job.debits or e.account != job.account:
            self.v.add("I6", f"job {e.job_id}: {e.amount} reimbursed to {e.account} at seq {seq}, "
                             f"which no debit of that job paid")
        job.reimbursed += e.amount
        job.compensated_at = utc(e.occurred_at)
        acct = self._account(e.account)
        acct.spent -= e.amount
        self._check_account(e.account, acct, seq, f"reimbursing {e.amount} for job {e.job_id}")

    def _revoked(self, seq: int, e: RCPRevoked) -> None:
        job = self._job(e.job_id)
        self._account(e.operator).rcp -= e.points
        job.revoked += e.points
        job.compensated_at = utc(e.occurred_at)

    def _submitted(self, seq: int, e: JobSubmitted) -> None:
        self._job(e.job_id).submitted_account = e.account

    def _completed(self, seq: int, e: JobCompleted) -> None:
        job = self._job(e.job_id)
        facts = (COMPLETED, e.node_id, e.operator, e.usage.completion_tokens, seq,
                 verify_result(e), e.probation)
        if job.outcome is None:
            self._set_outcome(job, facts)
        else:  # a late or foreign result, set aside by settlement's lease check
            job.later.append(facts)

    @staticmethod
    def _set_outcome(job: Job, facts: tuple) -> None:
        (job.outcome, job.node_id, job.operator, job.completion_tokens, job.completed_seq,
         job.signature_ok, job.probation) = facts

    def _paid(self, job: Job) -> None:
        """Settlement pays only the lease holder's outcome, which need not be the
        first on the log (a fenced node's late result can come before it): the
        outcome judged is the completion of the node the RCP went to, if any."""
        if not job.awards or (job.outcome == COMPLETED and job.node_id == job.awards[0][1]):
            return
        for facts in job.later:
            if facts[1] == job.awards[0][1]:
                self._set_outcome(job, facts)
                return

    def _ended(self, seq: int, e: Event) -> None:
        job = self._job(e.job_id)  # type: ignore[attr-defined]
        if job.outcome is None:
            job.outcome = ending(e)

    def finish(self, now: datetime | None = None, grace_s: float = 120.0) -> None:
        """Judge what needs the whole log (I1 closure and sums, I2 holds, I4, I5)."""
        now = now or datetime.now(timezone.utc)
        grace = timedelta(seconds=grace_s)
        open_hold: dict[str, int] = {}
        for job_id, job in self.jobs.items():
            self._paid(job)
            if job.reserves and not job.refunds:
                open_hold[job.account] = open_hold.get(job.account, 0) + job.reserved - job.debited
                if job.deadline is not None and job.deadline + grace < now:
                    self.v.add("I1", f"job {job_id}: reservation of {job.reserved} never closed "
                                     f"(deadline {job.deadline.isoformat()}, no refund)")
                else:
                    self.open_reservations += 1
            elif job.reserves and job.debited + job.refunded != job.reserved:
                self.v.add("I1", f"job {job_id}: debit {job.debited} + refund {job.refunded} "
                                 f"!= reserved {job.reserved}")
            self._check_rcp(job_id, job, now, grace)
            if job.outcome == COMPLETED and (job.debited > 0 or job.awards) \
                    and not job.signature_ok:
                self.v.add("I5", f"job {job_id}: paid JobCompleted at seq {job.completed_seq} "
                                 f"has no valid signature of node {job.node_id}")
            self._check_compensation(job_id, job, now, grace)
        self.account_checks.finish(self.jobs)
        for name, acct in self.accounts.items():
            expected = open_hold.get(name, 0)
            if acct.held != expected:
                self.v.add("I2", f"account {name}: held {acct.held}, but its open reservations "
                                 f"hold {expected} (deposited {acct.deposited} != balance "
                                 f"{acct.balance} + held {expected} + debited {acct.spent})")

    def _check_rcp(self, job_id: str, job: Job, now: datetime, grace: timedelta) -> None:
        account = job.account or job.submitted_account
        self_job = job.operator is not None and job.operator == account
        if len(job.awards) > 1:
            self.v.add("I4", f"job {job_id}: RCP awarded {len(job.awards)} times "
                             f"(seqs {', '.join(str(a[2]) for a in job.awards)})")
        for operator, node_id, seq in job.awards[:1]:
            if job.outcome != COMPLETED:
                self.v.add("I4", f"job {job_id}: RCP awarded to {operator} at seq {seq}, but the "
                                 f"job did not complete (outcome: {job.outcome or 'none'})")
            elif self_job:
                self.v.add("I4", f"job {job_id}: RCP awarded on a self-job (operator {operator} "
                                 f"is the job's own account)")
            elif (operator, node_id) != (job.operator, job.node_id):
                self.v.add("I4", f"job {job_id}: RCP awarded to operator {operator} node "
                                 f"{node_id[:16]}, expected operator {job.operator} node "
                                 f"{(job.node_id or '')[:16]} (ran the job)")
        if job.awards and job.probation:
            self.v.add("I5", f"job {job_id}: RCP awarded for the work of node "
                             f"{(job.node_id or '')[:16]}, on probation")
        # No award is due for zero points, a self-job or a node on probation.
        if not job.awards and job.outcome == COMPLETED and job.debited > 0 and not self_job \
                and not job.probation \
                and job.completion_tokens > 0 and job.closed_at is not None \
                and job.closed_at + grace < now:
            self.v.add("I4", f"job {job_id}: completed and paid {job.debited}, but no RCP award "
                             f"to operator {job.operator}")

    def _check_compensation(self, job_id: str, job: Job, now: datetime,
                            grace: timedelta) -> None:
        """I6: the paid work of a node that failed the job's check is compensated."""
        failed_at = job.failed_checks.get(job.node_id or "")
        awarded = bool(job.awards) and job.awards[0][1] == job.node_id
        if failed_at is None:
            if job.reimbursed or job.revoked:
                self.v.add("I6", f"job {job_id}: compensated (reimbursed {job.reimbursed}, "
                                 f"revoked {job.revoked} RCP) without a failed check of node "
                                 f"{(job.node_id or '')[:16]}, which ran it")
            return
        if failed_at + grace > now:
            return  # settlement may not have got to it yet
        if job.debited - job.reimbursed > 0 or (awarded and not job.revoked):
            self.v.add("I6", f"job {job_id}: failed its spot check at {failed_at.isoformat()}, "
                             f"yet {job.debited - job.reimbursed} stays debited and "
                             f"{'its' if awarded and not job.revoked else 'no'} RCP stays "
                             f"awarded")
