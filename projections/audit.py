"""``inferbus audit``: replay the log and check it against every invariant,
from the first event or from the last checkpoint.

:func:`audit` takes a consistent snapshot of the live read model (its rows and
its stream position P), then reads the EVENTS stream once:

- events up to P are rebuilt into a scratch SQLite file by the projector's own
  :func:`~projections.projector.apply_batch`, in a child process for a long
  replay (:class:`~projections.rebuild.ScratchRebuild`), else in this one
  (:class:`~projections.rebuild.LocalRebuild`), while the money checker
  (:mod:`projections.invariants`) observes every event here;
- the rebuilt tables must equal the live ones row by row (I3): both are the
  same events applied by the same code, so any difference is a lost,
  repeated or tampered-with write (:mod:`projections.audit_compare`);
- events P+1..the stream's end (written while we looked) feed the checker only;
- the checker then judges I1, I2, I4 and I5 over the whole log, and, when the
  ledger's own account views are given, each must equal the replayed account.

With ``checkpoints`` (:mod:`projections.audit_checkpoint`), an audit resumes
from the last checkpoint, once its signature, its files and the log at its
marks check out: the scratch file starts as the checkpoint's rebuild and the
checker as its state (:mod:`projections.audit_resume`), so only the events
after them are read. The rows are still compared in full and ``finish``
still judges every job. An audit that passes writes the next checkpoint.
``full=True`` replays from the first event whatever the checkpoint.

Amounts are integer micro-credits throughout.
"""
from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

from nats.js import JetStreamContext

from bus import subjects
from projections import audit_resume
from projections.audit_checkpoint import Checkpoint, CheckpointRefused, Checkpoints, Mark
from projections.audit_compare import (Rows, compare_files, compare_ledger, compare_rows,
                                       live_snapshot, snapshot)
from projections.audit_replay import replay
from projections.invariants import Checker, Violations
from projections.readmodels import open_store_url
from projections.layout import Partition, Resumable, layout
from projections.rebuild import LocalRebuild, ScratchRebuild, positions
from projections.replay import collector_paused
from projections.store import Store

__all__ = ["AuditReport", "audit", "compare_ledger", "compare_rows", "snapshot"]
DEFAULT_GRACE_S = 120.0  # beyond the expiry sweep's grace (30 s) and its period
# A child process costs ~0.5 s of CPU to start: worth it only for a long replay
# (~40,000 events/s rebuilt in one process on a small machine).
CHILD_FROM_EVENTS = 20_000
FIRST = Mark(0, "")


@dataclass
class AuditReport:
    """What :func:`audit` found. ``ok`` is True when no invariant is violated."""

    ok: bool
    events: int  # replayed by this audit (after the checkpoint, when it resumed)
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
    resumed_from: int | None = None  # the checkpoint's sequence, when it resumed
    checkpoint: str | None = None  # what became of checkpoints, when kept

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
        if self.checkpoint:
            lines.append(f"  checkpoint: {self.checkpoint}")
        if self.ok:
            lines.append("OK: I1 I2 I3 I4 I5 I6 I7 I8 I9 hold")
        else:
            total = len(self.violations) + self.unlisted
            lines.append(f"FAILED: {total} violation(s)")
            lines += [f"  {v}" for v in self.violations]
            if self.unlisted:
                lines.append(f"  ... and {self.unlisted} more")
        return "\n".join(lines)


def _cpus() -> int:
    """The CPUs this process may run on (a container's share, where Linux says)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _compare_with_rebuild(live: Rows, path: Path, v: Violations) -> None:
    scratch = open_store_url(path, scratch=True)
    try:
        _, rebuilt = snapshot(scratch)
    finally:
        scratch.close()
    compare_rows(live, rebuilt, v)


async def _resume(js: JetStreamContext, checkpoints: Checkpoints, live: Store, created: str,
                  scratch: Path, parts: Sequence[Partition]) -> tuple[Checkpoint | None, str]:
    """The checkpoint to resume from, its rebuild copied to ``scratch``, or None
    and why not (in the report's words). Raises :class:`CheckpointRefused` for
    one that fails a check."""
    checkpoint, why_not = await asyncio.to_thread(checkpoints.load, scratch)
    if checkpoint is None:
        return None, f"{why_not}: replayed from the first event"
    await checkpoints.verify_log(js, checkpoint, created)
    # The live store only moves forward: if a partition of it is behind the
    # checkpoint's rebuild now (rebuilt from nothing, say), the rows cannot be
    # compared at its position.
    rebuilt = await asyncio.to_thread(_positions_of_file, scratch, parts)
    now = await asyncio.to_thread(positions, live, parts)
    for name, seq in rebuilt.items():
        if now[name] < seq:
            label = "" if len(parts) == 1 else f"{name} at "
            return None, (f"the last one is ahead of the live read model ({label}{seq:,} > "
                          f"{now[name]:,}): replayed from the first event")
    return checkpoint, f"resumed after sequence {checkpoint.checked.seq:,}"


def _positions_of_file(path: Path, parts: Sequence[Partition]) -> dict[str, int]:
    scratch = open_store_url(path, scratch=True)
    try:
        return positions(scratch, parts)
    finally:
        scratch.close()


async def audit(js: JetStreamContext, live_store: Store, ledger_accounts: list | None = None,
                *, now: datetime | None = None, grace_s: float = DEFAULT_GRACE_S,
                parallel: bool | None = None, timeout: float = 3600.0,
                checkpoints: Checkpoints | None = None, full: bool = False,
                partitions: int = 1) -> AuditReport:
    """Replay the EVENTS stream and check I1-I9 (module docstring).

    ``ledger_accounts``: the ledger's account views (``account, balance, held,
    spent, deposited, rcp``). ``parallel``: rebuild in a child process (see
    :class:`~projections.rebuild.ScratchRebuild`), else in this one; None: in
    a child when more than ``CHILD_FROM_EVENTS`` are to be rebuilt and this
    process may run on more than one CPU. ``now``
    and ``grace_s``: what counts as overdue (:mod:`projections.invariants`).
    ``checkpoints``: resume from the last checkpoint (unless ``full``) and
    write one if the audit passes; a checkpoint that fails a check raises
    :class:`~projections.audit_checkpoint.CheckpointRefused`. ``partitions``:
    the deployment's ledger shards, whose read-model partitions
    (:mod:`projections.layout`) are each rebuilt to their own live position."""
    parts = layout(partitions)
    started = time.perf_counter()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    created = info.created.isoformat() if isinstance(info.created, datetime) else str(info.created)
    resume, said = None, None
    # Loading a checkpoint's state makes an object or more per job ever audited:
    # the collector would walk them again and again (and all else the process holds).
    with collector_paused(), tempfile.TemporaryDirectory(prefix="inferbus-audit-") as scratch_dir:
        path = Path(scratch_dir) / "rebuild.sqlite3"
        if checkpoints is not None:
            resume, said = ((None, "not used (a full replay)") if full else
                            await _resume(js, checkpoints, live_store, created, path, parts))
            if resume is None:
                path.unlink(missing_ok=True)  # a checkpoint set aside: start empty
        try:
            checker = audit_resume.load(resume.state) if resume else Checker()
        except ValueError as exc:  # signed and intact, yet unreadable: our own bug
            raise CheckpointRefused(f"its state is unreadable ({exc})") from None
        events_before, malformed_before = checker.events, checker.malformed
        if parallel is None:  # the live position is not known yet: the log's end bounds it
            parallel = _cpus() > 1 and \
                info.state.last_seq - (resume.rebuilt.seq if resume else 0) > CHILD_FROM_EVENTS
        sink = ScratchRebuild(path) if parallel else LocalRebuild(path)
        live_copy = Path(scratch_dir) / "live.sqlite3"
        try:  # a child process takes ~0.4 s to start: the snapshot runs meanwhile
            held, live = await asyncio.to_thread(live_snapshot, live_store, live_copy)
            last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
            cuts = {p.name: min(held.get(p.name, 0), last) for p in parts}
            sink.start((parts, cuts))
            rebuilt, checked, reached = await replay(
                js, sink, checker, rebuilt=resume.rebuilt if resume else FIRST,
                upto=max(cuts.values()), checked=resume.checked if resume else FIRST,
                last=last, timeout=timeout, resumable=Resumable(parts, cuts))
        finally:
            sink.close()
        live_position = max(held.values(), default=0)
        beyond = {n: seq for n, seq in held.items() if seq > reached.get(n, 0)}
        if beyond:
            checker.v.add("I3", "live read model at " + ", ".join(
                f"{n} {seq}" for n, seq in sorted(beyond.items())) + ", beyond what the stream "
                f"replays ({last} events) for partitions of {partitions}: built from another "
                "log, or with another INFERBUS_LEDGER_PARTITIONS?")
        elif live is None:
            await asyncio.to_thread(compare_files, live_copy, path, checker.v)
        else:
            await asyncio.to_thread(_compare_with_rebuild, live, path, checker.v)
        # The state a later audit resumes from is the one before `finish`.
        unchanged = resume is not None and (checked, rebuilt) == (resume.checked, resume.rebuilt)
        state = audit_resume.dump(checker) if checkpoints is not None and not unchanged and \
            not checker.v.total else None
        await asyncio.to_thread(checker.finish, now, grace_s)
        if ledger_accounts is not None:
            compare_ledger(checker, ledger_accounts, checker.v)
        v = checker.v
        if checkpoints is not None:
            if v.total or reached != cuts:
                said += "; none written (the audit failed)"
            elif unchanged or state is None:
                said += "; it stands (nothing new)"
            else:
                await asyncio.to_thread(checkpoints.write, created=created, checked=checked,
                                        rebuilt=rebuilt, state=state, rebuild_file=path)
                said += f"; a new one at sequence {checked.seq:,}"
    return AuditReport(
        ok=v.total == 0, events=checker.events - events_before, jobs=len(checker.jobs),
        reservations=sum(1 for j in checker.jobs.values() if j.reserves),
        accounts=len(checker.accounts), violations=list(v.lines),
        malformed=checker.malformed - malformed_before,
        open_reservations=checker.open_reservations, live_position=live_position,
        stream_last=last, elapsed_s=time.perf_counter() - started,
        ledger_accounts=None if ledger_accounts is None else len(ledger_accounts),
        unlisted=v.total - len(v.lines), resumed_from=resume.checked.seq if resume else None,
        checkpoint=said)
