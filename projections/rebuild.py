"""Rebuilding the read models with the projector's own
:func:`~projections.projector.apply_batch`: :func:`rebuild` from the first
event into an empty store, and the audit's rebuilds into a scratch SQLite file
(new, or a checkpoint's rebuild to carry on from): :class:`ScratchRebuild` in a
child process, :class:`LocalRebuild` in the audit's own.

:func:`rebuild` replays the log with the fast reader of :mod:`projections.replay`.

The child process is the audit's second core. The audit reads the log once.
It keeps the invariant checks and passes the raw events up to the live
store's position to the child, which applies them to a scratch SQLite file.
Checks and rebuild then run on two cores. Threads would not help: both halves
are Python-bound, and a thread that released the GIL for a SQLite call waits
for the busy one at every call.

Events travel through a pipe enlarged to 1 MiB where the OS allows, written
by a thread of the parent's from a queue of at most ``QUEUED_BATCHES``: the
reader goes on while the child starts or falls behind, and waits only when
the queue is full (back-pressure, bounded memory). ``spawn`` rather than
``fork``: the parent runs an event loop and worker threads. The child pauses
the garbage collector: it keeps nothing between batches that could form a
cycle, and a collection pass every few hundred parsed events cost ~10%.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import queue
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Mapping, Sequence

from nats.js import JetStreamContext

from bus import subjects
from projections.layout import Partition, apply_routed, layout, stored_positions
from projections.projector import Observer, apply_batch
from projections.readmodels import POSITION, is_empty, open_store_url
from projections.replay import Delivery, read_stream
from projections.store import Store, read_position

PIPE_BYTES = 1 << 20
QUEUED_BATCHES = 32  # of read_stream's 2,000 events: ~20 MB waiting at most
# A rebuild's partitions and where each stops: the live store's own positions.
Cut = tuple[Sequence[Partition], Mapping[str, int]]


async def rebuild(store: Store, js: JetStreamContext, *, projection: str = POSITION,
                  timeout: float = 300.0, upto: int | None = None, partitions: int = 1) -> int:
    """Replay the EVENTS stream from its first event into an empty ``store``.

    Applies everything up to ``upto`` (default: the stream's last sequence at
    call time) and returns the resulting position (less than ``upto`` only if
    the stream ends first). With ``partitions`` > 1 every partition of that
    layout (:mod:`projections.layout`) is applied, each to its own position.
    Raises ValueError if ``store`` already holds a projection (rebuild into a
    fresh store, then compare or swap), TimeoutError after ``timeout`` seconds."""
    parts = layout(partitions)

    def empty() -> bool:
        with store.transaction(write=False) as tx:
            return not any(stored_positions(tx).values()) and \
                read_position(tx, projection) == 0 and is_empty(tx)

    if not await asyncio.to_thread(empty):
        raise ValueError(f"rebuild of {projection!r} needs an empty store")
    if upto is None:
        upto = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    position, cuts = 0, {p.name: upto for p in parts}
    async with asyncio.timeout(timeout):
        async for batch in read_stream(js, 1, upto):
            # Off the event loop: the next batch arrives while this one commits.
            if partitions == 1:
                await asyncio.to_thread(apply_batch, store, batch, projection)
            else:
                await asyncio.to_thread(apply_routed, store, batch, parts, cuts)
            position = batch[-1].seq
    return position


def _apply(store: Store, deliveries: Sequence[Delivery], cut: Cut,
           observe: Observer | None = None) -> dict[str, int]:
    """Apply a rebuild's batch to each partition up to its cut: the positions."""
    parts, cuts = cut
    if len(parts) == 1:  # one partition: the replay cuts the batches already
        return {parts[0].name: apply_batch(store, deliveries, parts[0].name, observe).position}
    return apply_routed(store, deliveries, parts, cuts, observe)


def _child(path: str, events: Connection, results: Connection) -> None:
    # The parent reports malformed events itself; the child stays quiet.
    logging.getLogger("inferbus.projections").setLevel(logging.ERROR)
    gc.disable()
    try:
        store = open_store_url(path, scratch=True)
        cut = events.recv()  # sent once the parent has read the live positions
        position = positions(store, cut[0])
        try:
            while (rows := events.recv()) is not None:
                position = _apply(store, [Delivery(*row) for row in rows], cut)
        finally:
            store.close()
        results.send(("done", position))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        results.send(("error", traceback.format_exc()))


def _enlarge(conn: Connection) -> None:
    with contextlib.suppress(Exception):  # Linux only, and capped by fs.pipe-max-size
        import fcntl
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def positions(store: Store, parts: Sequence[Partition]) -> dict[str, int]:
    """Each of ``parts``' stored position."""
    with store.transaction(write=False) as tx:
        return {p.name: read_position(tx, p.name) for p in parts}


class ScratchRebuild:
    """A child process applying the batches it is sent to the SQLite file
    ``path`` (empty, or a rebuild to carry on from) with
    :func:`~projections.projector.apply_batch`, each partition up to the
    position :meth:`start` gives it."""

    def __init__(self, path: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        events_in, self._events = ctx.Pipe(duplex=False)
        self._results, results_out = ctx.Pipe(duplex=False)
        _enlarge(self._events)
        self._proc = ctx.Process(target=_child, args=(str(path), events_in, results_out),
                                 name="inferbus-audit-rebuild", daemon=True)
        self._proc.start()  # spawning takes ~0.4 s: start before anything else
        events_in.close()
        results_out.close()
        self._queue: queue.Queue[list[tuple] | None] = queue.Queue(QUEUED_BATCHES)
        self._broken = threading.Event()
        self._sender = threading.Thread(target=self._send_all, name="inferbus-audit-send",
                                        daemon=True)
        self._sender.start()

    def _send_all(self) -> None:
        # Writing to the pipe blocks while the child is behind, as it is while it
        # starts (~0.4 s, a pipe's worth of batches): here, not in the reader.
        try:
            while True:
                rows = self._queue.get()
                self._events.send(rows)
                if rows is None:
                    return
        except (BrokenPipeError, OSError):
            self._broken.set()

    def _put(self, rows: list[tuple] | None) -> None:
        while not self._broken.is_set():
            with contextlib.suppress(queue.Full):
                self._queue.put(rows, timeout=0.5)
                return
        raise RuntimeError(self._failure())

    def start(self, cut: Cut) -> None:
        """Where each partition stops, before the first batch."""
        self._put(cut)  # type: ignore[arg-type]

    def send(self, deliveries: Sequence[Delivery]) -> None:
        """Hand over a batch (blocks only while ``QUEUED_BATCHES`` wait for the child)."""
        self._put([(d.seq, d.subject, d.data) for d in deliveries])

    async def finish(self, timeout: float) -> dict[str, int]:
        """Wait for the child to apply everything; returns each partition's position."""
        self._put(None)
        if not await asyncio.to_thread(self._results.poll, timeout):
            raise TimeoutError(f"scratch rebuild still running after {timeout}s")
        try:
            status, value = self._results.recv()
        except EOFError:
            raise RuntimeError(self._failure()) from None
        await asyncio.to_thread(self._proc.join, 10)
        if status != "done":
            raise RuntimeError(f"scratch rebuild failed:\n{value}")
        return value

    def _failure(self) -> str:
        with contextlib.suppress(Exception):
            if self._results.poll(1):
                return f"scratch rebuild failed:\n{self._results.recv()[1]}"
        return f"scratch rebuild process died (exit code {self._proc.exitcode})"

    def close(self) -> None:
        """Stop the child if it still runs (after an error); idempotent."""
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        with contextlib.suppress(queue.Full):  # a sender waiting for a batch stops
            self._queue.put_nowait(None)
        self._sender.join(5)
        self._events.close()
        self._results.close()


class LocalRebuild:
    """The same as :class:`ScratchRebuild` in this process: ``observe`` sees each
    applied delivery with its parsed event, so an event is parsed once."""

    def __init__(self, path: Path) -> None:
        self._store = open_store_url(path, scratch=True)

    def start(self, cut: Cut) -> None:
        """Where each partition stops, before the first batch."""
        self._cut, self.position = cut, positions(self._store, cut[0])

    async def apply(self, deliveries: Sequence[Delivery], observe: Observer) -> None:
        # Off the event loop: the next batch arrives while this one commits.
        self.position = await asyncio.to_thread(_apply, self._store, deliveries, self._cut,
                                                observe)

    async def finish(self, timeout: float) -> dict[str, int]:
        """Each partition's position reached (everything is applied already)."""
        return self.position

    def close(self) -> None:
        self._store.close()
