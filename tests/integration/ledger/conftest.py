"""The settlement world: a real JetStream, a real ledger, settlement consuming,
the claims bucket on a fake clock, and two node keys."""
import asyncio
from types import SimpleNamespace

import pytest

from bus import signing
from bus.leases import Leases
from bus.pricing import Pricing
from bus.streams import claims_bucket
from ledger import settlement
from tests.fakeclock import Clock


@pytest.fixture
async def world(js, ledger, tmp_path):
    clock = Clock()
    leases = Leases(await claims_bucket(js, 600), lease_s=10, clock=clock)
    stop = asyncio.Event()
    settles = settlement.Settlement(ledger, Pricing())
    consumer = asyncio.create_task(settlement.consume(js, settles, leases, stop, ack_wait_s=2))
    world = SimpleNamespace(js=js, ledger=ledger, leases=leases, clock=clock, settlement=settles,
                            key=signing.load_or_create_key(tmp_path / "node.key"),
                            other=signing.load_or_create_key(tmp_path / "other.key"))
    yield world
    stop.set()
    await consumer
