"""Strikes the gate and the API log count toward a node's suspension; a spot
check's own strike is not counted twice."""
from __future__ import annotations

import asyncio

import pytest

from bus.config import Settings
from bus.events import NodeStrike, NodeSuspended
from bus.grants import GrantBook, NodeGrant, put_grant
from bus.publish import publish_event
from bus.streams import grants_bucket
from tests.eventlog import read_log
from verifier.judges import Judges
from verifier.probes import Prober
from verifier.spot_checks import Verifier
from verifier.strikes import follow_strikes

pytestmark = pytest.mark.asyncio
NODE = "m" * 64


async def test_a_node_is_suspended_at_its_strike_limit(js, tmp_path):
    kv = await grants_bucket(js)
    await put_grant(kv, NodeGrant(node_id=NODE, node_name="mallory", operator="mal",
                                  zone="eu", models=("echo",), status="verified"))
    settings = Settings(data_dir=tmp_path, suspend_after_strikes=3)
    verifier = Verifier(js, kv, Judges(tmp_path), settings, Prober(js))
    stop = asyncio.Event()
    following = asyncio.create_task(follow_strikes(js, verifier.count, settings, stop))
    await asyncio.sleep(0.5)  # the consumer starts with what is logged after it
    for reason in ("outcome refused: forged", "spot check failed: not the model's output",
                   "lease request refused: not its queue", "outcome refused: forged"):
        await publish_event(js, NodeStrike(node_id=NODE, reason=reason), "eu")
    book = await GrantBook().follow(kv)
    try:
        for _ in range(100):
            if (g := book.get(NODE)) is not None and g.status == "suspended":
                break
            await asyncio.sleep(0.05)
        assert (book.get(NODE).status, book.get(NODE).strikes) == ("suspended", 3)
        suspended = [e for _, e in await read_log(js) if isinstance(e, NodeSuspended)]
        assert len(suspended) == 1 and suspended[0].reason.startswith("3 strikes")
    finally:
        stop.set()
        await following
        await book.close()
