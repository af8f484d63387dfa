"""bench/delay_proxy.py: every byte arrives, in order, one delay late each way,
and the delay does not add up over a stream of chunks."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from bench.delay_proxy import DelayProxy, Route

DELAY_S = 0.05


@pytest.fixture
async def echo():
    """An echo server that relays a half-close: it closes once its client has."""
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def proxied(echo):
    proxy = await DelayProxy([Route("127.0.0.1", 0, "127.0.0.1", echo, DELAY_S)]).start()
    yield proxy.ports[0]
    await proxy.close()


async def test_a_round_trip_takes_twice_the_one_way_delay(proxied):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied)
    took = []
    for i in range(5):
        started = time.monotonic()
        writer.write(b"ping %d\n" % i)
        assert await reader.readline() == b"ping %d\n" % i
        took.append(time.monotonic() - started)
    writer.close()
    assert min(took) >= 2 * DELAY_S, took
    assert max(took) < 2 * DELAY_S + 0.1, took  # one delay each way, not more


async def test_bytes_arrive_intact_in_order_and_the_delay_does_not_add_up(proxied):
    payload = os.urandom(4 * 1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied)
    started = time.monotonic()
    got = bytearray()

    async def send():
        for i in range(0, len(payload), 8192):  # 512 writes, a few ms apart overall
            writer.write(payload[i:i + 8192])
            if i % (64 * 8192) == 0:
                await asyncio.sleep(0.005)
            await writer.drain()
        writer.write_eof()  # relayed late; the echo server then closes, relayed late too

    async def receive():
        while data := await reader.read(65536):
            got.extend(data)

    await asyncio.gather(send(), receive())
    took = time.monotonic() - started
    writer.close()
    assert bytes(got) == payload
    # Hundreds of chunks each held 50 ms: serially that would be many seconds.
    assert 2 * DELAY_S <= took < 2 * DELAY_S + 1.5, took


async def test_pipelined_messages_each_arrive_one_round_trip_after_being_sent(proxied):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied)
    sent: dict[int, float] = {}

    async def send():
        for i in range(20):
            sent[i] = time.monotonic()
            writer.write(b"%d\n" % i)
            await asyncio.sleep(0.005)

    async def receive():
        rtts = []
        for i in range(20):
            assert await reader.readline() == b"%d\n" % i
            rtts.append(time.monotonic() - sent[i])
        return rtts

    _, rtts = await asyncio.gather(send(), receive())
    writer.close()
    assert min(rtts) >= 2 * DELAY_S and max(rtts) < 2 * DELAY_S + 0.1, rtts
