"""The ledger's async front for a server: concurrent calls become group commits.

While one group is being written (in a worker thread), new calls queue; when
it is done, everything queued goes as the next group. Alone, a call is
written at once (no timer, no added wait); under load, groups grow to what
arrived during the previous write, so transactions/s stays about constant
while commands/s grows with concurrency.

Errors are per call: a command refused on its own (InsufficientCredits)
reaches only its caller; an error of the whole write (the database down, a
conflict still unresolved after the ledger's retries) reaches every caller of
that group, and the group changed nothing. A caller cancelled while its group
is written does not undo its command (as with ``asyncio.to_thread``): the
ledger's idempotency (one hold per job) makes a retry safe.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Callable, Generic, Sequence, TypeVar

from ledger.commands import Reserve
from ledger.outcomes import ReservationView

log = logging.getLogger(__name__)
C = TypeVar("C")
MAX_GROUP = 512  # commands per transaction: bounds one write's time and size


class Coalescer(Generic[C]):
    """Feeds commands to ``apply_many`` (sync, run in a thread) one group at a
    time. ``apply_many(commands)`` returns one outcome per command, in order:
    a value, or an exception instance raised to that command's caller."""

    def __init__(self, apply_many: Callable[[Sequence[C]], list[Any]],
                 max_group: int = MAX_GROUP) -> None:
        self._apply_many, self._max = apply_many, max_group
        self._queue: list[tuple[C, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = self.commands = 0  # written so far: mean group size for metrics

    async def submit(self, command: C) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((command, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        group: list[tuple[C, asyncio.Future[Any]]] = []
        try:
            while self._queue:
                group, self._queue = self._queue[:self._max], self._queue[self._max:]
                try:
                    outcomes = await asyncio.to_thread(self._apply_many, [c for c, _ in group])
                except Exception as exc:  # noqa: BLE001 - the whole group failed: tell each
                    outcomes = [exc] * len(group)
                self.groups, self.commands = self.groups + 1, self.commands + len(group)
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                group = []
        except asyncio.CancelledError:  # shutting down: leave no caller hanging
            for _, future in group + self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._writer = None


class ReserveGroup:
    """``Ledger.reserve`` for many concurrent callers, in group commits."""

    def __init__(self, ledger: Any, max_group: int = MAX_GROUP) -> None:
        self._group: Coalescer[Reserve] = Coalescer(ledger.reserve_many, max_group)

    @property
    def stats(self) -> tuple[int, int]:
        """(groups written, reservations in them) since this front was made."""
        return self._group.groups, self._group.commands

    async def reserve(self, account: str, job_id: str, amount: int, *, key_id: str, zone: str,
                      deadline: datetime, request_hash: str = "") -> ReservationView:
        """As :meth:`ledger.Ledger.reserve`: the job's reservation (an existing
        one unchanged); raises InsufficientCredits (recording nothing) when the
        account is short, ValueError for a negative amount, and the ledger's
        error (e.g. eventsourcing's OperationalError while the database is down)
        when its group could not be written."""
        return await self._group.submit(
            Reserve(account, job_id, amount, key_id, zone, deadline, request_hash))
