"""A real nats-server with nkey auth on, and clients that record what it refused.

The users come from a data dir's ``nats-auth`` folder (bus/credentials.py), exactly
as ``inferbus up`` writes them.
"""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from bus.config import Settings
from bus.connection import connect
from bus.credentials import CredentialStore
from bus.events import JobCompleted
from cli.natsserver import binary
from tests.eventlog import read_log
from tests.natsd import NatsServer, wait_for_port
from tests.stack import Stack

PERMISSIONS_VIOLATION = "permissions violation"  # nats-py lower-cases the server's -ERR


class AuthNatsServer(NatsServer):
    """JetStream on a free loopback port, reading its users from ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir / "nats-store")
        self.data_dir = data_dir

    @property
    def store(self) -> CredentialStore:
        return CredentialStore(self.data_dir)

    def start(self) -> "AuthNatsServer":
        config = self.store.write_config()
        log = open(self.data_dir / f"nats-auth-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.store_dir), "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port)
        return self

    def reload(self) -> None:
        """Re-read the users file, as an admin's ``nats-server --signal reload`` does."""
        self.proc.send_signal(signal.SIGHUP)


class Refusals:
    """The permission errors the server sent one client, in order."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def expect(self, subject: str, timeout: float = 3.0) -> str:
        """The violation naming ``subject``, once it has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.seen:
                if PERMISSIONS_VIOLATION in message and f'"{subject.lower()}"' in message:
                    return message
            await asyncio.sleep(0.02)
        raise AssertionError(f"no permissions violation for {subject!r}; saw {self.seen}")


async def connect_as(url: str, data_dir: Path, seed: Path | None):
    """A client as production connects (bus/connection.py) and its refusals."""
    refusals = Refusals()
    settings = Settings(nats_url=url, data_dir=data_dir, nats_nkey_seed=seed)
    # nats-py reports a refused publish or subscription through error_cb only.
    return await connect(settings, "test", retry=False, error_cb=refusals.record), refusals


def job_events(url: str, data_dir: Path, job_id: str) -> list:
    """One job's logged events, read as the data dir's service user."""
    async def read() -> list:
        nc, _ = await connect_as(url, data_dir, CredentialStore(data_dir).service_seed)
        try:
            return [e for _, e in await read_log(nc.jetstream())
                    if getattr(e, "job_id", None) == job_id]
        finally:
            await nc.close()
    return asyncio.run(read())


def completions_of(url: str, data_dir: Path, job_id: str, timeout: float = 15.0) -> list:
    """The job's logged ``JobCompleted`` events, once there is one: the gate answers
    the caller before its ``JobCompleted`` is stored, so a read right after the
    answer can come too early."""
    deadline = time.monotonic() + timeout
    while not (done := [e for e in job_events(url, data_dir, job_id)
                        if isinstance(e, JobCompleted)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return done


def start_with_seed(stack: Stack, name: str, seed: Path, *args: str) -> subprocess.Popen:
    """``python -m cli ARGS`` as one of ``stack``'s processes, with its own NATS user."""
    log = open(stack.data_dir / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args],
                            env={**stack.env(), "INFERBUS_NATS_NKEY_SEED": str(seed)},
                            stdout=log, stderr=subprocess.STDOUT)
    stack.procs[name] = proc
    return proc


def environ_of(pid: int) -> dict[str, str]:
    """A running process's environment (Linux /proc)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)

