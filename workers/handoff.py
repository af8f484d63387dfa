"""Steps handed from the thread that makes them to the code that reads them.

A generation runs on a thread of its own (the batcher's, or an executor's for
an unbatched engine) while its caller reads Steps from a blocking iterator or
an event loop. The readers here end at the Step with a finish_reason, re-raise
an exception handed over instead, and set ``gone`` when the reader stops early
(closed, cancelled), which the producer polls as a stop request.
"""
from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Iterator

from workers.decoding import Step
from workers.engine import Engine, GenerationRequest


def generate_in_thread(engine: Engine, request: GenerationRequest,
                       should_stop: Callable[[], bool] | None = None) -> AsyncIterator[Step]:
    """``engine.generate`` unbatched, in an executor thread, as an async iterator: for
    callers with no Batcher. Call it from a coroutine; it raises ContextLengthExceeded
    itself, as ``Engine.generate`` does."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Step | BaseException] = asyncio.Queue()
    gone = threading.Event()
    steps = engine.generate(request, either(gone.is_set, should_stop))

    def produce() -> None:
        try:
            for step in steps:
                loop.call_soon_threadsafe(items.put_nowait, step)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            loop.call_soon_threadsafe(items.put_nowait, exc)

    loop.run_in_executor(None, produce)
    return drain_async(items, gone)


def deliver(posts: list[tuple[asyncio.Queue, threading.Event, Step | BaseException]]) -> None:
    """On an event loop: put each handed-over item into its reader's queue."""
    for items, _, item in posts:
        items.put_nowait(item)


def either(first: Callable[[], bool], second: Callable[[], bool] | None) -> Callable[[], bool]:
    """A stop test that is true when either is (``second`` may be None)."""
    return first if second is None else (lambda: first() or second())


def drain(get: Callable[[], Step | BaseException], gone: threading.Event) -> Iterator[Step]:
    """Steps from ``get`` (blocking) up to the final one."""
    try:
        yield from _through_final(map(_checked, iter(get, None)))
    finally:
        gone.set()  # a caller that left early stops its sequence


async def drain_async(items: asyncio.Queue, gone: threading.Event) -> AsyncIterator[Step]:
    """Steps from ``items`` up to the final one."""
    try:
        while True:
            yield (step := _checked(await items.get()))
            if step.finish_reason is not None:
                return
    finally:
        gone.set()


def _checked(item: Step | BaseException) -> Step:
    """``item``, or the exception handed over instead raised."""
    if isinstance(item, BaseException):
        raise item
    return item


def _through_final(steps: Iterator[Step]) -> Iterator[Step]:
    for step in steps:
        yield step
        if step.finish_reason is not None:
            return
