"""I3 and the ledger check of ``inferbus audit`` (:mod:`projections.audit`): a
consistent snapshot of a store's read models, the live rows compared with the
rebuilt ones row by row, and the ledger's account views compared with the
accounts replayed from the log."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from projections.invariants import Checker, Violations
from projections.readmodels import POSITION, TABLES
from projections.store import Store, Table, read_position, utc

LEDGER_FIELDS = ("balance", "held", "spent", "deposited", "rcp")
Rows = dict[str, dict[Any, dict[str, Any]]]


def _normalize(row: dict[str, Any], table: Table) -> dict[str, Any]:
    # SQLite returns timestamps as ISO text, PostgreSQL as datetimes.
    out = dict(row)
    for name in table.timestamps:
        out[name] = None if out[name] is None else utc(out[name])
    return out


def snapshot(store: Store) -> tuple[int, Rows]:
    """Every read-model row, by table and key, and the position they reflect,
    read in one consistent snapshot (REPEATABLE READ on PostgreSQL, one WAL
    read transaction in SQLite)."""
    with store.transaction(write=False) as tx:
        if tx.dialect == "postgres":  # READ COMMITTED would give each SELECT its own view
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        position = read_position(tx, POSITION)
        rows: Rows = {table.name: {r[table.key]: r for r in tx.query(f"SELECT * FROM {table.name}")}
                      for table in TABLES}
    return position, rows


def _short(value: Any) -> str:
    text = value.isoformat() if isinstance(value, datetime) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def compare_rows(live: Rows, rebuilt: Rows, v: Violations) -> None:
    """I3: each table of the live read model equals the rebuild, row by row."""
    for table in TABLES:
        live_rows, rebuilt_rows = live.get(table.name, {}), rebuilt.get(table.name, {})
        differing = [k for k, row in rebuilt_rows.items() if live_rows.get(k) != row]
        differing += [k for k in live_rows if k not in rebuilt_rows]
        for key in sorted(differing, key=str):
            mine, theirs = rebuilt_rows.get(key), live_rows.get(key)
            if mine is not None and theirs is not None:
                # Equal values may differ in form only (text vs datetime).
                mine, theirs = _normalize(mine, table), _normalize(theirs, table)
            row = f"table {table.name} row {key}:"
            if theirs is None:
                v.add("I3", f"{row} in the rebuild, missing from the live store")
            elif mine is None:
                v.add("I3", f"{row} in the live store, not in the rebuild")
            elif mine != theirs:
                v.add("I3", f"{row} " + "; ".join(
                    f"{c} live={_short(theirs.get(c))} rebuilt={_short(mine[c])}"
                    for c in mine if theirs.get(c) != mine[c]))


def compare_ledger(checker: Checker, ledger_accounts: list, v: Violations) -> None:
    """Each ledger account view equals the account replayed from the log."""
    for view in ledger_accounts:
        name = _get(view, "account")
        replayed = checker.accounts.get(name)
        for attr in LEDGER_FIELDS:
            expected = getattr(replayed, attr) if replayed is not None else 0
            found = _get(view, attr)
            if found != expected:
                v.add("ledger", f"account {name}: {attr} {found} in the ledger, "
                                f"{expected} replayed from the log")


def _get(view: Any, name: str) -> Any:
    return view[name] if isinstance(view, dict) else getattr(view, name)
