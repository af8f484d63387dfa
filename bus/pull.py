"""Raw pull requests on one JetStream consumer: the worker's probe of its queues
and the replay's bounded batches share this.

nats-py's ``fetch`` always long-polls and wakes a task per message. A
:class:`Pull` publishes the consumer's next-message request itself, with
``no_wait`` (the server sends what is stored now, then ends the request with
a status when that was fewer than asked), and collects the answer from a
subscription callback into a list: one private inbox per consumer, one
request in flight at a time. A caller may send the next request before it
hands over the messages of the last one (the replay does, so the server keeps
delivering while it applies), since each request starts a list of its own:
the consumer delivers each message once and in order, whichever request it
answers.
"""
from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import subjects

STATUS = "Status"
HEARTBEAT = "100"  # an idle heartbeat: the request goes on


class Pull:
    """The outstanding pull request on one consumer and what it has brought."""

    def __init__(self, nc: Client, stream: str, consumer: str) -> None:
        self._nc = nc
        self._next = subjects.pull_next(stream, consumer)
        self._inbox = nc.new_inbox()
        self._sub = None
        self._done = asyncio.Event()
        self._wanted = 0
        self.messages: list[Msg] = []  # what the current request brought so far
        self.status: str | None = None  # "404 No Messages", ...: the server ended it early

    async def start(self) -> Pull:
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg)
        return self

    async def request(self, batch: int) -> None:
        """Ask for up to ``batch`` messages, of those stored now; a new list begins."""
        self.messages, self.status, self._wanted = [], None, batch
        self._done.clear()
        await self._nc.publish(self._next, json.dumps({"batch": batch, "no_wait": True}).encode(),
                               reply=self._inbox)

    async def wait(self, timeout: float) -> bool:
        """Whether the request ended (filled, or a status) within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _on_msg(self, msg: Msg) -> None:
        # A status is a message with no payload; a stored message keeps its own
        # headers, so a header alone does not make one.
        status = msg.headers.get(STATUS) if msg.headers and not msg.data else None
        if status == HEARTBEAT:
            return
        if status:
            self.status = f"{status} {msg.headers.get('Description', '')}".strip()
            self._done.set()
            return
        self.messages.append(msg)
        if len(self.messages) >= self._wanted:
            self._done.set()

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()


def stream_sequence(msg: Msg) -> int:
    """A delivered message's stream sequence, read from its reply subject: nats-py's
    ``msg.metadata`` parses every field with a regex per token, a third of a
    replay's time."""
    found = subjects.acked_stream_sequence(msg.reply)
    return msg.metadata.sequence.stream if found is None else found
