"""Two minutes of seeded chaos under load keep every invariant (I1-I5).

The same soak as ``python -m bench.soak`` (``tests/chaos``), cut to two
minutes: workers SIGKILLed and stalled, a NATS server of the 3-node cluster
SIGKILLed and restarted, the projector SIGKILLed and restarted, streams
dropped by their clients. ``INFERBUS_SOAK_SEED`` picks another seed; a
failure prints the seed and the schedule to rerun it. It is the suite's longest
test (3.5 minutes on two cores), so it runs by hand (``tests.by_hand``):
``INFERBUS_RUN_SOAKS=1 .venv/bin/python -m pytest tests/e2e/test_chaos_soak.py``.
"""
from __future__ import annotations

import os

import pytest

from tests.by_hand import SOAK
from tests.chaos import soak
from tests.chaos.summary import table

SEED = int(os.environ.get("INFERBUS_SOAK_SEED", "20240607"))
pytestmark = SOAK


@pytest.mark.timeout(540)  # 2 min of load, ~0.5 to boot, settle wait, audit
def test_two_minute_chaos_soak_keeps_every_invariant(models_dir, tmp_path):
    report = soak.run(soak.Config(SEED, 2.0, tmp_path, models_dir=models_dir))
    print(table(report))  # shown by pytest when the test fails
    failed = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    assert not failed, (f"seed {SEED} (rerun: python -m bench.soak --seed {SEED} --minutes 2): "
                        + "; ".join(failed))
    kinds = {f["kind"] for f in report["faults_injected"]}
    assert kinds == {"worker_kill", "worker_stall", "nats_kill", "projector_kill"}, kinds
    assert report["outcomes"].get("disconnected", 0) > 0, report["outcomes"]
