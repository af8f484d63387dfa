"""Chaos soak: a seeded fault schedule against a 3-node JetStream cluster stack
under steady chat load; afterwards every invariant must hold.

    .venv/bin/python -m bench.soak [--seed N] [--minutes M] [--single-nats] [--plan]

For ``M`` minutes (at most 8; setup and the settle wait add about 1.5) three
client threads send sync, streaming and async (polled) chat requests, and drop
some streams mid-way, while the schedule SIGKILLs workers, stalls them
(SIGSTOP, then SIGCONT), SIGKILLs one NATS server of the cluster and restarts
it, and SIGKILLs and restarts the projector. The schedule depends on the seed
alone (``tests/chaos/schedule.py``); it is printed first, and ``--plan``
prints it without running anything. Then: no process may have died on its
own and every worker must beat again, the network must serve a new request,
every accepted request must have ended (completed, failed with an error in
OpenAI's shape, or cancelled/refunded), the log and the ledger must hold no
open reservation, each job must have been charged what its first outcome asks
(a completion its usage, a cancel what was produced, anything else nothing),
every completed stream must have delivered exactly the logged text,
``inferbus audit`` (I1-I5) must exit 0 with nothing open, and no
process log may show an exception that only a bug explains (a contract's
ValidationError, a TypeError, ...; NATS timeouts during an outage are fine).

Prints a summary table, writes bench/results/soak.json, and exits 1 (naming
the seed to rerun) when any check fails. ``--single-nats`` runs the same
schedule on one server, killing and restarting that one.
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

from bench.report import save
from tests.chaos import soak
from tests.chaos.schedule import plan, render
from tests.chaos.summary import table

MAX_MINUTES = 8.0  # with setup and settling, a run stays within 10 minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh random one")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--single-nats", action="store_true")
    parser.add_argument("--plan", action="store_true", help="print the schedule and stop")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch dir (process logs, stores); kept on failure")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes must be in (0, {MAX_MINUTES:g}]")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed {seed}", flush=True)
    if args.plan:
        print(render(seed, plan(seed, args.minutes, soak.WORKERS, 1 if args.single_nats else 3)))
        return 0
    root = Path(tempfile.mkdtemp(prefix="inferbus-soak-"))
    report = soak.run(soak.Config(seed, args.minutes, root, single_nats=args.single_nats))
    print(table(report))
    if report["ok"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"process logs and stores kept in {root}")
    print(f"-> {save('soak', report)}")
    if not report["ok"]:
        print(f"SOAK FAILED, seed {seed}: rerun with python -m bench.soak --seed {seed} "
              f"--minutes {args.minutes:g}", file=sys.stderr)
        return 1
    print(f"soak passed, seed {seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
