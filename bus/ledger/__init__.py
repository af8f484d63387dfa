"""The credit ledger: the only code that changes money.

``Ledger`` (an ``eventsourcing`` application) holds every account's credits in
integer micro-credits: deposits, per-job reservations that settle (debit the
actual cost, refund the rest, award RCP to the serving operator) or refund in
full, each at most once. Its stored money events map to the bus contracts
(``CreditsDeposited``/``Reserved``/``Debited``/``Refunded``, ``RCPAwarded``)
through :meth:`Ledger.bus_events`. ``reserve_many``/``resolve_many`` apply many
commands (:mod:`bus.ledger.commands`) in one transaction; :class:`ReserveGroup`
is their async front for a server's concurrent requests. Persistence: ``Ledger.open(settings)``
(SQLite file, or PostgreSQL when ``database_url`` is set); ``Ledger()`` is
in-memory.
"""
from bus.ledger.app import Ledger
from bus.ledger.commands import Refund, Reserve, Settle
from bus.ledger.group import ReserveGroup
from bus.ledger.persistence import ledger_env
from bus.ledger.contracts import (AccountView, ReservationView, Resolution, UnknownReservation,
                                  bus_event_id)
from bus.ledger.domain import InsufficientCredits

__all__ = ["AccountView", "InsufficientCredits", "Ledger", "Refund", "Reserve", "ReserveGroup",
           "ReservationView", "Resolution", "Settle", "UnknownReservation", "bus_event_id",
           "ledger_env"]
