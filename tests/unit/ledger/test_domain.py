"""The ledger's stored history stays readable: events and snapshots name their
classes by topic, and a database written before the money package moved (from
``bus/ledger/`` to ``ledger/``) still loads, balances, relays and takes new
events under the same names."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from eventsourcing.utils import get_topic, resolve_topic

from bus.config import Settings
from ledger import Ledger
from ledger.domain import STORED_MODULE, Account, Deposit, Reservation
from ledger.log_events import MONEY_TOPICS

OLD = Path(__file__).parents[2] / "data" / "ledger"


def test_every_stored_class_keeps_its_historic_topic():
    for cls in (Account, Account.Deposited, Account.Snapshot, Reservation.Settled,
                Deposit.Recorded):
        topic = get_topic(cls)
        if cls is not Account.Snapshot:  # eventsourcing's own class: its topic is its own
            assert topic == f"{STORED_MODULE}:{cls.__qualname__}"
        assert resolve_topic(topic) is cls
    # Subscription aggregates (ledger.plans) came after the move: their topics are their own.
    assert all(t.startswith((f"{STORED_MODULE}:Account.", "ledger.plans:Plan.",
                             "ledger.plans:Subscription.")) for t in MONEY_TOPICS)


def test_a_ledger_written_before_the_move_loads_relays_and_goes_on(tmp_path):
    shutil.copy(OLD / "before-the-move.sqlite3", tmp_path / "ledger.sqlite3")
    expected = json.loads((OLD / "before-the-move.json").read_text())
    ledger = Ledger.open(Settings(data_dir=tmp_path, nats_url="nats://unused"))
    try:
        assert {a.account: a.__dict__ for a in ledger.accounts()} == expected["accounts"]
        relayed = ledger.bus_events(0, 1000)
        assert {z for _, _, z in relayed} == {"global"}  # money is logged globally
        # The digest was taken when money was logged on its job's zone, the one in each event.
        events = [(n, e.model_dump(mode="json"), e.zone) for n, e, _ in relayed]
        assert len(events) == expected["bus_events"]
        digest = hashlib.sha256(json.dumps([list(e) for e in events], sort_keys=True).encode())
        assert digest.hexdigest() == expected["bus_events_sha256"]
        ledger.deposit("alice", 1_000_000, "dep-1")  # a repeated receipt: still a no-op
        ledger.deposit("bob", 1)  # on top of the snapshot taken before the move
        assert ledger.account("alice").balance == 4_600_000
        assert ledger.account("bob").balance == 206
        assert len(ledger.bus_events(0, 1000)) == expected["bus_events"] + 1
    finally:
        ledger.close()
