"""The audit's one read of the log (:mod:`projections.audit`): each event is
read once and handed to the scratch rebuild, to the invariant checker, or to
both, from the first event or from where a checkpoint left each of them.
"""
from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from bus.events import Event
from projections.audit_checkpoint import Mark, event_digest
from projections.invariants import Checker
from projections.layout import Resumable
from projections.rebuild import LocalRebuild, ScratchRebuild
from projections.replay import Delivery, collector_paused, read_stream


def _mark(d: Delivery) -> Mark:
    return Mark(d.seq, event_digest(d.subject, d.data))


async def replay(js: JetStreamContext, sink: ScratchRebuild | LocalRebuild, checker: Checker, *,
                 rebuilt: Mark, upto: int, checked: Mark, last: int, timeout: float,
                 resumable: Resumable) -> tuple[Mark, Mark, dict[str, int]]:
    """Apply the events after ``rebuilt`` up to ``upto`` to ``sink`` and show
    the checker those after ``checked`` up to ``last`` (``rebuilt`` is never
    beyond ``checked``: a rebuild stops at the live store's position).

    Returns the marks reached (where a later rebuild may carry on, as
    ``resumable`` finds it, and the last event the checker took; or the marks
    they started from) and the positions ``sink`` reports it reached."""
    after_rebuilt, after_checked = rebuilt.seq, checked.seq

    def observe(d: Delivery, event: Event | None) -> None:  # an applied event, parsed once
        if d.seq > after_checked:
            checker.observe(d, event)

    with collector_paused():
        async with asyncio.timeout(timeout):
            async for batch in read_stream(js, after_rebuilt + 1, last):
                head = batch if batch[-1].seq <= upto else [d for d in batch if d.seq <= upto]
                rest = batch[len(head):]
                if isinstance(sink, LocalRebuild):
                    if head:
                        await sink.apply(head, observe)
                    checker.observe_raw(rest if after_checked <= upto else
                                        [d for d in rest if d.seq > after_checked])
                else:
                    if head:
                        sink.send(head)
                    checker.observe_raw(batch if batch[0].seq > after_checked else
                                        [d for d in batch if d.seq > after_checked])
                resumable.see(head)
                if batch[-1].seq > after_checked:
                    checked = _mark(batch[-1])
        reached = await sink.finish(timeout)
    if resumable.last is not None:
        rebuilt = _mark(resumable.last)
    return rebuilt, checked, reached
