"""``inferbus audit [--full]``: replay the log and check every invariant.

By default the audit resumes from the last checkpoint in ``<data dir>/audit``
(:mod:`projections.audit_checkpoint`) and replays only the events after it;
``--full`` replays from the first event. Either way an audit that passes
writes the next checkpoint there, signed with the auditor's key
(``<data dir>/audit/auditor.key``, made on the first one). A checkpoint that
fails a check (its signature, its files, the log at its position) stops the
audit with one line and exit code 1, as a failed audit does; ``--full`` then
replays everything and replaces it if the log passes.
"""
from __future__ import annotations

import asyncio

from bus.config import Settings

CHECKPOINT_DIR = "audit"


def add_parser(sub) -> None:
    audit = sub.add_parser("audit", help="replay the log and check every invariant (from the "
                           "last checkpoint; --full: from the first event)")
    audit.add_argument("--full", action="store_true",
                       help="replay from the first event, whatever the checkpoint")


async def run_audit(settings: Settings, full: bool = False):
    """Replay the log and check it against the live read models and the ledger."""
    from cli.admin import connect_admin
    from ledger import open_ledger
    from projections.audit import audit
    from projections.audit_checkpoint import Checkpoints
    from projections.readmodels import open_store
    nc, js = await connect_admin(settings)
    store = await asyncio.to_thread(open_store, settings)
    ledger = await asyncio.to_thread(open_ledger, settings)
    try:
        return await audit(js, store, await asyncio.to_thread(ledger.accounts),
                           checkpoints=Checkpoints(settings.data_dir / CHECKPOINT_DIR),
                           full=full, partitions=settings.ledger_partitions)
    finally:
        await nc.close()
        store.close()
        ledger.close()


def dispatch(args, settings: Settings) -> int:
    """Print the report; 0 when every invariant holds, else 1."""
    from projections.audit_checkpoint import CheckpointRefused
    try:
        report = asyncio.run(run_audit(settings, args.full))
    except CheckpointRefused as exc:
        raise RuntimeError(f"{exc}; `inferbus audit --full` replays from the first event "
                           "and replaces it if the log passes") from None
    print(report.render())
    return 0 if report.ok else 1
