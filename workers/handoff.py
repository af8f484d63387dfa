"""Steps handed from the batcher's thread to the event loop that reads them.

A generation runs on the batcher's thread while its caller reads Steps on an
event loop. :func:`steps_until_final` ends at the Step with a finish_reason,
re-raises an exception handed over instead, and sets ``gone`` when the reader
stops early (closed, cancelled), which the producer polls as a stop request
(:func:`stop_if_any`).
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable

from workers.generation import Step


def deliver(posts: list[tuple[asyncio.Queue, threading.Event, Step | BaseException]]) -> None:
    """On an event loop: put each handed-over item into its reader's queue."""
    for items, _, item in posts:
        items.put_nowait(item)


def stop_if_any(first: Callable[[], bool],
                second: Callable[[], bool] | None) -> Callable[[], bool]:
    """A stop test that is true when either is (``second`` may be None)."""
    return first if second is None else (lambda: first() or second())


async def steps_until_final(items: asyncio.Queue, gone: threading.Event) -> AsyncIterator[Step]:
    """Steps from ``items`` up to the final one."""
    try:
        while True:
            yield (step := _checked(await items.get()))
            if step.finish_reason is not None:
                return
    finally:
        gone.set()  # a caller that left early stops its sequence


def _checked(item: Step | BaseException) -> Step:
    """``item``, or the exception handed over instead raised."""
    if isinstance(item, BaseException):
        raise item
    return item
