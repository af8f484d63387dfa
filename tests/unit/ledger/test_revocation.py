"""Compensation for work that failed its spot check: the consumer's debit comes
back, the operator's RCP goes, once, and only for the node that did the work."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from bus.credits import MICRO
from bus.events import CreditsReimbursed, RCPRevoked
from ledger import AccountView, Ledger, Resolution

DEADLINE = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def ledger() -> Ledger:
    ledger = Ledger()
    ledger.deposit("alice", 10 * MICRO)
    ledger.reserve("alice", "j1", 3 * MICRO, key_id="k", zone="eu", deadline=DEADLINE)
    return ledger


def test_a_settled_job_that_failed_its_check_is_reimbursed_and_its_rcp_revoked(ledger):
    ledger.settle("j1", 1 * MICRO, operator="bob", node_id="n1", points=7)
    outcome = ledger.revoke("j1", "n1", "spot check failed")
    assert (outcome.status, outcome.already) == ("revoked", False)
    assert ledger.account("alice") == AccountView("alice", 10 * MICRO, 0, 0, 10 * MICRO, 0)
    assert ledger.account("bob").rcp == 0
    events = [e for _, e, _ in ledger.bus_events(0)]
    reimbursed = [e for e in events if isinstance(e, CreditsReimbursed)]
    revoked = [e for e in events if isinstance(e, RCPRevoked)]
    assert [(e.account, e.job_id, e.amount) for e in reimbursed] == [("alice", "j1", MICRO)]
    assert [(e.operator, e.node_id, e.points) for e in revoked] == [("bob", "n1", 7)]


def test_a_revocation_counts_once(ledger):
    ledger.settle("j1", 1 * MICRO, operator="bob", node_id="n1", points=7)
    ledger.revoke("j1", "n1", "spot check failed")
    again = ledger.revoke("j1", "n1", "spot check failed")
    assert again.already and ledger.account("alice").balance == 10 * MICRO
    assert ledger.account("bob").rcp == 0


def test_another_nodes_failed_check_leaves_the_settlement_standing(ledger):
    ledger.settle("j1", 1 * MICRO, operator="bob", node_id="n1", points=7)
    outcome = ledger.revoke("j1", "n2", "spot check failed")
    assert outcome == Resolution("j1", "settled", MICRO, 2 * MICRO, 7, already=True)
    assert ledger.account("bob").rcp == 7


def test_a_check_that_fails_before_settlement_refunds_and_the_late_completion_pays_nothing(
        ledger):
    assert ledger.revoke("j1", "n1", "spot check failed").status == "refunded"
    late = ledger.settle("j1", 1 * MICRO, operator="bob", node_id="n1", points=7)
    assert late.already and late.status == "refunded"
    assert ledger.account("alice").balance == 10 * MICRO and ledger.account("bob").rcp == 0
