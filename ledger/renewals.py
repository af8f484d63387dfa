"""The renewal clock: renews (or lapses) each subscription when its period ends.

It runs in the money service (:mod:`ledger.service`, inside ``inferbus
projector``). It follows the ledger's own subscription events, from the
first on each start, to know when each subscription is next due, and asks the
ledger to renew the due ones (:meth:`ledger.subscriptions.Subscriptions.renew_due`).
Renewing is decided on the subscription's stored version, so a restart, a
second projector or a renewal retried after an error renews a period once.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

log = logging.getLogger("inferbus.renewals")
TICK_S = 1.0  # a period ends at most this long before it is renewed


class RenewalClock:
    """When each subscription is next due (``account -> renews_at``), from the
    ledger's subscription events after ``position``."""

    def __init__(self, ledger) -> None:
        self.ledger = ledger
        self.position = 0
        self.due_at: dict[str, datetime] = {}

    def follow(self) -> None:
        """Read the subscription events logged since the last call."""
        while True:
            # Where the ledger ends before the read: with nothing more to read, the
            # next read starts there, so it never rescans the events of other kinds.
            end = self.ledger.max_notification_id()
            page = self.ledger.schedule_changes(self.position)
            if not page:
                self.position = max(self.position, end)
                return
            for notification_id, account, what, renews_at in page:
                if what == "Lapsed":
                    self.due_at.pop(account, None)
                elif renews_at is not None:
                    self.due_at[account] = renews_at
                self.position = notification_id

    def tick(self, now: datetime | None = None) -> int:
        """Renew or lapse every subscription due by ``now``; how many were due."""
        now = now or datetime.now(timezone.utc)
        self.follow()
        due = [a for a, at in self.due_at.items() if at <= now]
        for account in due:
            try:
                self.ledger.renew_due(account, now)
            except Exception:  # noqa: BLE001 - one account must not stop the others
                log.exception("renewing the subscription of %s failed; retrying", account)
        return len(due)

    async def run(self, stop: asyncio.Event, tick_s: float = TICK_S) -> None:
        """Tick until ``stop`` is set; a failing ledger is retried at the next tick."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # noqa: BLE001 - the database may be back at the next tick
                log.warning("renewal clock: the ledger failed", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), tick_s)
            except asyncio.TimeoutError:
                pass
