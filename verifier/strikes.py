"""Strikes count: the verifier follows the ``NodeStrike`` events the gate and
the API log (a forged result, a malformed message, a request outside the
grant, text streamed that the checked result contradicts) and counts them in
the node's grant; at ``suspend_after_strikes`` the node is suspended
(:func:`verifier.standing.after_strike`). A spot check's own strike is not
counted again: its failed check already was.

A durable consumer that starts with the strikes logged after it was first
made (not the whole history), acking each once it is counted.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from bus import subjects
from bus.config import Settings
from bus.events import Event, NodeStrike, parse_event
from bus.grants import NodeGrant
from bus.streams import batches, patiently
from verifier.standing import after_strike

log = logging.getLogger("inferbus.verifier")
SPOT_CHECK_STRIKE = "spot check failed"  # the verifier's own strikes begin so
Rule = Callable[[NodeGrant], tuple[NodeGrant, Event | None]]


async def follow_strikes(js: JetStreamContext, count: Callable[[str, Rule], Awaitable[None]],
                         settings: Settings, stop: asyncio.Event) -> None:
    """Count strikes with ``count`` (the verifier's standing update) until ``stop``."""
    config = ConsumerConfig(durable_name=subjects.VERIFIER_STRIKES_DURABLE,
                            filter_subjects=subjects.events_of("NodeStrike"),
                            deliver_policy=DeliverPolicy.NEW, ack_policy=AckPolicy.EXPLICIT,
                            ack_wait=30.0)
    sub = await patiently(lambda: js.pull_subscribe(
        "", durable=subjects.VERIFIER_STRIKES_DURABLE, stream=subjects.EVENTS_STREAM,
        config=config), "verifier strikes consumer")
    try:
        async for msgs in batches(sub, stop, 32, "verifier strikes"):
            for msg in msgs:
                try:
                    strike = parse_event(msg.data)
                except ValidationError:
                    await msg.ack()  # the audit reports malformed events
                    continue
                if isinstance(strike, NodeStrike) and \
                        not strike.reason.startswith(SPOT_CHECK_STRIKE):
                    try:
                        await count(strike.node_id, lambda g, r=strike.reason:
                                    after_strike(g, r, settings))
                    except Exception:  # noqa: BLE001 - not acked: counted when it comes again
                        log.exception("counting a strike of %s failed", strike.node_id[:12])
                        continue
                await msg.ack()
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001
            pass
