"""Run the live projector over a test's stream until it has committed a position."""
from __future__ import annotations

import asyncio

from projections.projector import Projector
from projections.store import Store


async def project(store: Store, js, upto: int, timeout: float = 20.0) -> Projector:
    """Run the live projector until it has committed stream sequence ``upto``."""
    projector, stop = Projector(store, js), asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    try:
        await projector.wait_for(upto, timeout=timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    return projector
