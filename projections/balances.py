"""The balance read models: accounts, reservations, per-key usage, operator RCP,
and the expiry sweep's query over them.

The projector applies this module to every event in the same transaction and
under the same stream position as the job read models, so a reader never sees
a job settled in one model and pending in the other. Every change is an
upsert of deltas; the position rule applies each event exactly once, which is
what keeps adding deltas correct.

Tables (amounts in integer micro-credits):

- ``accounts``: ``deposited``, ``held`` (reserved, neither debited nor
  refunded yet), ``spent`` (debited), ``refunded``, ``rcp`` (points earned as
  an operator). :func:`bus.credits.available` of them is what can still be
  reserved.
- ``reservations``: one row per job's hold. ``status`` mirrors the ledger's:
  ``pending``, then ``settled`` from its debit (the ledger settles with one
  debit and one refund of the rest, possibly 0) or ``refunded`` from a refund
  with no debit before it; ``revoked`` once its work failed a spot check and
  its debit was reimbursed.
- ``key_usage``: per API key, jobs reserved, tokens of their outcomes and
  credits debited. Tokens come from the usage of a job's first terminal
  event (``JobCompleted``, or ``JobCancelled`` with usage), the one settlement
  charges; the key is the reservation's, else the ``jobs`` row's, since the
  ledger relay may log a reservation after the job's own events.
- ``operator_rcp``: per operator account, points and jobs awarded (a revoked
  award takes its points and its job back).
- ``referrals``: per referred account, its referrer, when it joined, and the
  RCP (and jobs) its paid jobs earned the referrer; a referral reward also
  counts in the referrer's ``accounts.rcp`` (``docs/referrals.md``).

The projection records facts, it does not judge them: a debit or refund with
no reservation still moves the account and creates a reservation row (amount
0), so the read model matches the log and ``inferbus audit`` reports the
breach.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from bus.events import (CreditsDebited, CreditsDeposited, CreditsRefunded, CreditsReimbursed,
                        CreditsReserved, Event, JobCancelled, JobCompleted, RCPAwarded,
                        RCPRevoked, ReferralLinked, ReferralRewarded, ReferralRewardRevoked,
                        Usage)
from projections.lifecycle import ACTIVE, CANCELLED, COMPLETED, sql_set
from projections.store import Store, Table, Tx, utc

TABLES = (
    Table("accounts", "account"),
    Table("reservations", "job_id", ("deadline", "created_at", "resolved_at")),
    Table("key_usage", "key_id"),
    Table("operator_rcp", "operator"),
    Table("referrals", "account", ("joined_at",)),
)
# Money columns are BIGINT micro-credits: an INTEGER would overflow at 2,147 credits.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS accounts (
        account TEXT PRIMARY KEY,
        deposited BIGINT NOT NULL DEFAULT 0, held BIGINT NOT NULL DEFAULT 0,
        spent BIGINT NOT NULL DEFAULT 0, refunded BIGINT NOT NULL DEFAULT 0,
        rcp BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS reservations (
        job_id TEXT PRIMARY KEY,
        account TEXT NOT NULL, key_id TEXT,
        amount BIGINT NOT NULL DEFAULT 0, debited BIGINT NOT NULL DEFAULT 0,
        refunded BIGINT NOT NULL DEFAULT 0,
        status TEXT NOT NULL, zone TEXT,
        deadline {ts}, created_at {ts}, resolved_at {ts})""",
    # The expiry sweep's query: pending reservations by deadline.
    "CREATE INDEX IF NOT EXISTS reservations_by_status ON reservations (status, deadline)",
    """CREATE TABLE IF NOT EXISTS key_usage (
        key_id TEXT PRIMARY KEY, account TEXT,
        jobs BIGINT NOT NULL DEFAULT 0, prompt_tokens BIGINT NOT NULL DEFAULT 0,
        completion_tokens BIGINT NOT NULL DEFAULT 0, spent BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS operator_rcp (
        operator TEXT PRIMARY KEY,
        points BIGINT NOT NULL DEFAULT 0, jobs BIGINT NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS referrals (
        account TEXT PRIMARY KEY, referrer TEXT NOT NULL, code TEXT, joined_at {ts},
        rcp_earned BIGINT NOT NULL DEFAULT 0, jobs BIGINT NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS referrals_by_referrer ON referrals (referrer, joined_at)",
)


def _account(tx: Tx, account: str, *, deposited: int = 0, held: int = 0, spent: int = 0,
             refunded: int = 0, rcp: int = 0) -> None:
    tx.execute(
        "INSERT INTO accounts (account, deposited, held, spent, refunded, rcp) "
        "VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (account) DO UPDATE SET deposited = accounts.deposited + excluded.deposited, "
        "held = accounts.held + excluded.held, spent = accounts.spent + excluded.spent, "
        "refunded = accounts.refunded + excluded.refunded, rcp = accounts.rcp + excluded.rcp",
        (account, deposited, held, spent, refunded, rcp))


def _key(tx: Tx, key_id: str, account: str | None, *, jobs: int = 0, prompt: int = 0,
         completion: int = 0) -> None:
    tx.execute(
        "INSERT INTO key_usage (key_id, account, jobs, prompt_tokens, completion_tokens, spent) "
        "VALUES (?, ?, ?, ?, ?, 0) "
        "ON CONFLICT (key_id) DO UPDATE SET "
        "account = COALESCE(key_usage.account, excluded.account), "
        "jobs = key_usage.jobs + excluded.jobs, "
        "prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = key_usage.completion_tokens + excluded.completion_tokens",
        (key_id, account, jobs, prompt, completion))


def _reserved(tx: Tx, e: CreditsReserved) -> None:
    # A conflict means a debit or refund came first (a breach the audit reports):
    # fill in what the reservation knows and add its amount.
    tx.execute(
        "INSERT INTO reservations (job_id, account, key_id, amount, debited, refunded, status, "
        "zone, deadline, created_at) VALUES (?, ?, ?, ?, 0, 0, 'pending', ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET amount = reservations.amount + excluded.amount, "
        "key_id = COALESCE(reservations.key_id, excluded.key_id), "
        "zone = COALESCE(reservations.zone, excluded.zone), "
        "deadline = COALESCE(reservations.deadline, excluded.deadline), "
        "created_at = COALESCE(reservations.created_at, excluded.created_at)",
        (e.job_id, e.account, e.key_id, e.amount, e.zone, utc(e.deadline), utc(e.occurred_at)))
    _account(tx, e.account, held=e.amount)
    _key(tx, e.key_id, e.account, jobs=1)


def _debited(tx: Tx, e: CreditsDebited) -> None:
    tx.execute(
        "INSERT INTO reservations (job_id, account, amount, debited, refunded, status, zone, "
        "resolved_at) VALUES (?, ?, 0, ?, 0, 'settled', ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET debited = reservations.debited + excluded.debited, "
        "status = CASE WHEN reservations.status = 'pending' THEN 'settled' "
        "ELSE reservations.status END, "
        "resolved_at = COALESCE(reservations.resolved_at, excluded.resolved_at)",
        (e.job_id, e.account, e.amount, e.zone, utc(e.occurred_at)))
    _account(tx, e.account, held=-e.amount, spent=e.amount)
    # The key's row exists: the reservation that names it created it.
    tx.execute("UPDATE key_usage SET spent = spent + ? "
               "WHERE key_id = (SELECT key_id FROM reservations WHERE job_id = ?)",
               (e.amount, e.job_id))


def _refunded(tx: Tx, e: CreditsRefunded) -> None:
    tx.execute(
        "INSERT INTO reservations (job_id, account, amount, debited, refunded, status, zone, "
        "resolved_at) VALUES (?, ?, 0, 0, ?, 'refunded', ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET refunded = reservations.refunded + excluded.refunded, "
        "status = CASE WHEN reservations.status = 'pending' THEN 'refunded' "
        "ELSE reservations.status END, "
        "resolved_at = COALESCE(reservations.resolved_at, excluded.resolved_at)",
        (e.job_id, e.account, e.amount, e.zone, utc(e.occurred_at)))
    _account(tx, e.account, held=-e.amount, refunded=e.amount)


def _rcp(tx: Tx, e: RCPAwarded) -> None:
    _account(tx, e.operator, rcp=e.points)
    tx.execute(
        "INSERT INTO operator_rcp (operator, points, jobs) VALUES (?, ?, 1) "
        "ON CONFLICT (operator) DO UPDATE SET points = operator_rcp.points + excluded.points, "
        "jobs = operator_rcp.jobs + 1", (e.operator, e.points))


def _reimbursed(tx: Tx, e: CreditsReimbursed) -> None:
    tx.execute("UPDATE reservations SET status = 'revoked' WHERE job_id = ?", (e.job_id,))
    _account(tx, e.account, spent=-e.amount)
    tx.execute("UPDATE key_usage SET spent = spent - ? "
               "WHERE key_id = (SELECT key_id FROM reservations WHERE job_id = ?)",
               (e.amount, e.job_id))


def _rcp_revoked(tx: Tx, e: RCPRevoked) -> None:
    _account(tx, e.operator, rcp=-e.points)
    tx.execute(
        "INSERT INTO operator_rcp (operator, points, jobs) VALUES (?, ?, -1) "
        "ON CONFLICT (operator) DO UPDATE SET points = operator_rcp.points + excluded.points, "
        "jobs = operator_rcp.jobs - 1", (e.operator, -e.points))


def _referral_linked(tx: Tx, e: ReferralLinked) -> None:
    # The first link stands (a second one is a breach the audit reports). A reward
    # may have made the row first (the referrer's read-model partition ran ahead,
    # projections.layout): the link fills in only what is missing, so either order
    # gives one row.
    tx.execute("INSERT INTO referrals (account, referrer, code, joined_at) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (account) DO UPDATE SET "
               "code = COALESCE(referrals.code, excluded.code), "
               "joined_at = COALESCE(referrals.joined_at, excluded.joined_at)",
               (e.account, e.referrer, e.code, utc(e.occurred_at)))


def _referral_reward(tx: Tx, e: ReferralRewarded | ReferralRewardRevoked, sign: int) -> None:
    _account(tx, e.referrer, rcp=sign * e.points)
    tx.execute(
        "INSERT INTO referrals (account, referrer, rcp_earned, jobs) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (account) DO UPDATE SET rcp_earned = referrals.rcp_earned + "
        "excluded.rcp_earned, jobs = referrals.jobs + excluded.jobs",
        (e.account, e.referrer, sign * e.points, sign))


def referrals_of(store: Store, referrer: str, limit: int = 1000) -> list[dict]:
    """The accounts ``referrer`` referred, oldest first: ``account``, ``joined_at``,
    ``rcp_earned``, ``jobs``."""
    with store.transaction(write=False) as tx:
        return tx.query("SELECT account, joined_at, rcp_earned, jobs FROM referrals "
                        "WHERE referrer = ? ORDER BY joined_at, account LIMIT ?",
                        (referrer, limit))


def _usage(tx: Tx, job_id: str, usage: Usage) -> None:
    # Runs before the jobs read model sees this event (see readmodels.PROJECTIONS):
    # a job row still active (or absent) means this is the job's first outcome.
    row = tx.query(
        "SELECT (SELECT status FROM jobs WHERE job_id = ?) AS status, "
        "COALESCE((SELECT key_id FROM reservations WHERE job_id = ?), "
        "(SELECT key_id FROM jobs WHERE job_id = ?)) AS key_id, "
        "COALESCE((SELECT account FROM reservations WHERE job_id = ?), "
        "(SELECT account FROM jobs WHERE job_id = ?)) AS account", (job_id,) * 5)[0]
    if row["key_id"] is not None and row["status"] in (None, *ACTIVE):
        _key(tx, row["key_id"], row["account"], prompt=usage.prompt_tokens,
             completion=usage.completion_tokens)


def apply(tx: Tx, event: Event, log_zone: str | None = None) -> bool:
    """Apply one event to the credit tables; False if it concerns none of them."""
    if isinstance(event, CreditsDeposited):
        _account(tx, event.account, deposited=event.amount)
    elif isinstance(event, CreditsReserved):
        _reserved(tx, event)
    elif isinstance(event, CreditsDebited):
        _debited(tx, event)
    elif isinstance(event, CreditsRefunded):
        _refunded(tx, event)
    elif isinstance(event, RCPAwarded):
        _rcp(tx, event)
    elif isinstance(event, CreditsReimbursed):
        _reimbursed(tx, event)
    elif isinstance(event, RCPRevoked):
        _rcp_revoked(tx, event)
    elif isinstance(event, ReferralLinked):
        _referral_linked(tx, event)
    elif isinstance(event, ReferralRewarded):
        _referral_reward(tx, event, 1)
    elif isinstance(event, ReferralRewardRevoked):
        _referral_reward(tx, event, -1)
    elif isinstance(event, JobCompleted):
        _usage(tx, event.job_id, event.usage)
    elif isinstance(event, JobCancelled) and event.usage is not None:
        _usage(tx, event.job_id, event.usage)
    else:
        return False
    return True


def expired_reservations(store: Store, now: datetime, grace_s: float,
                         outcome_grace_s: float | None = None) -> list[str]:
    """Jobs whose reservation is still pending ``grace_s`` seconds past its
    deadline, oldest deadline first: what the expiry sweep refunds. A job whose
    completion or cancel is already logged waits ``outcome_grace_s`` instead:
    its settlement is due, only late."""
    cutoff = utc(now) - timedelta(seconds=grace_s)
    late = utc(now) - timedelta(seconds=max(outcome_grace_s or grace_s, grace_s))
    with store.transaction(write=False) as tx:
        rows = tx.query(
            "SELECT r.job_id FROM reservations r LEFT JOIN jobs j ON j.job_id = r.job_id "
            "WHERE r.status = 'pending' AND r.deadline < ? AND (r.deadline < ? OR "
            f"j.status IS NULL OR j.status NOT IN {sql_set((COMPLETED, CANCELLED))}) "
            "ORDER BY r.deadline, r.job_id", (cutoff, late))
    return [row["job_id"] for row in rows]
