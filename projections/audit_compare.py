"""I3 and the ledger check of ``inferbus audit`` (:mod:`projections.audit`): a
consistent snapshot of a store's read models, the live rows compared with the
rebuilt ones row by row, and the ledger's account views compared with the
accounts replayed from the log.

A SQLite live store is snapshotted as a copy of its file (:func:`live_snapshot`)
and compared with the rebuilt file in SQLite itself (:func:`compare_files`):
only the rows that differ are read into Python, where reading every row of
both stores cost a tenth of a full audit and most of one from a checkpoint.
A PostgreSQL one is read into memory (:func:`snapshot`, :func:`compare_rows`).
"""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from projections.invariants import Checker, Violations
from projections.layout import is_position, stored_positions
from projections.readmodels import TABLES
from projections.store import SqliteStore, Store, Table, utc

LEDGER_FIELDS = ("balance", "held", "spent", "deposited", "rcp")
Rows = dict[str, dict[Any, dict[str, Any]]]
Positions = dict[str, int]  # a stored position per read-model partition


def _normalize(row: dict[str, Any], table: Table) -> dict[str, Any]:
    # SQLite returns timestamps as ISO text, PostgreSQL as datetimes.
    out = dict(row)
    for name in table.timestamps:
        out[name] = None if out[name] is None else utc(out[name])
    return out


def snapshot(store: Store) -> tuple[Positions, Rows]:
    """Every read-model row, by table and key, and the position of each partition
    they reflect (:mod:`projections.layout`), read in one consistent snapshot
    (REPEATABLE READ on PostgreSQL, one WAL read transaction in SQLite)."""
    with store.transaction(write=False) as tx:
        if tx.dialect == "postgres":  # READ COMMITTED would give each SELECT its own view
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        position = stored_positions(tx)
        rows: Rows = {table.name: {r[table.key]: r
                                   for r in tx.query(f"SELECT * FROM {table.name}")}
                      for table in TABLES}
    return position, rows


def live_snapshot(store: Store, copy: Path) -> tuple[Positions, Rows | None]:
    """The live read model at one set of positions, and those positions: a SQLite
    store copied whole to ``copy`` (rows None: :func:`compare_files` reads it),
    any other read into memory."""
    if not isinstance(store, SqliteStore):
        return snapshot(store)
    store.copy_to(copy)
    conn = sqlite3.connect(copy)
    try:
        found = conn.execute("SELECT projection, position FROM tracking").fetchall()
    finally:
        conn.close()
    return {name: int(pos) for name, pos in found if is_position(name)}, None


def compare_files(live: Path, rebuilt: Path, v: Violations) -> None:
    """I3 for two SQLite files, judged as :func:`compare_rows` judges them; the
    rows that differ (found by a join on each table's key) are all it reads."""
    conn = sqlite3.connect(rebuilt)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("ATTACH DATABASE ? AS live", (str(live),))
        differing: dict[str, Rows] = {"main": {}, "live": {}}
        for table in TABLES:
            t, key = table.name, f'"{table.key}"'
            columns = [f'"{r["name"]}"' for r in conn.execute(f"PRAGMA main.table_info({t})")]
            try:
                keys = [r[0] for r in conn.execute(
                    f"SELECT m.{key} FROM main.{t} m LEFT JOIN live.{t} l ON l.{key} = m.{key} "
                    f"WHERE {' OR '.join(f'm.{c} IS NOT l.{c}' for c in columns)} UNION ALL "
                    f"SELECT {key} FROM live.{t} WHERE {key} NOT IN (SELECT {key} FROM main.{t})")]
                select = f"SELECT {', '.join(columns)} FROM {{}}.{t} WHERE {key} IN " \
                         f"(SELECT value FROM json_each(?))"
                args: tuple = (json.dumps(keys),)
            except sqlite3.OperationalError:  # the live table lacks a column: all rows
                keys, select, args = [None], f"SELECT * FROM {{}}.{t}", ()
            for schema, rows in differing.items():
                rows[t] = {r[table.key]: dict(r) for r in
                           conn.execute(select.format(schema), args)} if keys else {}
    finally:
        conn.close()
    compare_rows(differing["live"], differing["main"], v)


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
