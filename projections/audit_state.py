"""What the invariant checker (:mod:`projections.invariants`) keeps while it
replays the log: violation lines, replayed balances, and per-job facts."""
from __future__ import annotations

from datetime import datetime

from bus.credits import available

MAX_LINES_PER_RULE = 200  # a broken log can break millions of rules: count the rest


class Violations:
    """Readable violation lines, at most ``MAX_LINES_PER_RULE`` per invariant."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}

    def add(self, rule: str, text: str) -> None:
        n = self.counts[rule] = self.counts.get(rule, 0) + 1
        if n <= MAX_LINES_PER_RULE:
            self.lines.append(f"{rule} {text}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Balance:
    __slots__ = ("deposited", "held", "spent", "refunded", "rcp", "flagged")

    def __init__(self) -> None:
        self.deposited = self.held = self.spent = self.refunded = self.rcp = 0
        self.flagged = False  # one I2 line per account, not one per later event

    @property
    def balance(self) -> int:
        return available(self.deposited, self.held, self.spent)


class Job:
    __slots__ = ("account", "submitted_account", "reserved", "reserves", "deadline", "debited",
                 "debits", "refunded", "refunds", "closed_at", "outcome", "node_id", "operator",
                 "completion_tokens", "completed_seq", "signature_ok", "awards", "later",
                 "probation", "failed_checks", "reimbursed", "revoked", "compensated_at")

    def __init__(self) -> None:
        self.account = self.submitted_account = self.outcome = None
        self.node_id = self.operator = None
        self.deadline = self.closed_at = None
        self.reserved = self.reserves = self.debited = self.debits = 0
        self.refunded = self.refunds = self.completion_tokens = self.completed_seq = 0
        self.signature_ok = True
        self.awards: list[tuple[str, str, int]] = []  # (operator, node_id, seq)
        self.later: list[tuple] = []  # completions after the first (see Checker._paid)
        self.probation = False  # the paid completion's node was on probation: no RCP due
        self.failed_checks: dict[str, datetime] = {}  # node id -> when its check failed
        self.reimbursed = self.revoked = 0
        self.compensated_at: datetime | None = None
