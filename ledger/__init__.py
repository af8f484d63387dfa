"""Money: the only code that changes it, and the code that moves it to the log.

- :mod:`ledger.domain`: the aggregates (an account, a job's reservation, a
  deposit receipt) and what each may do;
- :mod:`ledger.commands`: reserve, settle and refund as values, so many go in
  one save;
- :mod:`ledger.application`: :class:`Ledger`, the ``eventsourcing``
  application that applies them (how it keeps its books:
  :mod:`ledger.bookkeeping`; its database: :mod:`ledger.persistence`);
- :mod:`ledger.group_commit`: concurrent callers' reservations in group commits;
- :mod:`ledger.relay`: the ledger's money events onto the event log, in order;
- :mod:`ledger.settlement`: each job outcome on the log becomes one resolution;
- :mod:`ledger.expiry`: reservations held past their deadline are refunded;
- :mod:`ledger.referrals`: referral codes, sign-up links (rewards: ``Settle``);
- :mod:`ledger.subscriptions`: plans and subscriptions (aggregates:
  :mod:`ledger.plans`), renewed by :mod:`ledger.renewals`;
- :mod:`ledger.shards`: a ledger in shards by account (``bus.partitions``),
  behind the same calls; :mod:`ledger.transfers`: points owed across shards;
- :mod:`ledger.service`: the loops above as one running service (per shard).

Amounts are integer micro-credits (:mod:`bus.credits`).
"""
from ledger.application import Ledger
from ledger.commands import Refund, Reserve, Settle
from ledger.domain import InsufficientCredits
from ledger.group_commit import ReserveGroup
from ledger.log_events import bus_event_id
from ledger.outcomes import AccountView, ReservationView, Resolution, UnknownReservation
from ledger.persistence import ledger_env
from ledger.shards import Books, Shards, open_ledger

__all__ = ["AccountView", "Books", "InsufficientCredits", "Ledger", "Refund", "Reserve",
           "ReserveGroup", "ReservationView", "Resolution", "Settle", "Shards",
           "UnknownReservation", "bus_event_id", "ledger_env", "open_ledger"]
