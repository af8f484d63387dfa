"""A node's standing after a spot check: the rules, as a pure function.

A node on probation is verified once it has passed ``probation_checks``
checks; one failed check suspends it. A verified (or unverified) node is
suspended at ``suspend_after_failures`` failed checks, and any node at
``suspend_after_strikes`` strikes for other refusals (the gate's and the API's:
forged, malformed, outside its grant; a spot check's own strike is its failure,
counted once). A suspended node stays suspended (the admin removes and re-adds
it to start over).
"""
from __future__ import annotations

from bus.config import Settings
from bus.events import Event, NodeSuspended, NodeVerified
from bus.grants import NodeGrant


def after_check(grant: NodeGrant, passed: bool,
                settings: Settings) -> tuple[NodeGrant, Event | None]:
    """The grant with the check counted, and the event its new status takes, if any."""
    if passed:
        grant = grant.model_copy(update={"passed": grant.passed + 1})
        if grant.status == "probation" and grant.passed >= settings.probation_checks:
            return (grant.model_copy(update={"status": "verified"}),
                    NodeVerified(node_id=grant.node_id, passed=grant.passed))
        return grant, None
    grant = grant.model_copy(update={"failed": grant.failed + 1})
    if grant.status != "suspended" and (grant.status == "probation"
                                        or grant.failed >= settings.suspend_after_failures):
        return (grant.model_copy(update={"status": "suspended"}),
                NodeSuspended(node_id=grant.node_id,
                              reason=f"{grant.failed} failed spot check(s)"
                                     + (" on probation" if grant.status == "probation" else "")))
    return grant, None


def after_strike(grant: NodeGrant, reason: str,
                 settings: Settings) -> tuple[NodeGrant, Event | None]:
    """The grant with one more strike, and its suspension when that is the limit."""
    grant = grant.model_copy(update={"strikes": grant.strikes + 1})
    if grant.status != "suspended" and grant.strikes >= settings.suspend_after_strikes:
        return (grant.model_copy(update={"status": "suspended"}),
                NodeSuspended(node_id=grant.node_id,
                              reason=f"{grant.strikes} strikes, the last: {reason}"[:2000]))
    return grant, None
