"""``inferbus audit``: replay the whole log and check it against every invariant.

:func:`audit` takes a consistent snapshot of the live read model (its rows and
its stream position P), then replays the EVENTS stream once from sequence 1:

- events 1..P are rebuilt into a scratch SQLite file by the projector's own
  :func:`~projections.projector.apply_batch`, in a child process
  (:class:`~projections.rebuild.ScratchRebuild`; ``parallel=False``: in this
  one, through :func:`~projections.rebuild.rebuild`), while the money checker
  (:mod:`projections.invariants`) observes every event here;
- the rebuilt tables must equal the live ones row by row (I3): both are the
  same events applied by the same code, so any difference is a lost,
  repeated or tampered-with write;
- events P+1..the stream's end (written while we looked) feed the checker only;
- the checker then judges I1, I2, I4 and I5 over the whole log, and, when the
  ledger's own account views are given, each must equal the replayed account.

One read of the log serves both. Both snapshots are held in memory for the
comparison. Amounts are integer micro-credits throughout.
"""
from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from bus import subjects
from projections.invariants import Checker, Violations
from projections.readmodels import POSITION, TABLES, open_store_url
from projections.rebuild import ScratchRebuild, rebuild
from projections.replay import read_stream
from projections.store import Store, Table, read_position, utc

DEFAULT_GRACE_S = 120.0  # beyond the expiry sweep's grace (30 s) and its period
LEDGER_FIELDS = ("balance", "held", "spent", "deposited", "rcp")
Rows = dict[str, dict[Any, dict[str, Any]]]


@dataclass
class AuditReport:
    """What :func:`audit` found. ``ok`` is True when no invariant is violated."""

    ok: bool
    events: int
    jobs: int
    reservations: int
    accounts: int
    violations: list[str] = field(default_factory=list)
    malformed: int = 0
    open_reservations: int = 0  # pending and still within deadline + grace
    live_position: int = 0
    stream_last: int = 0
    ledger_accounts: int | None = None  # how many ledger views were compared
    elapsed_s: float = 0.0
    unlisted: int = 0  # violations counted beyond the per-invariant line limit

    def render(self) -> str:
        rate = self.events / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"audit: {self.events:,} events replayed in {self.elapsed_s:.2f}s ({rate:,.0f}/s), "
            f"{self.malformed} malformed",
            f"  jobs {self.jobs:,}  reservations {self.reservations:,} "
            f"({self.open_reservations} open)  accounts {self.accounts:,}",
            f"  live read model at sequence {self.live_position:,} of {self.stream_last:,}; "
            + ("ledger not compared" if self.ledger_accounts is None
               else f"{self.ledger_accounts} ledger accounts compared"),
        ]
        if self.ok:
            lines.append("OK: I1 I2 I3 I4 I5 I6 I7 I8 I9 hold")
        else:
            total = len(self.violations) + self.unlisted
            lines.append(f"FAILED: {total} violation(s)")
            lines += [f"  {v}" for v in self.violations]
            if self.unlisted:
                lines.append(f"  ... and {self.unlisted} more")
        return "\n".join(lines)


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


async def _replay(js: JetStreamContext, path: Path, rebuild_process: ScratchRebuild | None,
                  upto: int, last: int, checker: Checker, timeout: float) -> int:
    """Rebuild 1..``upto`` into ``path`` while ``checker`` sees 1..``last``;
    returns the position the rebuild reached."""
    if rebuild_process is None:  # one process: the projector's rebuild observes for us
        scratch = open_store_url(path)
        try:
            reached = await rebuild(scratch, js, timeout=timeout, upto=upto,
                                    observe=checker.observe)
        finally:
            scratch.close()
        async for batch in read_stream(js, reached + 1, last):
            checker.observe_raw(batch)
        return reached
    async with asyncio.timeout(timeout):
        async for batch in read_stream(js, 1, last):
            head = batch if batch[-1].seq <= upto else [d for d in batch if d.seq <= upto]
            if head:
                rebuild_process.send(head)
            checker.observe_raw(batch)
    return await rebuild_process.finish(timeout)


async def audit(js: JetStreamContext, live_store: Store, ledger_accounts: list | None = None,
                *, now: datetime | None = None, grace_s: float = DEFAULT_GRACE_S,
                parallel: bool = True, timeout: float = 3600.0) -> AuditReport:
    """Replay the EVENTS stream and check I1-I5 (module docstring).

    ``ledger_accounts``: the ledger's account views (``account, balance, held,
    spent, deposited, rcp``). ``parallel``: rebuild in a child process (see
    :class:`~projections.rebuild.ScratchRebuild`); False rebuilds in this one,
    through :func:`~projections.rebuild.rebuild`. ``now`` and ``grace_s``: what counts
    as overdue (:mod:`projections.invariants`)."""
    started = time.perf_counter()
    checker = Checker()
    with tempfile.TemporaryDirectory(prefix="inferbus-audit-") as scratch_dir:
        path = Path(scratch_dir) / "rebuild.sqlite3"
        rebuild_process = ScratchRebuild(path) if parallel else None
        try:
            live_position, live = await asyncio.to_thread(snapshot, live_store)
            last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
            reached = await _replay(js, path, rebuild_process, min(live_position, last), last,
                                    checker, timeout)
        finally:
            if rebuild_process is not None:
                rebuild_process.close()
        scratch = open_store_url(path)
        try:
            _, rebuilt = await asyncio.to_thread(snapshot, scratch)
        finally:
            scratch.close()
    if live_position > reached:
        checker.v.add("I3", f"live read model at sequence {live_position}, beyond what the "
                            f"stream replays ({reached} of {last}): built from another log?")
    else:
        compare_rows(live, rebuilt, checker.v)
    await asyncio.to_thread(checker.finish, now, grace_s)
    if ledger_accounts is not None:
        compare_ledger(checker, ledger_accounts, checker.v)
    v = checker.v
    return AuditReport(
        ok=v.total == 0, events=checker.events, jobs=len(checker.jobs),
        reservations=sum(1 for j in checker.jobs.values() if j.reserves),
        accounts=len(checker.accounts), violations=list(v.lines), malformed=checker.malformed,
        open_reservations=checker.open_reservations, live_position=live_position,
        stream_last=last, elapsed_s=time.perf_counter() - started,
        ledger_accounts=None if ledger_accounts is None else len(ledger_accounts),
        unlisted=v.total - len(v.lines))
