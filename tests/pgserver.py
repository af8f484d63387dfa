"""A private PostgreSQL server for tests that kill and restart the database.

The machine's own PostgreSQL (5432) is shared and must never be stopped, so a
test that needs to take the database away starts one of its own: ``initdb``
into a fresh directory, ``postgres`` on a free loopback port with trust auth,
no Unix socket outside that directory. PostgreSQL refuses to run as root; when
the tests run as root the server runs as the ``postgres`` OS user (``runuser``)
in a directory that user owns. :func:`private_postgres` skips the test, saying
why, where no such server can be started here.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from tests.natsd import free_port

BIN_DIRS = ("/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
OS_USER = "postgres"  # who runs the server when we are root


class Unavailable(RuntimeError):
    """No private PostgreSQL can run on this machine (and why)."""


def _binary(name: str) -> str:
    for d in BIN_DIRS:
        if os.access(Path(d) / name, os.X_OK):
            return str(Path(d) / name)
    if found := shutil.which(name):
        return found
    raise Unavailable(f"no {name} binary (looked in {', '.join(BIN_DIRS)} and PATH)")


def _as_owner() -> list[str]:
    """The command prefix that runs a server process as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise Unavailable(f"running as root and there is no {OS_USER!r} user") from None
    return ["runuser", "-u", OS_USER, "--"]


@dataclass
class PostgresServer:
    """One private cluster; ``stop``/``kill`` and ``start`` again keep its data."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"  # initdb makes it: root is the user's own dir

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> "PostgresServer":
        prefix = _as_owner()
        if prefix:  # root: the server's user must own its directory
            owner = pwd.getpwnam(OS_USER)
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        done = subprocess.run(
            [*prefix, _binary("initdb"), "-D", str(self.data_dir), "-U", "postgres",
             "--auth=trust", "--no-sync", "-E", "UTF8"],
            capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise Unavailable(f"initdb failed: {done.stderr.strip()[-500:]}")
        return self

    def start(self, timeout: float = 30.0) -> "PostgresServer":
        """Start the postmaster and wait until it accepts connections."""
        log = open(self.root / "postgres.log", "ab")
        # fsync off: a test kills the server to cut connections, not to test
        # PostgreSQL's own crash safety, and fsync on a shared disk is slow.
        self.proc = subprocess.Popen(
            [*_as_owner(), _binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.root), "-c", "fsync=off",
             "-c", "max_connections=100"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"postgres exited {self.proc.returncode}: "
                                  f"{self.log()[-800:]}")
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return self
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise Unavailable(f"postgres did not accept connections in {timeout}s")

    def kill(self) -> None:
        """SIGKILL the postmaster and its children (a crash of the whole server),
        and wait until they are gone, so :meth:`start` can take the port and
        shared memory again."""
        pid = self._postmaster_pid()
        victims = [pid, *self._children(pid)] if pid is not None else []
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(v) for v in victims) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            pid = self._postmaster_pid()
            if pid is not None:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _postmaster_pid(self) -> int | None:
        """The postmaster itself (runuser forks it as a child), from its pid file."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _children(pid: int) -> list[int]:
        # Backends call setsid(), so a process group kill would miss them.
        found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: it holds no port or shared memory)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@contextmanager
def private_postgres() -> Iterator[PostgresServer]:
    """A started private server, removed on exit; the test is skipped (with
    the reason) if one cannot be started on this machine."""
    root = Path(tempfile.mkdtemp(prefix="inferbus-pg-"))
    server = PostgresServer(root)
    try:
        try:
            server.init().start()
        except (Unavailable, OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"private PostgreSQL cannot be started here: {exc}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
