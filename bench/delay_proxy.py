"""A TCP relay that delays every byte by a fixed one-way latency, both ways: a
userspace stand-in for ``tc netem`` (this machine's kernel has none).

    .venv/bin/python -m bench.delay_proxy 127.0.0.1:7001=127.0.0.1:4222@40 [...]

listens on 127.0.0.1:7001 and relays each accepted connection to
127.0.0.1:4222, every chunk held 40 ms in each direction. Each chunk read is
stamped with ``time.monotonic() + delay`` and written at that time by one
writer per direction, in order: the delay does not add up across chunks and
throughput is what the two ends allow (a round trip costs 2x the delay, a
stream of chunks arrives 1x the delay late). A half-close is relayed late
too, after the bytes before it. With several routes, one process serves them
all; it prints ``ready`` once every port listens, and stops on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

CHUNK = 64 * 1024
_EOF = b""


@dataclass(frozen=True)
class Route:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    delay_s: float  # one way

    @classmethod
    def parse(cls, text: str) -> "Route":
        """``LHOST:LPORT=THOST:TPORT@MS`` (the delay in milliseconds, one way)."""
        try:
            ends, ms = text.rsplit("@", 1)
            listen, target = ends.split("=", 1)
            lh, lp = listen.rsplit(":", 1)
            th, tp = target.rsplit(":", 1)
            return cls(lh, int(lp), th, int(tp), float(ms) / 1000)
        except ValueError:
            raise ValueError(f"bad route {text!r}: use LHOST:LPORT=THOST:TPORT@MS") from None

    def spec(self) -> str:
        return (f"{self.listen_host}:{self.listen_port}={self.target_host}:{self.target_port}"
                f"@{self.delay_s * 1000:g}")


# NATS protocol operations that carry a subject (client, route and gateway protocols).
_OPS = re.compile(rb"^(?:PUB|HPUB|MSG|HMSG|RMSG|HRMSG|RS\+|RS-|A\+|A-) [^\r\n]{0,200}", re.M)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay_s: float, trace: Callable[[bytes], None] | None = None) -> None:
    """Bytes from ``reader`` to ``writer``, each chunk ``delay_s`` after it was read."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if trace is not None and data:
                    trace(data)
                queue.put_nowait((time.monotonic() + delay_s, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((time.monotonic() + delay_s, _EOF))

    async def write() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                # Absolute deadlines: a chunk read while another waits is not
                # delayed by that wait as well.
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            # Drain only when the kernel's buffer is full: throughput is not
            # held to one chunk per round of the loop.
            if writer.transport.get_write_buffer_size() > CHUNK:
                await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


class DelayProxy:
    """Serves ``routes`` in the running loop; :meth:`start`, then :meth:`close`."""

    def __init__(self, routes: list[Route], trace: TextIO | None = None) -> None:
        self.routes = routes
        self._trace = trace  # each relayed NATS operation's line, timed (a debugging aid)
        self._servers: list[asyncio.Server] = []
        self._conns: set[asyncio.Task] = set()

    async def start(self) -> "DelayProxy":
        for route in self.routes:
            server = await asyncio.start_server(
                lambda r, w, route=route: self._accept(route, r, w),
                route.listen_host, route.listen_port, reuse_address=True)
            self._servers.append(server)
        return self

    @property
    def ports(self) -> list[int]:
        """The listening ports, in the routes' order (port 0 asks for a free one)."""
        return [s.sockets[0].getsockname()[1] for s in self._servers]

    def _accept(self, route: Route, reader, writer) -> None:
        task = asyncio.create_task(self._relay(route, reader, writer))
        self._conns.add(task)
        task.add_done_callback(self._conns.discard)

    async def _relay(self, route: Route, c_reader, c_writer) -> None:
        try:
            u_reader, u_writer = await asyncio.open_connection(route.target_host,
                                                               route.target_port)
        except OSError:
            c_writer.close()
            return
        for w in (c_writer, u_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pump(c_reader, u_writer, route.delay_s, self._tracer(route, ">")),
                                 _pump(u_reader, c_writer, route.delay_s, self._tracer(route, "<")))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (c_writer, u_writer):
                w.close()

    def _tracer(self, route: Route, way: str) -> Callable[[bytes], None] | None:
        if self._trace is None:
            return None
        out = self._trace

        def trace(data: bytes) -> None:
            now = time.time()
            for op in _OPS.findall(data):
                out.write(f"{now:.6f} {route.listen_port}{way}{route.target_port} "
                          f"{op.decode(errors='replace')}\n")
            out.flush()
        return trace

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        for s in self._servers:
            await s.wait_closed()


async def serve(routes: list[Route], trace: TextIO | None = None) -> None:
    proxy = await DelayProxy(routes, trace).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", " ".join(r.spec() for r in routes), flush=True)
    await stop.wait()
    await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="+", help="LHOST:LPORT=THOST:TPORT@MS")
    parser.add_argument("--trace", metavar="FILE",
                        help="append each relayed NATS operation (PUB, RMSG, ...) with its "
                             "wall-clock time, listen port and direction ('-': stderr)")
    args = parser.parse_args(argv)
    trace = None if args.trace is None else \
        sys.stderr if args.trace == "-" else open(args.trace, "a")
    asyncio.run(serve([Route.parse(r) for r in args.routes], trace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
